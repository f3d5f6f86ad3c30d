"""Pillow rendering: deterministic pictures for text-to-image, visible edits, multi-image edits.

Nothing here is a model: the point is that every output is a real, decodable
image of the size WaveSpeed would return, that the same (prompt, seed) always
gives the same picture, and that an edit visibly changes its input (a tint that
depends on the prompt plus the instruction written onto it), so a chain of edits
shows each of its steps.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import random
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin, UnidentifiedImageError

from emulator.errors import MediaUnreachableError

Color = tuple[int, int, int]
#: Image reference (URL or data: URI) -> decoded image; raises MediaUnreachableError.
ImageLoader = Callable[[str], Image.Image]
#: (validated params, image loader, render scale) -> the prediction's output images.
OutputMaker = Callable[[Mapping[str, Any], ImageLoader, float], list[Image.Image]]

#: FLUX.1 Kontext's preferred resolutions (width, height): about one megapixel,
#: multiples of 16. An aspect ratio gets the one whose ratio is nearest, as Kontext
#: itself picks its output size.
KONTEXT_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248),
    (880, 1184), (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832),
    (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip

SIZE_STEP = 16
EDIT_TINT_STRENGTH = 0.35


def size_for_aspect_ratio(aspect_ratio: str) -> tuple[int, int]:
    """``"16:9"`` -> ``(1392, 752)``: the Kontext resolution nearest in (log) ratio."""
    width_part, height_part = aspect_ratio.split(":")
    wanted = math.log(int(width_part) / int(height_part))
    return min(KONTEXT_RESOLUTIONS, key=lambda size: abs(math.log(size[0] / size[1]) - wanted))


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Shrink (or grow) a size by ``scale`` for load tests, keeping multiples of 16."""
    if scale == 1.0:
        return size
    return (
        max(SIZE_STEP, round(size[0] * scale / SIZE_STEP) * SIZE_STEP),
        max(SIZE_STEP, round(size[1] * scale / SIZE_STEP) * SIZE_STEP),
    )


#: PNG text key that counts the edits an image went through (placement of the next band).
EDIT_COUNT_KEY = "wavequeue-edits"
#: Where edit bands go, as fractions of the height (the generation's own banner is at 0.82).
EDIT_BAND_FIRST_ROW = 0.03
EDIT_BAND_STEP = 0.15
EDIT_BAND_LAST_ROW = 0.78


