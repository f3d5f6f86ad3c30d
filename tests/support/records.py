"""Put job records into a given state the only way the store allows: along legal moves."""

from __future__ import annotations

from typing import Any

from worker.models import JobStatus
from worker.store import JobStore

_S = JobStatus
#: A legal route from ``queued`` to each status.
ROUTES: dict[JobStatus, list[JobStatus]] = {
    _S.QUEUED: [],
    _S.SUBMITTING: [_S.SUBMITTING],
    _S.SUBMITTED: [_S.SUBMITTING, _S.SUBMITTED],
    _S.PROCESSING: [_S.SUBMITTING, _S.SUBMITTED, _S.PROCESSING],
    _S.PERSISTING: [_S.SUBMITTING, _S.SUBMITTED, _S.PERSISTING],
    _S.COMPLETED: [_S.SUBMITTING, _S.SUBMITTED, _S.COMPLETED],
    _S.FAILED: [_S.FAILED],
    _S.TIMED_OUT: [_S.TIMED_OUT],
    _S.CANCELLED: [_S.CANCELLED],
}


def put_in_status(store: JobStore, job_id: str, status: JobStatus | str, **fields: Any) -> None:
    """Move a queued record to ``status`` along legal moves; ``fields`` are written before
    the last move (a terminal record takes no more writes)."""
    route = ROUTES[JobStatus(status)]
    if fields:
        assert store.transition(job_id, updates=fields), f"could not write {fields}"
    for step in route:
        moved = store.transition(job_id, updates={"status": step.value})
        assert moved, f"{job_id}: move to {step.value} refused ({moved.name})"
