"""Signed webhook delivery, as WaveSpeed does it.

The body is the bare prediction ``data`` object. Headers: ``webhook-id`` (a
fresh id per event), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v3,<hex HMAC-SHA256>`` over ``"{webhook-id}.{timestamp}.{body}"``.
The key is the secret served at ``GET /api/v3/webhook/secret`` without its
``whsec_`` prefix (the rest used as-is, not base64-decoded), per WaveSpeed's docs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
DELIVERY_ATTEMPTS = 3
DELIVERY_TIMEOUT_SECONDS = 10.0
RETRY_BACKOFF_SECONDS = 1.0


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_hex(24)


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    key = secret.removeprefix(SECRET_PREFIX).encode()
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v3," + hmac.new(key, signed, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, secret: str, on_result: Callable[[bool], None]) -> None:
        self.secret = secret
        self._on_result = on_result

    async def deliver(self, url: str, data: dict[str, Any], log: list[dict[str, Any]]) -> bool:
        """POST ``data`` to ``url``, retrying non-2xx answers; each attempt lands in ``log``."""
        body = json.dumps(data, separators=(",", ":")).encode()
        webhook_id = uuid.uuid4().hex
        client = AsyncHTTPClient()
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            timestamp = int(time.time())
            request = HTTPRequest(
                url,
                method="POST",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "webhook-id": webhook_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(self.secret, webhook_id, timestamp, body),
                },
                request_timeout=DELIVERY_TIMEOUT_SECONDS,
            )
            response = await client.fetch(request, raise_error=False)
            # tornado reports connection errors as code 599 with the exception attached.
            entry: dict[str, Any] = {"attempt": attempt, "webhook_id": webhook_id}
            entry["status"] = response.code
            if response.error is not None and response.code == 599:
                entry["error"] = str(response.error)
            log.append(entry)
            if 200 <= response.code < 300:
                self._on_result(True)
                return True
            if attempt < DELIVERY_ATTEMPTS:
                await asyncio.sleep(RETRY_BACKOFF_SECONDS * attempt)
        self._on_result(False)
        return False
