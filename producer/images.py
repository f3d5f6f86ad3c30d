"""Input images: http(s) URLs and ``data:`` URIs pass through; local files are inlined.

Why inline instead of upload: uploading to WaveSpeed's media endpoint needs the
WaveSpeed API key, and a producer never holds it (only workers do). So a local
file becomes a base64 ``data:image/...`` URI stored in the job record, which
WaveSpeed accepts wherever it accepts an image URL. Base64 grows the bytes by a
third and the record lives in Redis, so files are capped (``max_bytes``, 10 MB
by default); put bigger images on your own storage and pass their URL.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

#: The largest image (decoded bytes) a producer inlines into a job record.
DEFAULT_MAX_INLINE_BYTES = 10 * 1024 * 1024

ImageSource = str | os.PathLike[str]


class ImageReferenceError(ValueError):
    """Why one image reference cannot be used (the caller names the field)."""


def is_remote_reference(value: str) -> bool:
    """An http(s) URL or a data URI: something the worker passes to WaveSpeed as is."""
    return value.startswith(("http://", "https://", "data:"))


def resolve_image(
    source: object, *, max_bytes: int = DEFAULT_MAX_INLINE_BYTES, base_dir: Path | None = None
) -> str:
    """The reference to store for ``source``: URLs and data URIs as given (data URIs
    size-checked), a local file as a data URI. A relative path is taken from
    ``base_dir`` when given (a batch file's folder), else from the current directory.
    Raises ``ImageReferenceError``."""
    if isinstance(source, os.PathLike):
        return _inline_file(_local_path(os.fspath(source), base_dir), max_bytes)
    if not isinstance(source, str):
        raise ImageReferenceError(
            f"must be a URL, a data: URI or a file path, not {type(source).__name__}"
        )
    if not source.strip():
        raise ImageReferenceError("must not be empty")
    if source.startswith("data:"):
        _check_data_uri_size(source, max_bytes)
        return source
    if is_remote_reference(source):
        return source  # the request model checks the URL's shape
    return _inline_file(_local_path(source, base_dir), max_bytes)


def _local_path(text: str, base_dir: Path | None) -> Path:
    path = Path(text).expanduser()
    return base_dir / path if base_dir is not None and not path.is_absolute() else path


def _check_data_uri_size(uri: str, max_bytes: int) -> None:
    _, _, payload = uri.partition(",")
    # 4 base64 characters carry 3 bytes; no need to decode to know the size.
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageReferenceError(f"data URI is larger than {_megabytes(max_bytes)}")


def _inline_file(path: Path, max_bytes: int) -> str:
    if not path.is_file():
        raise ImageReferenceError(
            f"not an http(s) URL, a data: URI or an existing file: {str(path)!r}"
        )
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageReferenceError(
            f"{path.name} is {_megabytes(size)}; files are inlined up to {_megabytes(max_bytes)} "
            "(host bigger images yourself and pass the URL)"
        )
    data = path.read_bytes()
    mime = _image_mime(data, path.name)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_mime(data: bytes, name: str) -> str:
    """The image type from the content (Pillow), from the file name only as a fallback."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            mime = Image.MIME.get(image.format or "")
    except (UnidentifiedImageError, OSError):
        raise ImageReferenceError(f"{name} is not an image file Pillow can read") from None
    if mime is None:
        mime, _ = mimetypes.guess_type(name)
    if mime is None or not mime.startswith("image/"):
        raise ImageReferenceError(f"{name}: cannot tell its image type")
    return mime


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"
