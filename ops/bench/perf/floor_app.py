"""The raw Celery floor: a trivial self-retrying task on plain Celery.

``celery -A ops.bench.perf.floor_app worker`` (the harness adds the same pool and
concurrency as ``wavequeue worker``). Each floor job runs ``runs`` times, retrying
itself with ``countdown`` in between, as a wavequeue job submits and then polls:
the same number of executions and countdowns, and nothing else. Settings that shape
Celery's own cost per task are wavequeue's (JSON, late acks, prefetch, its task-event
settings (off by default), the same transport options); what wavequeue adds on top
(result backend, slimmed messages, unbuffered events, reconnect steps, the job
record) is left out: that difference is what the floor measures.
"""

from __future__ import annotations

from celery import Task

from ops.bench.perf.floor_config import FLOOR_TASK, floor_job_kwargs, make_floor_app
from worker.settings import Settings

app = make_floor_app(Settings.from_env())


@app.task(bind=True, name=FLOOR_TASK, max_retries=None)  # type: ignore[untyped-decorator]
def floor_job(self: Task, runs_left: int = 1, countdown: float = 0.0) -> None:
    """One execution; all but the last reschedule themselves like a poll does."""
    if runs_left > 1:
        raise self.retry(countdown=countdown, kwargs=floor_job_kwargs(runs_left - 1, countdown))
