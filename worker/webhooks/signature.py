"""WaveSpeed's webhook signature (v3), checked on the raw bytes before anything is parsed.

Headers: ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature:
v3,<hex>``, the lowercase hex HMAC-SHA256 of ``"{webhook-id}.{webhook-timestamp}.{raw
body}"``. The key is the account's secret without its ``whsec_`` prefix, used as text:
WaveSpeed documents it so, and its example secret looks like base64 (``+``, ``/``,
``=``), so it is never decoded, trimmed or URL-mangled here. A timestamp more than
``TOLERANCE`` seconds from now, either way, is refused: a captured delivery cannot be
replayed later. Several space-separated signatures are accepted (as Standard Webhooks
allows during a secret rotation); one match is enough.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
TOLERANCE = 300.0
SCHEME = "v3"
#: A webhook id longer than this is not one WaveSpeed sends (and would bloat a Redis key).
MAX_ID_LENGTH = 200


class SignatureError(Exception):
    """The request is not a genuine, fresh WaveSpeed callback. ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret: the rest of it, as text, untouched."""
    return secret.removeprefix(SECRET_PREFIX).encode()


def sign(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The lowercase hex v3 signature (what the sender puts after ``v3,``)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


class Verifier:
    def __init__(self, key: bytes, *, clock: Callable[[], float], tolerance: float = TOLERANCE):
        self._key = key
        self._clock = clock
        self.tolerance = tolerance

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """The delivery's ``webhook-id`` if the request is signed with the secret and
        fresh; ``SignatureError`` otherwise. ``headers`` looks names up as given
        (tornado's ``HTTPHeaders`` is case-insensitive)."""
        webhook_id = headers.get("webhook-id") or ""
        timestamp = headers.get("webhook-timestamp") or ""
        signatures = headers.get("webhook-signature") or ""
        if not (webhook_id and timestamp and signatures):
            raise SignatureError("missing_headers")
        if len(webhook_id) > MAX_ID_LENGTH or not webhook_id.isascii():
            raise SignatureError("bad_id")
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise SignatureError("bad_timestamp") from None
        if abs(self._clock() - sent_at) > self.tolerance:
            raise SignatureError("stale")
        expected = sign(self._key, webhook_id, timestamp, body).encode()
        matched = False
        for entry in signatures.split():
            scheme, _, value = entry.partition(",")
            # Every entry is compared (no early exit): the time taken says nothing.
            if scheme == SCHEME and value.isascii():
                matched |= hmac.compare_digest(expected, value.lower().encode())
        if not matched:
            raise SignatureError("bad_signature")
        return webhook_id
