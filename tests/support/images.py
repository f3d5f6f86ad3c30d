"""Image files that attack the reader: PNGs whose header claims a huge canvas."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def write_bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels, built by hand
    so the test never holds the canvas: all-black rows compress ~1000:1, so 20,000 x
    20,000 (400 MP, gigabytes once decoded to RGB) is a ~48 KB file."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter type 0, then black packed bits
    compressor = zlib.compressobj(9)
    rows_per_step = max(1, (4 * 1024 * 1024) // len(row))
    parts = []
    for start in range(0, height, rows_per_step):
        parts.append(compressor.compress(row * min(rows_per_step, height - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )
    return path


def small_image(image_format: str = "PNG", size: tuple[int, int] = (4, 3)) -> bytes:
    """A real image file of a few pixels, as Pillow writes it."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format=image_format)
    return buffer.getvalue()


def image_data_uri(decoded_bytes: int | None = None, image_format: str = "PNG") -> str:
    """A data URI of a real image; with ``decoded_bytes``, padded after the image's end to
    exactly that size (readers stop at the end, so the header still reads)."""
    import base64

    data = small_image(image_format)
    if decoded_bytes is not None:
        data += b"\0" * (decoded_bytes - len(data))
    mime = "image/jpeg" if image_format == "JPEG" else f"image/{image_format.lower()}"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
