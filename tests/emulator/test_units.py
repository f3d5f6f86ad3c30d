"""The pure parts, without a server: latency specs, fault flags, the rate window, sizes."""

from __future__ import annotations

import random

import pytest

from emulator.config import FaultSpec, LatencySpec, parse_fault_flag
from emulator.errors import ConfigError
from emulator.faults import FaultInjector
from emulator.images import scaled_size, size_for_aspect_ratio
from emulator.limits import RateLimiter


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("fixed:3", "fixed:3"),
        (2.5, "fixed:2.5"),
        ("uniform:1:4", "uniform:1:4"),
        ("lognormal:3:0.5", "lognormal:3:0.5"),
    ],
)
def test_latency_specs_parse_and_print_back(text: str | float, shown: str) -> None:
    assert str(LatencySpec.parse(text)) == shown


@pytest.mark.parametrize(
    "text",
    ["fixed", "fixed:1:2", "uniform:1", "uniform:5:1", "lognormal:0:1", "fixed:-1", "x:1", True],
)
def test_bad_latency_specs_are_rejected(text: object) -> None:
    with pytest.raises(ConfigError):
        LatencySpec.parse(text)


def test_latency_draws_stay_in_their_distribution() -> None:
    rng = random.Random(5)
    uniform = [LatencySpec.parse("uniform:1:4").draw(rng) for _ in range(200)]
    lognormal = sorted(LatencySpec.parse("lognormal:3:0.5").draw(rng) for _ in range(2001))

    assert all(1 <= value <= 4 for value in uniform)
    assert LatencySpec.parse("fixed:2").draw(rng) == 2
    assert 2.5 < lognormal[1000] < 3.5  # the median is the median
    assert all(value > 0 for value in lognormal)


def test_fault_flags_parse_into_knobs() -> None:
    assert parse_fault_flag("nsfw") == ("nsfw", {"probability": "1"})
    assert parse_fault_flag("submit_slow=0.5,delay=2,models=a|b") == (
        "submit_slow",
        {"probability": "0.5", "delay": "2", "models": ["a", "b"]},
    )


def test_fault_count_and_targeting() -> None:
    spec = FaultSpec().updated("submit_503", {"count": 2, "prompt_contains": "boom"})
    injector = FaultInjector({"submit_503": spec}, seed=1)

    fired = [
        injector.fire("submit_503", "wavespeed-ai/flux-kontext-pro", prompt) is not None
        for prompt in ("calm", "boom", "boom", "boom")
    ]

    assert fired == [False, True, True, False]
    assert injector.served["submit_503"] == 2
    injector.configure({"submit_503": spec}, rearm=["submit_503"])
    assert injector.fire("submit_503", "wavespeed-ai/flux-kontext-pro", "boom") is not None


def test_rate_window_says_how_long_to_wait() -> None:
    limiter = RateLimiter()

    assert limiter.try_take("k", 2, limit=3, now=100.0) is None
    assert limiter.try_take("k", 1, limit=3, now=110.0) is None
    assert limiter.try_take("k", 1, limit=3, now=115.0) == 45  # the first entry leaves at 160
    assert limiter.try_take("k", 2, limit=3, now=161.0) is None
    assert limiter.try_take("k", 4, limit=3, now=500.0) == 60  # can never fit in one window
    assert limiter.try_take("other", 3, limit=3, now=115.0) is None


def test_sizes_are_kontext_resolutions_and_scale_in_steps_of_16() -> None:
    assert size_for_aspect_ratio("16:9") == (1392, 752)
    assert size_for_aspect_ratio("1:1") == (1024, 1024)
    assert scaled_size((1392, 752), 0.25) == (352, 192)
    assert scaled_size((1024, 1024), 0.001) == (16, 16)
    assert scaled_size((1024, 1024), 1.0) == (1024, 1024)
