"""Signed webhook delivery, as WaveSpeed does it, with faults: drop, delay, duplicate.

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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DeliveryPlan:
    """What the webhook faults decided for one prediction's delivery, and the re-sign knob."""

    drop: bool = False
    delay: float = 0.0
    duplicate: bool = False
    resign_retries: bool = True


class WebhookSender:
    def __init__(self, secret: str, on_result: Callable[[str], None]) -> None:
        self.secret = secret
        #: Called with "delivered", "failed", "dropped" or "duplicated".
        self._on_result = on_result

    async def deliver(
        self,
        url: str,
        data: dict[str, Any],
        log: list[dict[str, Any]],
        plan: DeliveryPlan | None = None,
    ) -> bool:
        """POST ``data`` to ``url``, retrying non-2xx answers; each attempt lands in ``log``.
        ``plan``: drop it, delay it, send it twice, re-sign retries or not."""
        plan = plan or DeliveryPlan()
        webhook_id = uuid.uuid4().hex
        if plan.drop:
            log.append({"attempt": 0, "webhook_id": webhook_id, "dropped": True})
            self._on_result("dropped")
            return False
        if plan.delay > 0:
            await asyncio.sleep(plan.delay)
        body = json.dumps(data, separators=(",", ":")).encode()
        first_stamp: list[int] = []
        delivered = await self._attempts(
            url, body, webhook_id=webhook_id, log=log, plan=plan, first_stamp=first_stamp
        )
        self._on_result("delivered" if delivered else "failed")
        if plan.duplicate:
            # The same event once more, as a sender that missed the first answer would.
            self._on_result("duplicated")
            await self._attempts(
                url, body, webhook_id=webhook_id, log=log, plan=plan, first_stamp=first_stamp
            )
        return delivered

    async def _attempts(
        self,
        url: str,
        body: bytes,
        *,
        webhook_id: str,
        log: list[dict[str, Any]],
        plan: DeliveryPlan,
        first_stamp: list[int],
    ) -> bool:
        client = AsyncHTTPClient()
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            if plan.resign_retries or not first_stamp:
                first_stamp[:] = [int(time.time())]
            timestamp = first_stamp[0]
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
            entry["timestamp"] = timestamp
            if response.error is not None and response.code == 599:
                entry["error"] = str(response.error)
            log.append(entry)
            if 200 <= response.code < 300:
                return True
            if attempt < DELIVERY_ATTEMPTS:
                await asyncio.sleep(RETRY_BACKOFF_SECONDS * attempt)
        return False
