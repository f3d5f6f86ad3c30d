"""A tiny real HTTP server whose answers a test scripts, for what the emulator does not
do: redirects, a proxy's side of a proxied call, TLS with a certificate of its own.

Every request is recorded (method, request target as sent, headers, body) before the
test's ``answer`` function makes the reply; the target is the absolute URL when the
client took the server for a proxy. ``tls=(certfile, keyfile)`` serves HTTPS;
``self_signed_cert`` makes such a pair for 127.0.0.1 with the ``openssl`` command.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Seen:
    """One request as the server read it (header names in lower case)."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def envelope(data: Mapping[str, Any]) -> Reply:
    """A 200 WaveSpeed envelope around ``data``."""
    body = json.dumps({"code": 200, "message": "success", "data": dict(data)}).encode()
    return Reply(200, body, {"Content-Type": "application/json"})


@dataclass
class ScriptedServer:
    base_url: str
    answer: Callable[[Seen], Reply]
    seen: list[Seen] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])


@contextlib.contextmanager
def scripted_server(
    answer: Callable[[Seen], Reply], *, tls: tuple[Path, Path] | None = None
) -> Iterator[ScriptedServer]:
    state: list[ScriptedServer] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            headers = {name.lower(): value for name, value in self.headers.items()}
            seen = Seen(self.command, self.path, headers, self.rfile.read(length))
            with lock:
                state[0].seen.append(seen)
            reply = state[0].answer(seen)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = _handle  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state.append(ScriptedServer(f"{scheme}://127.0.0.1:{server.server_address[1]}", answer))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        server.shutdown()
        server.server_close()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 signed by nobody a client trusts."""
    openssl = shutil.which("openssl")
    if openssl is None:
        import pytest

        pytest.skip("the openssl command is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key
