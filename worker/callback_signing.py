"""Signing (and verifying) callbacks to the backend, exactly as Standard Webhooks does.

Every callback POST carries three headers:

- ``webhook-id``: the message id, the same on every attempt of one delivery (a receiver
  dedupes on it): ``job_<job id>`` for a job, ``chain_<chain id>_<state>_<step job id>``
  for a chain (a chain ends again, with another id, only after ``retry_chain``);
- ``webhook-timestamp``: the attempt's time, whole seconds since the epoch;
- ``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256(key, ``"{id}.{timestamp}.{body}"``),
  where ``body`` is the exact bytes POSTed and ``key`` is the base64-decoded part of the
  secret after ``whsec_`` (``WAVEQUEUE_CALLBACK_SECRET``).

That is the Standard Webhooks scheme (v1, symmetric), so any of its libraries verifies
these; ``verify`` below is the same check for backends that have wavequeue installed.
(WaveSpeed's own webhooks, which the worker receives, sign ``v3,<hex>`` instead.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from pydantic import SecretStr

from worker.settings import callback_key

SIGNATURE_VERSION = "v1"
#: A receiver refuses timestamps further than this from its own clock (replays).
DEFAULT_TOLERANCE = 300


class CallbackSignatureError(ValueError):
    """A callback that does not verify: refuse it (answer 4xx, change nothing)."""


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(key: bytes, message_id: str, body: bytes, now: float) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt made at ``now``."""
    timestamp = int(now)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise ``CallbackSignatureError`` unless ``body`` was signed with ``secret`` (the
    ``whsec_...`` string) within ``tolerance`` seconds of ``now``. ``headers`` may be any
    mapping whose keys are the header names in lower case (or a case-insensitive one)."""
    try:
        key = callback_key(SecretStr(secret))
    except ValueError as exc:
        raise CallbackSignatureError(f"the secret {exc}") from None
    message_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    offered = headers.get("webhook-signature", "")
    if not message_id or not stamp.isdigit() or not offered:
        raise CallbackSignatureError("missing or malformed webhook-* headers")
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        raise CallbackSignatureError("timestamp too old or too new")
    expected = signature(key, message_id, int(stamp), body)
    # Several space-separated signatures may be sent (a key rotation): any one will do.
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered.split()):
        raise CallbackSignatureError("signature does not match")
