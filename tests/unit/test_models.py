"""Endpoint registry and request validation (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.images import image_data_uri
from worker.errors import ValidationError
from worker.limits import MAX_INLINE_IMAGE_BYTES, MAX_REQUEST_BYTES
from worker.models import (
    ENDPOINTS,
    JobStatus,
    can_move,
    get_endpoint,
    request_size,
    validate_request,
)

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
    ("flux-kontext-pro", {"prompt": "x", "image": "file:///etc/passwd"}, "image"),
    ("flux-kontext-pro", {"prompt": "x", "image": "http://127.0.0.1:6379/"}, "image"),
    ("flux-kontext-max/multi", {"prompt": "x", "images": [IMG, "http://10.0.0.1/"]}, "images[1]"),
    ("flux-kontext-max/text-to-image", {"prompt": "x" * 4001}, "prompt"),
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
    body = validate_request("flux-kontext-pro", {"prompt": "x", "image": image_data_uri()})
    assert body["image"].startswith("data:image/png")


def test_limits_are_named_in_the_error() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_request("flux-kontext-max/text-to-image", {"prompt": "x" * 4001})
    assert "4000 characters" in caught.value.problems["prompt"]
    with pytest.raises(ValidationError) as caught:
        validate_request("flux-kontext-pro/multi", {"prompt": "x", "images": [IMG] * 6})
    assert "at most 5 items" in caught.value.problems["images"]


def test_the_url_rule_applies_with_the_callers_setting() -> None:
    fields = {"prompt": "edit", "image": "http://127.0.0.1:8765/media/a.png"}
    with pytest.raises(ValidationError) as caught:
        validate_request("flux-kontext-pro", fields)
    assert caught.value.problems["image"] == (
        "private address 127.0.0.1 not allowed: loopback "
        "(set WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS=1 for in-house image hosts)"
    )
    assert str(caught.value).startswith("invalid request: image: private address 127.0.0.1")
    body = validate_request("flux-kontext-pro", fields, allow_private_image_urls=True)
    assert body["image"] == fields["image"]
    # Link-local (cloud metadata) is never an image host, setting or not.
    with pytest.raises(ValidationError, match="link-local"):
        validate_request(
            "flux-kontext-pro",
            {"prompt": "x", "image": "http://169.254.169.254/"},
            allow_private_image_urls=True,
        )


def _data_uri(decoded_bytes: int) -> str:
    return image_data_uri(decoded_bytes // 3 * 3)


def test_an_inline_image_over_the_cap_is_refused() -> None:
    fits = {"prompt": "x", "image": _data_uri(MAX_INLINE_IMAGE_BYTES)}
    assert validate_request("flux-kontext-pro", fits)["image"] == fits["image"]
    with pytest.raises(ValidationError) as caught:
        validate_request(
            "flux-kontext-pro", {"prompt": "x", "image": _data_uri(MAX_INLINE_IMAGE_BYTES + 3)}
        )
    assert "capped at 10.0 MB" in caught.value.problems["image"]


def test_a_request_over_the_total_size_is_refused() -> None:
    """Each image within its cap, the whole over the request's: named ``request``."""
    images = [_data_uri(7 * 1024 * 1024)] * 2
    with pytest.raises(ValidationError) as caught:
        validate_request("flux-kontext-pro/multi", {"prompt": "x", "images": images})
    assert set(caught.value.problems) == {"request"}
    assert "at most 16.0 MB" in caught.value.problems["request"]
    one = validate_request("flux-kontext-pro/multi", {"prompt": "x", "images": images[:1]})
    assert request_size(one) <= MAX_REQUEST_BYTES


def test_status_moves_forward_only() -> None:
    assert can_move(JobStatus.QUEUED, JobStatus.SUBMITTING)
    assert can_move(JobStatus.SUBMITTED, JobStatus.COMPLETED)
    assert not can_move(JobStatus.SUBMITTED, JobStatus.SUBMITTING)
    assert not can_move(JobStatus.COMPLETED, JobStatus.FAILED)
    assert not can_move(JobStatus.FAILED, JobStatus.COMPLETED)
