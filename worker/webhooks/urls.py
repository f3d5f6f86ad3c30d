"""The per-job callback URL: ``<base>/wavespeed/<job id>/<MAC>``.

WaveSpeed's signature covers the body, not the URL: a genuine delivery replayed
within its five minutes to another job's URL would verify there. So the URL itself
carries a MAC of the job id under a key only the workers and the receiver hold
(``WAVEQUEUE_WEBHOOK_URL_KEY``): a URL names its job without any lookup, and nobody
who was not given a job's URL can make one that the receiver accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import re

#: 128 bits of HMAC-SHA256, hex: unguessable, and short enough for any URL.
MAC_HEX_CHARS = 32
#: The path the receiver serves; the tornado route is built from the same pieces.
PATH_PREFIX = "/wavespeed/"
JOB_ID_PATTERN = r"[A-Za-z0-9_-]{1,128}"
MAC_PATTERN = rf"[0-9a-f]{{{MAC_HEX_CHARS}}}"
_JOB_ID = re.compile(JOB_ID_PATTERN)


def job_mac(key: bytes, job_id: str) -> str:
    """The MAC of ``job_id`` under ``key`` (lowercase hex)."""
    digest = hmac.new(key, b"wavequeue-webhook-url:" + job_id.encode(), hashlib.sha256)
    return digest.hexdigest()[:MAC_HEX_CHARS]


def callback_url(base_url: str, key: bytes, job_id: str) -> str:
    """Where WaveSpeed should call when ``job_id``'s prediction ends."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError("a job id for a callback URL is letters, digits, '_' and '-' only")
    return f"{base_url.rstrip('/')}{PATH_PREFIX}{job_id}/{job_mac(key, job_id)}"


def mac_matches(key: bytes, job_id: str, mac: str) -> bool:
    """Whether ``mac`` is ``job_id``'s, compared in constant time."""
    return hmac.compare_digest(job_mac(key, job_id), mac)
