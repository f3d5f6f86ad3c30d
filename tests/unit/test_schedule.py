"""The poll schedule and the error backoff are pure functions."""

from __future__ import annotations

import itertools
import math
import random

from worker.schedule import MIN_COUNTDOWN, LatencyProfile, error_backoff, poll_delay

SCHEDULE = {
    "first_poll_default": 5.0,
    "min_interval": 2.0,
    "max_interval": 30.0,
    "backoff": 1.5,
    "time_left": 900.0,
}


def _lognormal(median: float, spread: float, n: int, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(spread * rng.gauss(0, 1)) for _ in range(n)]


def _polls_for(latency: float, profile: LatencyProfile | None) -> int:
    """How many polls a job of this latency needs under the schedule."""
    elapsed, polls = 0.0, 0
    while True:
        elapsed += poll_delay(elapsed, profile=profile, **SCHEDULE)
        polls += 1
        if elapsed >= latency:
            return polls


def test_without_history_the_first_poll_is_the_default() -> None:
    assert poll_delay(0.0, profile=None, **SCHEDULE) == 5.0


def test_no_interval_below_the_minimum_or_above_the_maximum() -> None:
    fast = LatencyProfile.of([0.3] * 20)
    assert poll_delay(0.0, profile=fast, **SCHEDULE) == 2.0
    assert poll_delay(10_000.0, profile=fast, **SCHEDULE) == 30.0


def test_after_the_targets_intervals_grow_with_the_time_waited() -> None:
    """Not back to 2 s after the first poll: a 120 s job is polled a handful of times."""
    delays = []
    elapsed = 5.0
    for _ in range(6):
        delay = poll_delay(elapsed, profile=None, **SCHEDULE)
        delays.append(delay)
        elapsed += delay
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert delays[0] == 2.5  # half of the 5 s waited
    assert _polls_for(120.0, None) <= 10


def test_polls_follow_the_latency_distribution() -> None:
    """Lognormal latencies: half the jobs need one poll, 95% at most three."""
    history = _lognormal(20.0, 0.4, 200)
    profile = LatencyProfile.of(history)
    assert profile is not None
    polls = sorted(_polls_for(latency, profile) for latency in _lognormal(20.0, 0.4, 2000, 9))
    assert polls[len(polls) // 2] == 1
    assert polls[int(len(polls) * 0.95)] <= 3


def test_a_slow_model_is_polled_where_its_jobs_end_not_every_max_interval() -> None:
    """Two-minute jobs: the first poll near two minutes (a poll that far ahead waits in
    Redis, not in a held message), not at 30, 60, 90 and 120 s; median one poll."""
    history = _lognormal(120.0, 0.15, 200)
    profile = LatencyProfile.of(history)
    assert profile is not None
    assert poll_delay(0.0, profile=profile, **SCHEDULE) > 100.0
    polls = sorted(_polls_for(latency, profile) for latency in _lognormal(120.0, 0.15, 2000, 9))
    assert polls[len(polls) // 2] == 1
    assert polls[int(len(polls) * 0.95)] <= 3


def test_never_past_the_deadline() -> None:
    assert poll_delay(5.0, profile=None, **{**SCHEDULE, "time_left": 1.5}) == 1.5
    assert poll_delay(5.0, profile=None, **{**SCHEDULE, "time_left": -3}) == MIN_COUNTDOWN


def test_too_little_history_is_no_profile() -> None:
    assert LatencyProfile.of([1.0, 2.0]) is None


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
