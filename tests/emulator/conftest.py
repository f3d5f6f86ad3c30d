"""Helpers for the emulator's own tests: small images, a webhook receiver, a tiny file server."""

from __future__ import annotations

import base64
import io
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from PIL import Image, ImageChops, ImageStat

T2I_MAX = "flux-kontext-max/text-to-image"
T2I_PRO = "flux-kontext-pro/text-to-image"
EDIT_PRO = "flux-kontext-pro"
EDIT_MAX = "flux-kontext-max"
MULTI_PRO = "flux-kontext-pro/multi"
MULTI_MAX = "flux-kontext-max/multi"
ALL_MODELS = (EDIT_PRO, T2I_MAX, EDIT_MAX, T2I_PRO, MULTI_PRO, MULTI_MAX)


def png_bytes(
    size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def fetch_image(url: str) -> Image.Image:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def mean_abs_difference(first: Image.Image, second: Image.Image) -> float:
    """Average per-channel difference (0..255) between two same-sized images."""
    a, b = first.convert("RGB"), second.convert("RGB")
    assert a.size == b.size
    means = ImageStat.Stat(ImageChops.difference(a, b)).mean
    return sum(means) / len(means)


def minimal_body(model: str, image: str) -> dict[str, Any]:
    """The smallest valid body for ``model``."""
    if model.endswith("/multi"):
        return {"prompt": "combine them", "images": [image]}
    if model.endswith("/text-to-image"):
        return {"prompt": "a lighthouse at dusk"}
    return {"prompt": "make it night", "image": image}


@dataclass
class ReceivedWebhook:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A local HTTP endpoint that records POSTs; ``status`` is what it answers."""

    url: str
    received: queue.Queue[ReceivedWebhook] = field(default_factory=queue.Queue)
    status: int = 200

    def next(self, timeout: float = 10.0) -> ReceivedWebhook:
        return self.received.get(timeout=timeout)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.received.put(
                ReceivedWebhook({k.lower(): v for k, v in self.headers.items()}, body)
            )
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


@dataclass
class FileServer:
    """Serves fixed bytes at ``/<name>``, as an arbitrary image host would."""

    base_url: str
    files: dict[str, bytes]


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = files.get(self.path.lstrip("/"))
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", files)
    server.shutdown()
    server.server_close()
