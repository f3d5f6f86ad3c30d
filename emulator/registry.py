"""Every emulated model, as data: model path -> request table -> how its outputs are made.

The request table is declarative (``FieldSpec`` per field) and ``validation.py``
walks it, so adding a model is one ``ModelSpec`` entry here. The ranges and enums
are the ones in DESIGN.md ("WaveSpeed facts the code relies on"); the emulator
keeps its own copy because it is the other side of the wire and must not import
the worker's models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from emulator import images

MODEL_PREFIX = "wavespeed-ai/"

ASPECT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
SAFETY_TOLERANCES = ("1", "2", "3", "4", "5")
SEED_MIN, SEED_MAX = -1, 2_147_483_647


class FieldKind(StrEnum):
    STRING = "string"
    NUMBER = "number"  # int or float, never bool
    INTEGER = "integer"  # int, never bool or float
    BOOLEAN = "boolean"
    STRING_LIST = "string_list"


@dataclass(frozen=True)
class FieldSpec:
    """One request field: its JSON type, whether it is required, its default and bounds."""

    kind: FieldKind
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    min_items: int | None = None
    max_items: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One model: ``name`` is the path after ``wavespeed-ai/``."""

    name: str
    fields: Mapping[str, FieldSpec]
    make_outputs: images.OutputMaker
    #: What WaveSpeed bills per image of a completed prediction, in micro-dollars.
    price_micros: int
    # The outputs' count comes from this field when the model has it (num_images).
    count_field: str | None = None

    @property
    def path(self) -> str:
        return MODEL_PREFIX + self.name

    def image_count(self, params: Mapping[str, Any]) -> int:
        """How many images one prediction makes: what the per-minute rate limit counts."""
        return int(params[self.count_field]) if self.count_field else 1


# Field specs shared by several models.
PROMPT = FieldSpec(FieldKind.STRING, required=True)
IMAGE = FieldSpec(FieldKind.STRING, required=True)
IMAGES = FieldSpec(FieldKind.STRING_LIST, required=True, min_items=1, max_items=5)
SEED = FieldSpec(FieldKind.INTEGER, default=-1, minimum=SEED_MIN, maximum=SEED_MAX)
GUIDANCE_TO_10 = FieldSpec(FieldKind.NUMBER, default=3.5, minimum=1.0, maximum=10.0)
GUIDANCE_TO_20 = FieldSpec(FieldKind.NUMBER, default=3.5, minimum=1.0, maximum=20.0)
ASPECT_RATIO = FieldSpec(FieldKind.STRING, default="1:1", choices=ASPECT_RATIOS)
# On edits the output keeps the input's size unless an aspect ratio is asked for.
OPTIONAL_ASPECT_RATIO = FieldSpec(FieldKind.STRING, default=None, choices=ASPECT_RATIOS)
SAFETY_TOLERANCE = FieldSpec(FieldKind.STRING, default="2", choices=SAFETY_TOLERANCES)
NUM_IMAGES = FieldSpec(FieldKind.INTEGER, default=1, minimum=1, maximum=4)
#: WaveSpeed's list prices per image (FLUX Kontext Pro $0.04, Kontext Max $0.08).
PRO_PRICE = 40_000
MAX_PRICE = 80_000
SYNC_MODE = FieldSpec(FieldKind.BOOLEAN, default=False)

_MULTI_FIELDS: Mapping[str, FieldSpec] = {
    "prompt": PROMPT,
    "images": IMAGES,
    "seed": SEED,
    "guidance_scale": GUIDANCE_TO_20,
    "aspect_ratio": OPTIONAL_ASPECT_RATIO,
    "enable_sync_mode": SYNC_MODE,
}

MODELS: Mapping[str, ModelSpec] = {
    spec.path: spec
    for spec in (
        ModelSpec(
            "flux-kontext-pro",
            {
                "prompt": PROMPT,
                "image": IMAGE,
                "guidance_scale": GUIDANCE_TO_10,
                "safety_tolerance": SAFETY_TOLERANCE,
                "enable_sync_mode": SYNC_MODE,
            },
            images.edit_outputs,
            PRO_PRICE,
        ),
        ModelSpec(
            "flux-kontext-max/text-to-image",
            {
                "prompt": PROMPT,
                "seed": SEED,
                "guidance_scale": GUIDANCE_TO_20,
                "aspect_ratio": ASPECT_RATIO,
                "enable_sync_mode": SYNC_MODE,
            },
            images.text_to_image_outputs,
            MAX_PRICE,
        ),
        ModelSpec(
            "flux-kontext-max",
            {
                "prompt": PROMPT,
                "image": IMAGE,
                "seed": SEED,
                "guidance_scale": GUIDANCE_TO_20,
                "aspect_ratio": OPTIONAL_ASPECT_RATIO,
                "enable_sync_mode": SYNC_MODE,
            },
            images.edit_outputs,
            MAX_PRICE,
        ),
        ModelSpec(
            "flux-kontext-pro/text-to-image",
            {
                "prompt": PROMPT,
                "aspect_ratio": ASPECT_RATIO,
                "num_images": NUM_IMAGES,
                "seed": SEED,
                "guidance_scale": GUIDANCE_TO_20,
                "safety_tolerance": SAFETY_TOLERANCE,
                "enable_sync_mode": SYNC_MODE,
            },
            images.text_to_image_outputs,
            PRO_PRICE,
            count_field="num_images",
        ),
        ModelSpec("flux-kontext-pro/multi", _MULTI_FIELDS, images.multi_outputs, PRO_PRICE),
        ModelSpec("flux-kontext-max/multi", _MULTI_FIELDS, images.multi_outputs, MAX_PRICE),
    )
}


def canonical_model(name: str) -> str:
    """``flux-kontext-pro`` or ``wavespeed-ai/flux-kontext-pro`` -> the full model path."""
    return name if name.startswith(MODEL_PREFIX) else MODEL_PREFIX + name


def find_model(name: str) -> ModelSpec | None:
    return MODELS.get(canonical_model(name))
