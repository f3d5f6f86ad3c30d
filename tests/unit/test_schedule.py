"""The poll schedule and the error backoff are pure functions."""

from __future__ import annotations

import itertools
import random

from worker.schedule import MIN_COUNTDOWN, error_backoff, poll_delay

SCHEDULE = {"min_interval": 2.0, "max_interval": 30.0, "backoff": 1.5, "time_left": 900.0}


def test_first_poll_at_expected_latency() -> None:
    assert poll_delay(0, expected_latency=7.0, **SCHEDULE) == 7.0


def test_first_poll_never_below_the_minimum() -> None:
    assert poll_delay(0, expected_latency=0.3, **SCHEDULE) == 2.0


def test_intervals_grow_from_the_minimum_to_the_maximum() -> None:
    delays = [poll_delay(n, expected_latency=5.0, **SCHEDULE) for n in range(1, 12)]
    assert delays[0] == 2.0
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert delays[1] == 3.0
    assert max(delays) == 30.0


def test_never_past_the_deadline() -> None:
    assert poll_delay(5, expected_latency=5.0, **{**SCHEDULE, "time_left": 1.5}) == 1.5
    assert poll_delay(5, expected_latency=5.0, **{**SCHEDULE, "time_left": -3}) == MIN_COUNTDOWN


def test_total_polls_over_a_long_job_stay_few() -> None:
    # A 120 s inference expected at 10 s: count polls until 120 s have passed.
    elapsed, polls = 0.0, 0
    while elapsed < 120:
        elapsed += poll_delay(polls, expected_latency=10.0, **SCHEDULE)
        polls += 1
    assert polls <= 12


def test_backoff_full_jitter_within_the_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(10):
        delay = error_backoff(attempt, base=1.0, cap=60.0, rng=rng)
        assert MIN_COUNTDOWN <= delay <= min(60.0, 2**attempt)


def test_backoff_honours_retry_after() -> None:
    rng = random.Random(1)
    assert error_backoff(0, base=1.0, cap=60.0, retry_after=12.0, rng=rng) >= 12.0
    # but a hostile Retry-After cannot park a job past the cap
    assert error_backoff(0, base=1.0, cap=60.0, retry_after=9999.0, rng=rng) == 60.0
