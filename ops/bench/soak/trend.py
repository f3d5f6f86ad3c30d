"""Slopes of a measure against jobs done, and the rule that calls a process growing.

Pure functions over samples, so ``tests/unit/test_soak_trend.py`` checks the rule
without a stack. A slope is the least-squares line of the measure against the jobs
enqueued so far, per 1,000 jobs; its standard error says how well the samples pin it.

The rule (printed with every report): a process keeps growing when, in the second
half of the run (after warm-up), the slope of a measure is above its floor **and**
above ``NOISE_SIGMAS`` standard errors of that slope. The floor is 0.05 MB per 1,000
jobs for resident memory and 0.05 per 1,000 jobs for threads and open files (one more
thread every 20,000 jobs); a slope under its floor is flat whatever its precision, a
slope within the noise is not proven to be growth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Second-half slope floors per 1,000 jobs.
RSS_FLOOR_MB = 0.05
COUNT_FLOOR = 0.05
#: A slope within this many standard errors of zero is noise.
NOISE_SIGMAS = 3.0


@dataclass(frozen=True)
class Slope:
    per_1k: float
    stderr_per_1k: float

    def grows(self, floor: float) -> bool:
        return self.per_1k > floor and self.per_1k > NOISE_SIGMAS * self.stderr_per_1k


def slope(jobs: Sequence[float], values: Sequence[float]) -> Slope:
    """Least-squares slope of ``values`` against ``jobs``, per 1,000 jobs, and its
    standard error (0 with fewer than three points: nothing to judge the fit by)."""
    n = len(jobs)
    if n < 2:
        return Slope(0.0, 0.0)
    mean_x, mean_y = sum(jobs) / n, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in jobs)
    if sxx == 0:
        return Slope(0.0, 0.0)
    beta = sum((x - mean_x) * (y - mean_y) for x, y in zip(jobs, values, strict=True)) / sxx
    stderr = 0.0
    if n > 2:
        residuals = sum(
            (y - mean_y - beta * (x - mean_x)) ** 2 for x, y in zip(jobs, values, strict=True)
        )
        stderr = math.sqrt(residuals / (n - 2) / sxx)
    return Slope(beta * 1000, stderr * 1000)


def halves(jobs: Sequence[float], values: Sequence[float]) -> tuple[Slope, Slope]:
    """Slopes over the first and the second half of the samples (by jobs done); the
    sample at the middle belongs to both, so the halves join."""
    if not jobs:
        return Slope(0.0, 0.0), Slope(0.0, 0.0)
    middle = (jobs[0] + jobs[-1]) / 2
    first = [(x, y) for x, y in zip(jobs, values, strict=True) if x <= middle]
    second = [(x, y) for x, y in zip(jobs, values, strict=True) if x >= middle]
    if first and second and first[-1] != second[0]:
        second.insert(0, first[-1])
    return _slope_of(first), _slope_of(second)


def _slope_of(points: Sequence[tuple[float, float]]) -> Slope:
    return slope([x for x, _ in points], [y for _, y in points])


@dataclass(frozen=True)
class Trend:
    """One measure of one process: first- and second-half slopes, and its floor."""

    measure: str
    first: Slope
    second: Slope
    floor: float | None  # None: shown, not judged

    @property
    def grows(self) -> bool:
        return self.floor is not None and self.second.grows(self.floor)


def trend(
    measure: str, jobs: Sequence[float], values: Sequence[float], floor: float | None
) -> Trend:
    first, second = halves(jobs, values)
    return Trend(measure, first, second, floor)


RULE = (
    f"a process fails when a measure's second-half slope is above its floor "
    f"(RSS {RSS_FLOOR_MB} MB, threads and fds {COUNT_FLOOR} per 1,000 jobs) and above "
    f"{NOISE_SIGMAS:g} standard errors of the fitted slope (the samples' own noise); "
    "the halves are of the measured load, after the burst and the warm-up; heap blocks "
    "and malloc figures are shown, not judged; when a process grows, a traced run of the "
    "same load names the allocation sites that grew"
)
