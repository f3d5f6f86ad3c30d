"""When to poll next, and how long to back off after an error: pure functions.

Polls follow the model's observed latency. With a history of recent inference
times (``LatencyProfile``), a job is polled when a growing share of such jobs
has finished: at the 55th, 80th, 96th and 99.5th percentiles of that history
(``POLL_QUANTILES``), so about half the jobs need one poll and 95% at most three,
and the polls sit where completions are dense. Past the last of them (a job
slower than almost any seen), and for a model with no history yet (first poll at
``first_poll_default``), each interval is a fraction of the time already waited
(``backoff - 1`` of it), so a long job is not polled every 2 s. Every interval is at
least the minimum (2 s by default: WaveSpeed's guidance for images) and never past the
job's deadline; the intervals of that fallback are at most the maximum (30 s by default).
The percentiles themselves are not capped: a model whose jobs take two minutes is first
polled at about two minutes, not every 30 s on the way.

Errors: exponential backoff with full jitter (AWS architecture blog), but never
sooner than the server's ``Retry-After``.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: Smallest countdown we ever schedule: a zero countdown would spin.
MIN_COUNTDOWN = 0.05
#: Where in the model's latency distribution polls go.
POLL_QUANTILES = (0.55, 0.80, 0.96, 0.995)


@dataclass(frozen=True)
class LatencyProfile:
    """Where to poll a model's jobs: the ``POLL_QUANTILES`` of its recent inference times.

    The percentiles come from a log-normal fitted to the samples (the mean and spread
    of their logarithms), not from the samples' own order statistics: a few hundred
    samples say little about their 99th percentile, and inference latencies are
    close to log-normal."""

    #: Poll targets (seconds after submit), ascending.
    targets: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencyProfile | None:
        """None with too few samples to say anything (fewer than 5)."""
        logs = [math.log(s) for s in samples if s > 0]
        if len(logs) < 5:
            return None
        mu, sigma = statistics.fmean(logs), statistics.pstdev(logs)
        normal = statistics.NormalDist()
        return cls(tuple(math.exp(mu + sigma * normal.inv_cdf(q)) for q in POLL_QUANTILES))


def poll_delay(
    elapsed: float,
    *,
    profile: LatencyProfile | None,
    first_poll_default: float,
    min_interval: float,
    max_interval: float,
    backoff: float,
    time_left: float,
) -> float:
    """Seconds from now to the next poll of a job submitted ``elapsed`` seconds ago.

    ``time_left`` is how long until the job's deadline; the delay never overshoots it,
    so the deadline is noticed on time.
    """
    targets = profile.targets if profile is not None else (first_poll_default,)
    upcoming = [t - elapsed for t in targets if t - elapsed >= min_interval * 0.5]
    if upcoming:
        # Not capped by ``max_interval``: a model that takes minutes is polled where its
        # jobs end, not every 30 s on the way there (a poll that far ahead waits in Redis,
        # not in a held message: ``Settings.defer_polls_after``).
        delay = max(upcoming[0], min_interval)
    else:  # past every target: wait a growing share of the time already waited
        delay = min(max(elapsed * (backoff - 1), min_interval), max_interval)
    if not math.isfinite(delay):
        delay = max_interval
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
