"""Per-job figures from what the job records and the emulator say about the same jobs.

- polls per job: the emulator's count of result requests per prediction;
- detection lag: when the record says the job completed minus when the emulator
  completed the prediction (both wall clocks of this machine), also as a share of
  that prediction's latency;
- submit span: first to last prediction created. Longer than the schedule's first
  poll interval means polls fell due while submits were still waiting: the workers
  were saturated.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.models import JobState, JobStatus


def percentile(values: Sequence[float], share: float) -> float:
    """Linear-interpolated percentile (``share`` in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class JobFigures:
    jobs: int
    completed: int
    polls_p50: float
    polls_p95: float
    polls_mean: float
    lag_p50_seconds: float
    #: p50 over jobs of lag / that job's latency (NaN at 0 s latency).
    lag_p50_share: float
    latency_p50: float
    submit_span: float


@dataclass(frozen=True)
class Observation:
    """One prediction: the emulator's record of it, and when its client saw it end."""

    prediction: Mapping[str, Any]
    detected_at: float | None
    completed: bool


def summarize(observations: Sequence[Observation], jobs: int) -> JobFigures:
    polls = [float(o.prediction["polls"]) for o in observations]
    latencies = [float(o.prediction["latency_seconds"]) for o in observations]
    created = [epoch(o.prediction["created_at"]) for o in observations]
    lags: list[float] = []
    shares: list[float] = []
    for observation in observations:
        finished = observation.prediction["completed_at"]
        if observation.detected_at is None or not finished:
            continue
        lag = observation.detected_at - epoch(finished)
        lags.append(lag)
        if observation.prediction["latency_seconds"] > 0:
            shares.append(lag / observation.prediction["latency_seconds"])
    return JobFigures(
        jobs=jobs,
        completed=sum(o.completed for o in observations),
        polls_p50=percentile(polls, 0.5),
        polls_p95=percentile(polls, 0.95),
        polls_mean=statistics.fmean(polls) if polls else math.nan,
        lag_p50_seconds=percentile(lags, 0.5),
        lag_p50_share=percentile(shares, 0.5),
        latency_p50=percentile(latencies, 0.5),
        submit_span=max(created) - min(created) if created else math.nan,
    )


def record_figures(
    states: Sequence[JobState | None], predictions: Mapping[str, Mapping[str, Any]]
) -> JobFigures:
    """Figures of wavequeue jobs: detection is the record's ``completed_at``."""
    observations = [
        Observation(
            predictions[state.prediction_id or ""],
            state.completed_at,
            state.status is JobStatus.COMPLETED,
        )
        for state in states
        if state is not None and state.prediction_id and state.prediction_id in predictions
    ]
    return summarize(observations, len(states))


def floor_figures(
    results: Sequence[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]]
) -> JobFigures:
    """Figures of the async floor's steps: detection is when the floor saw the end."""
    observations = [
        Observation(
            predictions[result["prediction_id"]],
            result["detected_at"],
            result["status"] == "completed",
        )
        for result in results
        if result["prediction_id"] in predictions
    ]
    return summarize(observations, len(results))
