"""The emulator's media: generated outputs and uploads, served under ``/media/<name>``.

Also fetches input images for edits: an emulator media URL is read straight from
the store (no HTTP, and whatever host name the client used to reach us), a
``data:`` URI is decoded, and any other http(s) URL is downloaded. Anything that
fails raises MediaUnreachableError, which the prediction reports as task code 1402.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from emulator.errors import MediaUnreachableError

MEDIA_PATH = "/media/"
#: Names the store hands out: a uuid hex and an extension.
MEDIA_NAME = re.compile(r"[0-9a-f]{32}\.[a-z0-9]{1,5}")
_LOCAL_MEDIA = re.compile(r"/media/(" + MEDIA_NAME.pattern + r")")
MAX_FETCH_BYTES = 50 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 10.0
#: Real outputs expire after 7 days; the emulator forgets the oldest past this budget.
DEFAULT_MAX_STORE_BYTES = 1024 * 1024 * 1024

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


@dataclass(frozen=True)
class MediaItem:
    data: bytes
    content_type: str


class MediaStore:
    """Name -> bytes, oldest evicted past ``max_bytes``. Render threads write; locks guard."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_STORE_BYTES) -> None:
        self._items: OrderedDict[str, MediaItem] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.max_bytes = max_bytes

    @staticmethod
    def new_name(content_type: str, filename: str = "") -> str:
        extension = _EXTENSIONS.get(content_type) or _extension_of(filename) or "bin"
        return f"{uuid.uuid4().hex}.{extension}"

    def put(self, data: bytes, content_type: str, name: str | None = None) -> str:
        name = name or self.new_name(content_type)
        with self._lock:
            previous = self._items.pop(name, None)
            if previous is not None:
                self._bytes -= len(previous.data)
            self._items[name] = MediaItem(data, content_type)
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted.data)
        return name

    def get(self, name: str) -> MediaItem | None:
        with self._lock:
            return self._items.get(name)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def fetch_media(reference: str, store: MediaStore) -> bytes:
    """The bytes an image reference points at, or MediaUnreachableError with the reason."""
    if reference.startswith("data:"):
        return _decode_data_uri(reference)
    parts = urllib.parse.urlsplit(reference)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MediaUnreachableError(f"input image {_short(reference)} is not an http(s) URL")
    local = _LOCAL_MEDIA.fullmatch(parts.path)
    if local is not None:
        item = store.get(local.group(1))
        if item is not None:
            return item.data
    return _download(reference)


def _download(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "wavequeue-emulator"})  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310 - scheme checked above
            data: bytes = response.read(MAX_FETCH_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise MediaUnreachableError(f"input image {_short(url)} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException covers InvalidURL (control characters or spaces in the URL, refused
        # before connecting) and a server that breaks the protocol: the image cannot be
        # fetched, which WaveSpeed reports as 1402, never as an internal error.
        raise MediaUnreachableError(
            f"input image {_short(url)} could not be fetched: {exc}"
        ) from exc
    if len(data) > MAX_FETCH_BYTES:
        raise MediaUnreachableError(
            f"input image {_short(url)} is larger than {MAX_FETCH_BYTES} bytes"
        )
    return data


def _decode_data_uri(uri: str) -> bytes:
    header, separator, payload = uri.partition(",")
    if not separator:
        raise MediaUnreachableError("input image data: URI has no ',' before its payload")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise MediaUnreachableError(
                f"input image data: URI is not valid base64: {exc}"
            ) from exc
    return urllib.parse.unquote_to_bytes(payload)


def _extension_of(filename: str) -> str:
    _, dot, extension = filename.rpartition(".")
    extension = extension.lower()
    return extension if dot and re.fullmatch(r"[a-z0-9]{1,5}", extension) else ""


def _short(reference: str) -> str:
    return reference if len(reference) <= 120 else reference[:117] + "..."
