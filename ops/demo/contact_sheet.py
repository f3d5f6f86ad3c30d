"""The chain on one picture: every step side by side, each labelled with its prompt."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

TILE = 384
MARGIN = 24
GAP = 40  # room for the arrow between two steps
TITLE_HEIGHT = 56
LABEL_LINES = 5
LINE_HEIGHT = 22
BACKGROUND = (250, 250, 247)
INK = (30, 30, 30)
MUTED = (110, 110, 110)


@dataclass(frozen=True)
class Step:
    image: Image.Image
    #: "1. text-to-image", "2. edit", ...
    heading: str
    model: str
    prompt: str


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font at a readable size; no system fonts needed.
    return ImageFont.load_default(size=size)


def make_contact_sheet(steps: Sequence[Step], title: str) -> Image.Image:
    """Tiles left to right in step order, an arrow between each two, labels below."""
    prompts = [textwrap.wrap(f'"{step.prompt}"', width=40)[:LABEL_LINES] for step in steps]
    label_height = LINE_HEIGHT * (2 + max((len(lines) for lines in prompts), default=0)) + 8
    width = MARGIN * 2 + len(steps) * TILE + (len(steps) - 1) * GAP
    height = TITLE_HEIGHT + TILE + label_height + MARGIN
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, 16), title, fill=INK, font=_font(24))
    heading_font, prompt_font = _font(18), _font(16)
    for index, step in enumerate(steps):
        left = MARGIN + index * (TILE + GAP)
        thumb = step.image.convert("RGB")
        thumb.thumbnail((TILE, TILE))
        # Centre a non-square picture in its square tile.
        offset = ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2)
        sheet.paste(thumb, (left + offset[0], TITLE_HEIGHT + offset[1]))
        draw.rectangle(
            (left - 1, TITLE_HEIGHT - 1, left + TILE, TITLE_HEIGHT + TILE), outline=MUTED
        )
        top = TITLE_HEIGHT + TILE + 8
        draw.text((left, top), step.heading, fill=INK, font=heading_font)
        draw.text((left, top + LINE_HEIGHT), step.model, fill=MUTED, font=prompt_font)
        for number, line in enumerate(prompts[index], start=2):
            draw.text((left, top + number * LINE_HEIGHT), line, fill=INK, font=prompt_font)
        if index < len(steps) - 1:
            _arrow(draw, left + TILE + 6, TITLE_HEIGHT + TILE // 2, GAP - 12)
    return sheet


def _arrow(draw: ImageDraw.ImageDraw, x: int, y: int, length: int) -> None:
    draw.line((x, y, x + length, y), fill=INK, width=3)
    draw.polygon([(x + length, y), (x + length - 10, y - 7), (x + length - 10, y + 7)], fill=INK)
