"""Endpoint registry and request validation (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import ValidationError
from worker.models import ENDPOINTS, JobStatus, can_move, get_endpoint, validate_request

IMG = "https://example.com/cat.png"

VALID: dict[str, dict[str, Any]] = {
    "flux-kontext-pro": {"prompt": "make it blue", "image": IMG},
    "flux-kontext-max/text-to-image": {"prompt": "a cat"},
    "flux-kontext-max": {"prompt": "make it blue", "image": IMG},
    "flux-kontext-pro/text-to-image": {"prompt": "a cat"},
    "flux-kontext-pro/multi": {"prompt": "merge", "images": [IMG, IMG]},
    "flux-kontext-max/multi": {"prompt": "merge", "images": [IMG]},
}


def test_every_endpoint_has_a_valid_example() -> None:
    assert set(VALID) == set(ENDPOINTS)
    for model, fields in VALID.items():
        body = validate_request(model, fields)
        assert body["prompt"] == fields["prompt"]


def test_defaults_follow_the_wavespeed_docs() -> None:
    assert validate_request("flux-kontext-pro", VALID["flux-kontext-pro"]) == {
        "prompt": "make it blue",
        "image": IMG,
        "guidance_scale": 3.5,
        "safety_tolerance": "2",
    }
    t2i = validate_request("flux-kontext-max/text-to-image", {"prompt": "a cat"})
    assert t2i == {"prompt": "a cat", "guidance_scale": 3.5, "aspect_ratio": "1:1"}


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("flux-kontext-pro", {"image": IMG}, "prompt"),
    ("flux-kontext-pro", {"prompt": "  ", "image": IMG}, "prompt"),
    ("flux-kontext-pro", {"prompt": "x"}, "image"),
    ("flux-kontext-pro", {"prompt": "x", "image": "ftp://x/y.png"}, "image"),
    ("flux-kontext-pro", {"prompt": "x", "image": IMG, "guidance_scale": 10.5}, "guidance_scale"),
    ("flux-kontext-pro", {"prompt": "x", "image": IMG, "guidance_scale": 0.5}, "guidance_scale"),
    (
        "flux-kontext-pro",
        {"prompt": "x", "image": IMG, "safety_tolerance": "6"},
        "safety_tolerance",
    ),
    ("flux-kontext-max/text-to-image", {"prompt": "x", "guidance_scale": 20.5}, "guidance_scale"),
    ("flux-kontext-max/text-to-image", {"prompt": "x", "seed": -2}, "seed"),
    ("flux-kontext-max/text-to-image", {"prompt": "x", "seed": 2**31}, "seed"),
    ("flux-kontext-max/text-to-image", {"prompt": "x", "seed": True}, "seed"),
    ("flux-kontext-max/text-to-image", {"prompt": "x", "aspect_ratio": "5:4"}, "aspect_ratio"),
    ("flux-kontext-max/text-to-image", {"prompt": "x", "bogus": 1}, "bogus"),
    ("flux-kontext-pro/text-to-image", {"prompt": "x", "num_images": 5}, "num_images"),
    ("flux-kontext-pro/text-to-image", {"prompt": "x", "num_images": 0}, "num_images"),
    ("flux-kontext-pro/multi", {"prompt": "x", "images": []}, "images"),
    ("flux-kontext-pro/multi", {"prompt": "x", "images": [IMG] * 6}, "images"),
    ("flux-kontext-max/multi", {"prompt": "x", "images": [IMG, "nope"]}, "images[1]"),
]


@pytest.mark.parametrize(("model", "fields", "bad_field"), BAD)
def test_bad_requests_name_the_field(model: str, fields: dict[str, Any], bad_field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_request(model, fields)
    assert bad_field in caught.value.problems
    assert bad_field in str(caught.value)


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_request("flux-kontext-max/text-to-image", {"seed": -5, "aspect_ratio": "2:1"})
    assert set(caught.value.problems) == {"prompt", "seed", "aspect_ratio"}


def test_unknown_model() -> None:
    with pytest.raises(ValidationError, match="unknown model"):
        get_endpoint("flux-dev")


def test_model_prefix_is_optional() -> None:
    assert get_endpoint("wavespeed-ai/flux-kontext-pro").model == "flux-kontext-pro"
    assert get_endpoint("flux-kontext-pro").path == "wavespeed-ai/flux-kontext-pro"


def test_safety_tolerance_accepts_the_int_spelling() -> None:
    body = validate_request(
        "flux-kontext-pro", {**VALID["flux-kontext-pro"], "safety_tolerance": 4}
    )
    assert body["safety_tolerance"] == "4"


def test_data_uri_is_an_image() -> None:
    body = validate_request(
        "flux-kontext-pro", {"prompt": "x", "image": "data:image/png;base64,iVBO"}
    )
    assert body["image"].startswith("data:image/png")


def test_status_moves_forward_only() -> None:
    assert can_move(JobStatus.QUEUED, JobStatus.SUBMITTING)
    assert can_move(JobStatus.SUBMITTED, JobStatus.COMPLETED)
    assert not can_move(JobStatus.SUBMITTED, JobStatus.SUBMITTING)
    assert not can_move(JobStatus.COMPLETED, JobStatus.FAILED)
    assert not can_move(JobStatus.FAILED, JobStatus.COMPLETED)
