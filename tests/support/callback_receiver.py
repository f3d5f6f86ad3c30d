"""A backend's callback endpoint for tests: a real HTTP server on a free port that
checks every Standard Webhooks signature itself (not with wavequeue's code) and answers
503 while it is "down", 200 once it is "up"."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    message_id: str
    timestamp: str
    signature_ok: bool
    answered: int
    path: str
    body: dict[str, Any]


class CallbackReceiver:
    def __init__(self, secret: str) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.down = False
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/wavequeue?token=t0k"

    def signature_ok(self, headers: Any, raw: bytes) -> bool:
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw
        expected = (
            "v1," + base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        )
        fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
        return fresh and hmac.compare_digest(expected, headers["webhook-signature"])

    def delivered(self) -> Counter[str]:
        """2xx answers per webhook-id."""
        with self._lock:
            return Counter(r.message_id for r in self.received if 200 <= r.answered < 300)

    def refused(self) -> Counter[str]:
        with self._lock:
            return Counter(r.message_id for r in self.received if r.answered >= 300)

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                seen = [(r.message_id, r.answered, r.timestamp) for r in self.all()]
                raise TimeoutError(f"{what}: not after {timeout}s; received {seen}")
            time.sleep(0.05)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                answer = 503 if receiver.down else 200
                try:
                    ok = receiver.signature_ok(self.headers, raw)
                except (KeyError, ValueError):
                    ok = False
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            self.headers.get("webhook-id", ""),
                            self.headers.get("webhook-timestamp", ""),
                            ok,
                            answer,
                            self.path,
                            json.loads(raw or b"{}"),
                        )
                    )
                self.send_response(answer)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    @contextmanager
    def running(self) -> Iterator[CallbackReceiver]:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
