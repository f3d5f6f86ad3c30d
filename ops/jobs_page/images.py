"""The images a job page shows: its inputs and its outputs, as small as a thumbnail.

An http(s) image is shown by URL (the browser fetches it, without a referrer); an image
the job carries inline (a ``data:`` URI, up to megabytes) is shrunk here to a PNG
thumbnail, so the page never embeds the original.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

THUMBNAIL_SIZE = (240, 240)


@dataclass(frozen=True)
class ShownImage:
    #: What the ``<img>`` loads: the image's URL, or the page's thumbnail of an inline one.
    src: str
    #: Words under it (the URL, or "inline image, N KB").
    caption: str


def input_images(job_id: str, body: dict[str, Any]) -> list[ShownImage]:
    """The job's input images (``image`` or ``images``), in order."""
    values = body.get("images") or ([body["image"]] if body.get("image") else [])
    shown = []
    for index, value in enumerate(values):
        text = str(value)
        if text.startswith("data:"):
            size = len(text.partition(",")[2]) * 3 // 4
            src = f"/jobs/{job_id}/input/{index}.png"
            shown.append(ShownImage(src, f"inline image, {size // 1024} KB"))
        elif text.startswith(("http://", "https://")):
            shown.append(ShownImage(text, text))
    return shown


def output_images(outputs: list[str]) -> list[ShownImage]:
    return [ShownImage(url, url) for url in outputs if url.startswith(("http://", "https://"))]


def thumbnail_of_data_uri(uri: str) -> bytes | None:
    """A small PNG of a ``data:`` URI's image; None when it is not an image Pillow reads."""
    header, _, payload = uri.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        return None
    try:
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            image.thumbnail(THUMBNAIL_SIZE)
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
            return out.getvalue()
    except (
        binascii.Error,
        UnidentifiedImageError,
        OSError,
        ValueError,
        Image.DecompressionBombError,
    ):
        return None
