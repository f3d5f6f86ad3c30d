"""When to poll next, and how long to back off after an error: pure functions.

Polls: the first one comes when the model usually finishes (the median of its
recent inference times), then the intervals grow geometrically from the
minimum (2 s by default, WaveSpeed's guidance for images) up to the maximum,
and never past the job's deadline.

Errors: exponential backoff with full jitter (AWS architecture blog), but never
sooner than the server's ``Retry-After``.
"""

from __future__ import annotations

import random

#: Smallest countdown we ever schedule: a zero countdown would spin.
MIN_COUNTDOWN = 0.05


def poll_delay(
    poll_number: int,
    *,
    expected_latency: float,
    min_interval: float,
    max_interval: float,
    backoff: float,
    time_left: float,
) -> float:
    """Seconds to wait before poll ``poll_number`` (0 = the first after submit).

    ``time_left`` is how long until the job's deadline; the delay never
    overshoots it, so the deadline is noticed on time.
    """
    if poll_number <= 0:
        delay = expected_latency
    else:
        delay = min_interval * backoff ** (poll_number - 1)
    delay = min(max(delay, min_interval), max_interval)
    return round(max(MIN_COUNTDOWN, min(delay, time_left)), 3)


def error_backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Full-jitter backoff for error retry ``attempt`` (0-based), honouring Retry-After."""
    ceiling = min(cap, base * 2**attempt)
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return round(max(MIN_COUNTDOWN, delay), 3)
