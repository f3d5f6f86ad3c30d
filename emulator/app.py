"""The tornado application and ``EmulatorServer``, which runs it on a port.

``EmulatorServer.start()`` serves from a background thread (tests: port 0, the
real port is known as soon as ``start`` returns); ``serve_forever()`` serves in
the calling thread until SIGINT/SIGTERM or ``stop()`` (the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from emulator import handlers, introspection
from emulator.config import EmulatorConfig
from emulator.state import EmulatorState

ACCESS_LOGGER = "tornado.access"


def make_app(state: EmulatorState, *, access_log: bool = False) -> tornado.web.Application:
    routes: list[tuple[str, type[tornado.web.RequestHandler]]] = [
        (r"/api/v3/predictions/([^/]+)/result", handlers.ResultHandler),
        (r"/api/v3/predictions/([^/]+)", handlers.ResultHandler),
        (r"/api/v3/media/upload/binary", handlers.BinaryUploadHandler),
        (r"/api/v3/media/uploads", handlers.UploadTicketHandler),
        (r"/api/v3/webhook/secret", handlers.WebhookSecretHandler),
        (r"/api/v3/balance", handlers.BalanceHandler),
        (r"/api/v3/account/balance", handlers.BalanceHandler),
        (r"/api/v3/(.+)", handlers.SubmitHandler),
        (r"/media/([^/]+)", handlers.MediaHandler),
        (r"/uploads/([^/]+)", handlers.UploadTargetHandler),
        (r"/_emulator/stats", introspection.StatsHandler),
        (r"/_emulator/predictions", introspection.PredictionListHandler),
        (r"/_emulator/predictions/([^/]+)", introspection.PredictionDetailHandler),
        (r"/_emulator/config", introspection.ConfigHandler),
        (r"/_emulator/reset", introspection.ResetHandler),
        (r"/_emulator/health", introspection.HealthHandler),
    ]
    arguments = {"state": state}
    settings: dict[str, Any] = {
        "default_handler_class": handlers.NotFoundHandler,
        "default_handler_args": arguments,
        "compress_response": False,
    }
    if not access_log:
        # No per-request logging by default: it would cost more than a poll itself.
        settings["log_function"] = _log_errors_only
    return tornado.web.Application(
        [(pattern, handler, arguments) for pattern, handler in routes], **settings
    )


def _log_errors_only(handler: tornado.web.RequestHandler) -> None:
    # Injected faults are the emulator doing its job; anything else 5xx is a bug worth a line.
    if handler.get_status() >= 500 and not getattr(handler, "injected_fault", False):
        request = handler.request
        logging.getLogger(ACCESS_LOGGER).error(
            "%d %s %s", handler.get_status(), request.method, request.uri
        )


class EmulatorServer:
    """One emulator on ``host:port`` (port 0 picks a free one; see ``port`` after start)."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_log: bool = False,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.access_log = access_log
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.WARNING)
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind(self) -> None:
        self._sockets = tornado.netutil.bind_sockets(self.port, self.host)
        self.port = int(self._sockets[0].getsockname()[1])

    def start(self, timeout: float = 10.0) -> EmulatorServer:
        """Serve from a daemon thread; returns once the port accepts connections."""
        self._bind()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), name="wavequeue-emulator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"emulator did not start within {timeout}s")
        if self._startup_error is not None:
            raise RuntimeError("emulator failed to start") from self._startup_error
        return self

    def serve_forever(self, on_ready: Callable[[EmulatorServer], None] | None = None) -> None:
        """Serve in this thread until SIGINT/SIGTERM or ``stop()``."""
        self._bind()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._request_stop)
            await self._serve(on_ready)

        asyncio.run(main())

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and not self._loop.is_closed():
            # RuntimeError: the loop closed between the check and the call (already stopping).
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._request_stop)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def _serve(self, on_ready: Callable[[EmulatorServer], None] | None = None) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop_requested = asyncio.Event()
            state = EmulatorState(self.config)
            server = tornado.httpserver.HTTPServer(make_app(state, access_log=self.access_log))
            server.add_sockets(self._sockets)
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            raise
        self._ready.set()
        if on_ready is not None:
            on_ready(self)
        try:
            await self._stop_requested.wait()
        finally:
            server.stop()
            state.shutdown()
            await server.close_all_connections()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
