"""A real HTTP server for fetch tests: files, redirects and bodies without end, on
127.0.0.1; it counts the requests it answered per path."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HttpFiles:
    base_url: str
    #: path (without the leading /) -> (body, content type)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    #: path -> Location of a 302
    redirects: dict[str, str] = field(default_factory=dict)
    #: paths that stream 64 KB chunks, without a Content-Length, until the client goes
    endless: set[str] = field(default_factory=set)
    requests: Counter[str] = field(default_factory=Counter)
    #: How many bytes the endless paths wrote before their client went away.
    endless_sent: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"


@contextlib.contextmanager
def http_files() -> Iterator[HttpFiles]:
    server_ref: list[HttpFiles] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state = server_ref[0]
            path = self.path.lstrip("/")
            state.requests[path] += 1
            if path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path in state.endless:
                self._endless(state, path)
            elif path in state.files:
                body, content_type = state.files[path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def _endless(self, state: HttpFiles, path: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            with contextlib.suppress(OSError):
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    state.endless_sent[path] += len(chunk)
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server_ref.append(HttpFiles(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server_ref[0]
    finally:
        server.shutdown()
        server.server_close()
