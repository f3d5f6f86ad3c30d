"""The figures at the top of the jobs page: the exporter's own reading (``read_snapshot``),
so the page and ``/metrics`` say the same thing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ops.exporter.snapshot import Snapshot
from worker.constants import QUEUE_HIGH, QUEUE_NORMAL
from worker.models import JobStatus

#: The live statuses past the queue: the job is being submitted or computed.
_AT_WAVESPEED = frozenset({JobStatus.SUBMITTING, JobStatus.SUBMITTED, JobStatus.PROCESSING})


@dataclass(frozen=True)
class PageFigures:
    #: Messages waiting in each priority's queue (``wavequeue_queue_messages``, summed).
    queued_high: int
    queued_normal: int
    #: Jobs in ``queued`` (``wavequeue_jobs_live{status="queued"}``, summed over models).
    jobs_queued: int
    #: Jobs being submitted or computed (``wavequeue_jobs_live`` of those statuses).
    jobs_running: int
    #: Predictions holding an in-flight slot (``wavequeue_inflight_predictions``).
    in_flight: int
    #: Age of the job waiting longest (``wavequeue_jobs_oldest_queued_age_seconds``).
    oldest_waiting_seconds: float
    #: Jobs ended in the last hour (``wavequeue_jobs_ended_last_hour``).
    completed_last_hour: int
    failed_last_hour: int
    timed_out_last_hour: int
    cancelled_last_hour: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def page_figures(snap: Snapshot) -> PageFigures:
    def queue(name: str) -> int:
        return sum(n for (queue, _step), n in snap.queue_lengths.items() if queue == name)

    def live(statuses: frozenset[str]) -> int:
        return sum(n for (status, _model), n in snap.live_jobs.items() if status in statuses)

    queued_at = snap.index.oldest_queued_at
    ended = snap.index.ended
    return PageFigures(
        queued_high=queue(QUEUE_HIGH),
        queued_normal=queue(QUEUE_NORMAL),
        jobs_queued=live(frozenset({JobStatus.QUEUED.value})),
        jobs_running=live(frozenset(s.value for s in _AT_WAVESPEED)),
        in_flight=snap.inflight,
        oldest_waiting_seconds=max(0.0, snap.taken_at - queued_at) if queued_at else 0.0,
        completed_last_hour=ended.get(JobStatus.COMPLETED.value, 0),
        failed_last_hour=ended.get(JobStatus.FAILED.value, 0),
        timed_out_last_hour=ended.get(JobStatus.TIMED_OUT.value, 0),
        cancelled_last_hour=ended.get(JobStatus.CANCELLED.value, 0),
    )
