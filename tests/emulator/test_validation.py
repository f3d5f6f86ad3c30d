"""Every rule of every model's request table: each bad field -> 400 naming it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.emulator.conftest import (
    ALL_MODELS,
    EDIT_MAX,
    EDIT_PRO,
    MULTI_MAX,
    MULTI_PRO,
    T2I_MAX,
    T2I_PRO,
    data_uri,
    minimal_body,
    png_bytes,
)
from tests.support.emulator import EmulatorHandle

IMAGE = data_uri(png_bytes((16, 16)))
RATIOS = "21:9, 16:9, 4:3, 3:2, 1:1, 2:3, 3:4, 9:16, 9:21"
TOLERANCES = "1, 2, 3, 4, 5"
SEED_RANGE = "seed must be between -1 and 2147483647"

MULTI_CASES: list[tuple[dict[str, Any], str]] = [
    ({"images": None}, "images is required"),
    ({"images": []}, "images must contain between 1 and 5 items"),
    ({"images": [IMAGE] * 6}, "images must contain between 1 and 5 items"),
    ({"images": IMAGE}, "images must be a list of strings"),
    ({"images": [IMAGE, 3]}, "images must be a list of non-empty strings"),
    ({"images": [""]}, "images must be a list of non-empty strings"),
    ({"seed": -2}, SEED_RANGE),
    ({"guidance_scale": 0.5}, "guidance_scale must be between 1.0 and 20.0"),
    ({"aspect_ratio": "3:1"}, f"aspect_ratio must be one of {RATIOS}"),
    ({"enable_sync_mode": "no"}, "enable_sync_mode must be a boolean"),
]

# (model, changes to the minimal valid body (None = remove the field), expected message)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    # prompt, on every model
    *[(model, {"prompt": None}, "prompt is required") for model in ALL_MODELS],
    *[(model, {"prompt": 7}, "prompt must be a string") for model in ALL_MODELS],
    *[(model, {"prompt": "   "}, "prompt must not be empty") for model in ALL_MODELS],
    # flux-kontext-pro (edit)
    (EDIT_PRO, {"image": None}, "image is required"),
    (EDIT_PRO, {"image": ""}, "image must not be empty"),
    (EDIT_PRO, {"image": ["a"]}, "image must be a string"),
    (EDIT_PRO, {"guidance_scale": 10.01}, "guidance_scale must be between 1.0 and 10.0"),
    (EDIT_PRO, {"guidance_scale": 0.99}, "guidance_scale must be between 1.0 and 10.0"),
    (EDIT_PRO, {"guidance_scale": True}, "guidance_scale must be a number"),
    (EDIT_PRO, {"guidance_scale": "3.5"}, "guidance_scale must be a number"),
    (EDIT_PRO, {"safety_tolerance": 2}, "safety_tolerance must be a string"),
    (EDIT_PRO, {"safety_tolerance": "6"}, f"safety_tolerance must be one of {TOLERANCES}"),
    (EDIT_PRO, {"safety_tolerance": "0"}, f"safety_tolerance must be one of {TOLERANCES}"),
    (EDIT_PRO, {"enable_sync_mode": "yes"}, "enable_sync_mode must be a boolean"),
    (EDIT_PRO, {"enable_sync_mode": 1}, "enable_sync_mode must be a boolean"),
    # flux-kontext-max/text-to-image
    (T2I_MAX, {"seed": -2}, SEED_RANGE),
    (T2I_MAX, {"seed": 2_147_483_648}, SEED_RANGE),
    (T2I_MAX, {"seed": 1.5}, "seed must be an integer"),
    (T2I_MAX, {"seed": 3.0}, "seed must be an integer"),
    (T2I_MAX, {"seed": False}, "seed must be an integer"),
    (T2I_MAX, {"guidance_scale": 20.5}, "guidance_scale must be between 1.0 and 20.0"),
    (T2I_MAX, {"guidance_scale": 0}, "guidance_scale must be between 1.0 and 20.0"),
    (T2I_MAX, {"aspect_ratio": "5:4"}, f"aspect_ratio must be one of {RATIOS}"),
    (T2I_MAX, {"aspect_ratio": 1.5}, "aspect_ratio must be a string"),
    (T2I_MAX, {"enable_sync_mode": "true"}, "enable_sync_mode must be a boolean"),
    # flux-kontext-max (edit)
    (EDIT_MAX, {"image": None}, "image is required"),
    (EDIT_MAX, {"seed": -5}, SEED_RANGE),
    (EDIT_MAX, {"guidance_scale": 21}, "guidance_scale must be between 1.0 and 20.0"),
    (EDIT_MAX, {"aspect_ratio": "2:1"}, f"aspect_ratio must be one of {RATIOS}"),
    (EDIT_MAX, {"guidance_scale": [3]}, "guidance_scale must be a number"),
    # flux-kontext-pro/text-to-image
    (T2I_PRO, {"num_images": 0}, "num_images must be between 1 and 4"),
    (T2I_PRO, {"num_images": 5}, "num_images must be between 1 and 4"),
    (T2I_PRO, {"num_images": 2.0}, "num_images must be an integer"),
    (T2I_PRO, {"num_images": "2"}, "num_images must be an integer"),
    (T2I_PRO, {"aspect_ratio": "1:2"}, f"aspect_ratio must be one of {RATIOS}"),
    (T2I_PRO, {"seed": 2_147_483_648}, SEED_RANGE),
    (T2I_PRO, {"guidance_scale": 25.0}, "guidance_scale must be between 1.0 and 20.0"),
    (T2I_PRO, {"safety_tolerance": 3}, "safety_tolerance must be a string"),
    (T2I_PRO, {"safety_tolerance": "7"}, f"safety_tolerance must be one of {TOLERANCES}"),
    # multi, both tiers
    *[
        (model, changes, message)
        for model in (MULTI_PRO, MULTI_MAX)
        for changes, message in MULTI_CASES
    ],
    # delivery options
    (T2I_MAX, {"webhook_url": 5}, "webhook_url must be an http(s) URL"),
    (T2I_MAX, {"webhook_url": "ftp://example.com/hook"}, "webhook_url must be an http(s) URL"),
]


def _body(model: str, changes: dict[str, Any]) -> dict[str, Any]:
    body = minimal_body(model, IMAGE)
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


@pytest.mark.parametrize(
    ("model", "changes", "message"),
    INVALID,
    ids=[f"{model}-{'-'.join(changes)}-{message}" for model, changes, message in INVALID],
)
def test_invalid_field_is_a_400_naming_it(
    emulator: EmulatorHandle, model: str, changes: dict[str, Any], message: str
) -> None:
    response = emulator.submit(model, _body(model, changes))

    assert response.status_code == 400
    assert response.json() == {"code": 400, "message": message, "data": None}


def test_rejected_submissions_create_no_prediction(emulator: EmulatorHandle) -> None:
    emulator.submit(T2I_MAX, {"prompt": "x", "seed": -9})

    stats = emulator.stats()
    assert stats["validation_errors"] == 1
    assert stats["predictions"]["created"] == 0
    assert emulator.predictions() == []


# (model, changes) that sit exactly on a bound, or use an int where a number is wanted.
VALID_EDGES: list[tuple[str, dict[str, Any]]] = [
    (EDIT_PRO, {"guidance_scale": 1.0, "safety_tolerance": "1"}),
    (EDIT_PRO, {"guidance_scale": 10, "safety_tolerance": "5"}),
    (T2I_MAX, {"seed": -1, "guidance_scale": 20.0, "aspect_ratio": "21:9"}),
    (T2I_MAX, {"seed": 2_147_483_647, "guidance_scale": 1, "aspect_ratio": "9:21"}),
    (EDIT_MAX, {"seed": 0, "aspect_ratio": "16:9", "enable_sync_mode": False}),
    (T2I_PRO, {"num_images": 4, "seed": 5, "safety_tolerance": "3"}),
    (MULTI_PRO, {"images": [IMAGE] * 5, "aspect_ratio": "1:1"}),
    (MULTI_MAX, {"images": [IMAGE], "seed": 12, "guidance_scale": 19.99}),
    (T2I_MAX, {"seed": None, "aspect_ratio": None}),  # null is "not given"
]


@pytest.mark.parametrize(("model", "changes"), VALID_EDGES)
def test_values_on_the_bounds_are_accepted(
    emulator: EmulatorHandle, model: str, changes: dict[str, Any]
) -> None:
    body = minimal_body(model, IMAGE) | changes

    response = emulator.submit(model, body)

    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == "created"


def test_unknown_fields_are_ignored_and_kept_in_the_recorded_input(
    emulator: EmulatorHandle,
) -> None:
    body = {"prompt": "a bridge", "output_format": "jpeg", "extra": {"nested": [1, 2]}}

    response = emulator.submit(T2I_MAX, body)

    assert response.status_code == 200
    prediction = emulator.prediction(response.json()["data"]["id"])
    assert prediction["input"] == body
    assert emulator.wait_for(prediction["id"])["status"] == "completed"
