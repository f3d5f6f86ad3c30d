"""The tornado side of ``wavequeue webhooks``: routes, the body cap, the thread pool.

Routes: ``POST /wavespeed/<job id>/<MAC>`` (WaveSpeed's callbacks) and ``GET /health``;
anything else is 404. Each callback runs ``WebhookReceiver.receive`` in a small
thread pool (a few Redis round trips, milliseconds), so the IOLoop keeps accepting
while Redis answers, and ``/health`` answers even while Redis does not.

The body is capped (``WAVEQUEUE_WEBHOOK_MAX_BODY``; tornado's own default is 100 MB):
a declared ``Content-Length`` above it is refused with 413 before the body is read; a
chunked body is kept only up to the cap and then refused with 413 (four times past it,
tornado cuts the connection). Slow senders get ``BODY_TIMEOUT`` seconds for a body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from worker.webhooks.receiver import Reply, WebhookReceiver
from worker.webhooks.urls import JOB_ID_PATTERN, MAC_PATTERN, PATH_PREFIX

BODY_TIMEOUT = 10.0
IDLE_CONNECTION_TIMEOUT = 60.0


@tornado.web.stream_request_body
class CallbackHandler(tornado.web.RequestHandler):
    def initialize(
        self, receiver: WebhookReceiver, executor: ThreadPoolExecutor, max_body: int
    ) -> None:
        self.receiver = receiver
        self.executor = executor
        self.max_body = max_body
        self._chunks: list[bytes] = []
        self._size = 0

    async def prepare(self) -> None:
        # Streamed: called once the headers are in, before any of the body is read.
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await self._too_large()

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.max_body:
            self._chunks.append(chunk)  # past the cap nothing more is kept

    async def post(self, job_id: str, mac: str) -> None:
        if self._size > self.max_body:
            await self._too_large()
            return
        body, headers = b"".join(self._chunks), self.request.headers
        reply = await self._run(lambda: self.receiver.receive(job_id, mac, headers, body))
        self._answer(reply)

    async def _too_large(self) -> None:
        # The connection cannot carry another request (a declared body was never read):
        # say so, or a sender's pooled connection is reused and reset.
        self.set_header("Connection", "close")
        self._answer(await self._run(self.receiver.too_large))

    async def _run(self, call: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    def _answer(self, reply: Reply) -> None:
        self.set_status(reply.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"outcome": reply.outcome}))

    def check_xsrf_cookie(self) -> None:
        """A machine-to-machine POST: no cookies, no XSRF token."""


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish({"status": "ok"})


class NotFoundHandler(tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.set_status(404)
        self.finish({"outcome": "not found"})


def make_app(
    receiver: WebhookReceiver, executor: ThreadPoolExecutor, *, max_body: int
) -> tornado.web.Application:
    callback_args = {"receiver": receiver, "executor": executor, "max_body": max_body}
    return tornado.web.Application(
        [
            (rf"{PATH_PREFIX}({JOB_ID_PATTERN})/({MAC_PATTERN})", CallbackHandler, callback_args),
            (r"/health", HealthHandler),
        ],
        default_handler_class=NotFoundHandler,
        compress_response=False,
        # One line per callback would be most of the service's work: errors only.
        log_function=_log_errors_only,
    )


def _log_errors_only(handler: tornado.web.RequestHandler) -> None:
    if handler.get_status() >= 500:
        logging.getLogger("tornado.access").warning(
            "%d %s %s", handler.get_status(), handler.request.method, handler.request.path
        )


def serve_forever(
    receiver: WebhookReceiver,
    *,
    host: str,
    port: int,
    threads: int,
    max_body: int,
    on_ready: Callable[[int], None],
) -> None:
    """Serve until SIGINT/SIGTERM; ``on_ready(port)`` once the port accepts connections."""
    sockets = tornado.netutil.bind_sockets(port, host)
    bound = int(sockets[0].getsockname()[1])
    executor = ThreadPoolExecutor(threads, thread_name_prefix="wavequeue-webhooks")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        server = tornado.httpserver.HTTPServer(
            make_app(receiver, executor, max_body=max_body),
            # A chunked body (no Content-Length for prepare() to judge) is counted and
            # dropped past the cap; far past it, tornado cuts the connection.
            max_body_size=max_body * 4,
            body_timeout=BODY_TIMEOUT,
            idle_connection_timeout=IDLE_CONNECTION_TIMEOUT,
            xheaders=True,
        )
        server.add_sockets(sockets)
        on_ready(bound)
        try:
            await stop.wait()
        finally:
            server.stop()
            await server.close_all_connections()

    try:
        asyncio.run(main())
    finally:
        executor.shutdown(wait=True)