def decode_image(data: bytes) -> Image.Image:
    """Decode bytes into an RGB image, or raise MediaUnreachableError (the 1402 failure)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            converted = opened.convert("RGB")
            if EDIT_COUNT_KEY in opened.info:
                converted.info[EDIT_COUNT_KEY] = opened.info[EDIT_COUNT_KEY]
            return converted
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaUnreachableError(f"input image could not be decoded: {exc}") from exc


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    metadata = PngImagePlugin.PngInfo()
    if EDIT_COUNT_KEY in image.info:
        metadata.add_text(EDIT_COUNT_KEY, str(image.info[EDIT_COUNT_KEY]))
    # Level 1: several times faster than the default and still a normal PNG.
    image.save(buffer, format="PNG", compress_level=1, pnginfo=metadata)
    return buffer.getvalue()


# --- output makers (referenced by the registry) --------------------------------------


def text_to_image_outputs(
    params: Mapping[str, Any], load: ImageLoader, scale: float
) -> list[Image.Image]:
    size = scaled_size(size_for_aspect_ratio(params["aspect_ratio"]), scale)
    count = int(params.get("num_images", 1))
    return [render_picture(params["prompt"], params["seed"], index, size) for index in range(count)]


def edit_outputs(params: Mapping[str, Any], load: ImageLoader, scale: float) -> list[Image.Image]:
    # An edit keeps its input's size (already at whatever scale made it).
    return [apply_edit(load(params["image"]), params["prompt"])]


def multi_outputs(params: Mapping[str, Any], load: ImageLoader, scale: float) -> list[Image.Image]:
    sources = [load(reference) for reference in params["images"]]
    aspect_ratio = params.get("aspect_ratio")
    size = (
        scaled_size(size_for_aspect_ratio(aspect_ratio), scale) if aspect_ratio else sources[0].size
    )
    return [apply_edit(side_by_side(sources, size), params["prompt"])]


# --- drawing ---------------------------------------------------------------------------


def render_picture(prompt: str, seed: int, index: int, size: tuple[int, int]) -> Image.Image:
    """A deterministic picture for (prompt, seed, index): gradient, shapes, the prompt."""
    digest = _digest("picture", prompt, str(seed), str(index))
    rng = random.Random(digest)
    width, height = size
    gradient = Image.linear_gradient("L").resize(size)
    image = ImageOps.colorize(gradient, _color(digest, 0), _color(digest, 3))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        left, top = rng.randrange(width), rng.randrange(height)
        extent = rng.randrange(max(2, min(size) // 8), max(3, min(size) // 2))
        box = (left - extent, top - extent, left + extent, top + extent)
        shape_color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=shape_color)
        else:
            draw.rectangle(box, fill=shape_color)
    _draw_banner(draw, size, prompt, row_fraction=0.82, fill=(0, 0, 0))
    return image


def apply_edit(source: Image.Image, instruction: str) -> Image.Image:
    """The source, tinted by a colour that depends on the instruction, with it written on."""
    digest = _digest("edit", instruction)
    tint = _color(digest, 0)
    image = Image.blend(
        source.convert("RGB"), Image.new("RGB", source.size, tint), EDIT_TINT_STRENGTH
    )
    draw = ImageDraw.Draw(image)
    border = max(1, min(source.size) // 64)
    draw.rectangle((0, 0, source.width - 1, source.height - 1), outline=tint, width=border)
    # Each edit writes its instruction one band lower than the edit before (the count
    # travels in the PNG's text metadata), so every step of a chain stays readable.
    edits_before = _edit_count(source)
    row = (EDIT_BAND_FIRST_ROW + EDIT_BAND_STEP * edits_before) % EDIT_BAND_LAST_ROW
    _draw_banner(draw, source.size, instruction, row_fraction=row, fill=tint)
    image.info[EDIT_COUNT_KEY] = str(edits_before + 1)
    return image


def _edit_count(image: Image.Image) -> int:
    try:
        return max(0, int(image.info.get(EDIT_COUNT_KEY, 0)))
    except (TypeError, ValueError):
        return 0


def side_by_side(sources: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """The inputs in equal columns, each cropped to fill its column."""
    canvas = Image.new("RGB", size)
    column_width = size[0] // len(sources)
    for position, source in enumerate(sources):
        left = position * column_width
        # The last column takes the remainder so the canvas is covered edge to edge.
        width = size[0] - left if position == len(sources) - 1 else column_width
        canvas.paste(ImageOps.fit(source.convert("RGB"), (max(1, width), size[1])), (left, 0))
    return canvas


def _draw_banner(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    text: str,
    *,
    row_fraction: float,
    fill: Color,
) -> None:
    width, height = size
    font_size = max(8, width // 28)
    font = _font(font_size)
    columns = max(8, int(width / (font_size * 0.55)))
    lines = textwrap.wrap(text, columns, max_lines=3, placeholder=" ...") or [""]
    line_height = int(font_size * 1.25)
    banner_height = line_height * len(lines) + font_size // 2
    top = min(int(height * row_fraction), max(0, height - banner_height))
    draw.rectangle((0, top, width, top + banner_height), fill=fill)
    text_color = (255, 255, 255) if sum(fill) < 384 else (0, 0, 0)
    for number, line in enumerate(lines):
        draw.text(
            (font_size // 2, top + font_size // 4 + number * line_height),
            line,
            font=font,
            fill=text_color,
        )


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def _color(digest: bytes, offset: int) -> Color:
    red, green, blue = digest[offset : offset + 3]
    return (red, green, blue)
