"""What an inline image is, read from its header: its type and its size in pixels.

An inline image (a local file the producer inlines, or a ``data:`` URI given as is)
is judged before anything is stored: Pillow reads the header only, never the
pixels, so a small file that would decode to gigabytes (a decompression bomb) is
refused by its declared size. Every way the header can fail to read is the same
refusal, ``ImageReferenceError``, never a Pillow exception.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from worker.image_refs import ImageReferenceError
from worker.limits import MAX_IMAGE_PIXELS

#: Pillow's format name -> the type of the data URI. MPO is how Pillow reads the JPEG
#: files many phone cameras write (a JPEG with extra frames appended).
ACCEPTED_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def image_type(data: bytes, name: str) -> str:
    """The MIME type of the image in ``data`` (``name`` says what it is, in errors), if
    it is a type WaveSpeed takes with at most ``MAX_IMAGE_PIXELS`` pixels; else
    ``ImageReferenceError``."""
    try:
        with warnings.catch_warnings():
            # Between Pillow's two ceilings it warns, then we refuse anyway: one message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Image.open reads the header only; the pixels are never decoded here.
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                image_format = image.format or ""
    except Image.DecompressionBombError:
        # Pillow's own ceiling (twice Image.MAX_IMAGE_PIXELS) is above ours.
        raise ImageReferenceError(_too_many_pixels(name)) from None
    except Exception:  # noqa: BLE001 - any decoding failure is the caller's bad image
        raise ImageReferenceError(f"{name} is not an image file Pillow can read") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageReferenceError(_too_many_pixels(name, f" ({width} x {height})"))
    mime = ACCEPTED_FORMATS.get(image_format)
    if mime is None:
        accepted = ", ".join(sorted({f for f in ACCEPTED_FORMATS if f != "MPO"}))
        raise ImageReferenceError(
            f"{name} is a {image_format or 'unknown'} image; WaveSpeed takes {accepted}"
        )
    return mime


def _too_many_pixels(name: str, size: str = "") -> str:
    return (
        f"{name} has more than {MAX_IMAGE_PIXELS:,} pixels{size}; FLUX Kontext works at "
        "about 1 megapixel, so scale it down first"
    )
