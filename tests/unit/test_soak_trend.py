"""The soak's slopes and its growth rule (``ops.bench.soak.trend``), on made-up samples."""

from __future__ import annotations

import random

import pytest

from ops.bench.soak.report import process_trends
from ops.bench.soak.sampling import ProcessSample, Sample
from ops.bench.soak.trend import RSS_FLOOR_MB, Slope, halves, slope, trend

JOBS = [float(n * 200) for n in range(40)]


def test_slope_of_a_line_is_its_rate_per_1000_jobs() -> None:
    fitted = slope([0.0, 1000.0, 2000.0, 3000.0], [10.0, 10.5, 11.0, 11.5])
    assert fitted.per_1k == pytest.approx(0.5)
    assert fitted.stderr_per_1k == pytest.approx(0.0)


def test_too_few_points_give_no_slope() -> None:
    assert slope([5.0], [1.0]) == Slope(0.0, 0.0)
    assert slope([5.0, 5.0], [1.0, 2.0]) == Slope(0.0, 0.0)


def test_halves_split_at_the_middle_and_join() -> None:
    jobs = [float(n * 100) for n in range(11)]  # 0 .. 1000, middle 500
    first, second = halves(jobs, [float(min(n, 5)) for n in range(11)])
    assert first.per_1k == pytest.approx(10.0)
    assert second.per_1k == pytest.approx(0.0)


def test_warm_up_then_flat_passes() -> None:
    rss = [80.0 + 20.0 * min(n, 15) / 15 for n in range(40)]
    assert not trend("RSS MB", JOBS, rss, RSS_FLOOR_MB).grows


def test_steady_growth_above_the_floor_fails() -> None:
    rss = [80.0 + 0.2 * x / 1000 for x in JOBS]  # 0.2 MB per 1,000 jobs throughout
    assert trend("RSS MB", JOBS, rss, RSS_FLOOR_MB).grows


def test_growth_within_the_noise_passes() -> None:
    noise = random.Random(3)
    # 0.1 MB per 1,000 jobs under +-3 MB of jitter: above the floor, but not proven.
    rss = [80.0 + 0.1 * x / 1000 + noise.uniform(-3, 3) for x in JOBS]
    assert not trend("RSS MB", JOBS, rss, RSS_FLOOR_MB).grows


def test_growth_under_the_floor_passes_however_precise() -> None:
    rss = [80.0 + 0.01 * x / 1000 for x in JOBS]
    assert not trend("RSS MB", JOBS, rss, RSS_FLOOR_MB).grows


def test_shown_measures_are_never_judged() -> None:
    assert not trend("heap blocks", JOBS, [x * 100 for x in JOBS], None).grows


def test_one_more_thread_every_few_thousand_jobs_fails_the_process() -> None:
    samples = [
        Sample(
            at=float(n),
            jobs=n * 500,
            redis_bytes=0,
            redis_keys=0,
            processes={"worker-0": ProcessSample(90.0, 20 + n // 4, 30, None)},
        )
        for n in range(40)
    ]
    judged = process_trends("worker-0", samples, judged=True)
    assert judged is not None
    assert [t.measure for t in judged.trends if t.grows] == ["threads"]
    assert judged.grows
    watched = process_trends("worker-0", samples, judged=False)
    assert watched is not None
    assert not watched.grows
