"""The Celery task: a thin shell that turns a ``JobRunner`` outcome into Celery terms."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from celery import Task, signals
from celery.exceptions import Ignore

from worker.app import app, settings
from worker.chains import send_job_chain
from worker.constants import RUN_JOB_TASK
from worker.errors import JobFailedError, JobNotFoundError, UnreadableRecordError
from worker.ratelimit import AccountLimiter
from worker.runner import Duplicate, Finished, JobRunner
from worker.store import JobSnapshot, JobStore
from worker.sweeper import Sweeper
from worker.wavespeed import WaveSpeedClient

log = logging.getLogger(__name__)

_runner_lock = threading.Lock()
_runner: tuple[int, JobRunner] | None = None


def _build_runner() -> JobRunner:
    store = JobStore.from_settings(settings)
    limiter = AccountLimiter(
        store.client,
        per_minute=settings.rate_limit_per_minute,
        max_in_flight=settings.max_in_flight,
    )
    # One requests.Session per process; urllib3's pool is thread-safe and sized for
    # the threads pool, and WaveSpeed sets no cookies for threads to race on.
    client = WaveSpeedClient(
        base_url=settings.base_url,
        api_key=settings.require_api_key(),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        pool_size=64,
    )
    return JobRunner(settings, store, limiter, client)


def job_runner() -> JobRunner:
    """The process's runner (its Redis pool and HTTP session), built on first use in the
    process that uses it: after a prefork fork, never at import, never inherited."""
    global _runner  # noqa: PLW0603 - one runner per process, built lazily
    with _runner_lock:
        if _runner is None or _runner[0] != os.getpid():
            _runner = (os.getpid(), _build_runner())
        return _runner[1]


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    name=RUN_JOB_TASK,
    acks_late=True,
    max_retries=None,  # polls are not errors: the job's deadline and error budget bound it
    throws=(JobFailedError,),  # a failed job is an expected outcome: no traceback in the log
)
def run_job(
    self: Task,
    previous_output: str | None = None,
    job_id: str = "",
    poll_seq: int = 0,
) -> str | None:
    """Submit, poll or finish job ``job_id``; returns its first output URL.

    ``previous_output`` is filled by a Celery chain with the step before's return value.
    """
    try:
        outcome = job_runner().run(job_id, poll_seq=poll_seq, previous_output=previous_output)
    except (JobNotFoundError, UnreadableRecordError) as exc:
        # A poison message: nothing a retry could fix. One line, acked once, no chain callback.
        log.error("run_job dropped a message for job %r: %s", job_id, exc)
        raise Ignore(str(exc)) from None
    if isinstance(outcome, Duplicate):
        # Ignore: no state change and, crucially, no chain callback from a duplicate.
        raise Ignore(outcome.reason)
    if isinstance(outcome, Finished):
        record = outcome.record
        if record.status.value != "completed":
            error = record.error
            raise JobFailedError(
                record.id,
                record.status.value,
                error.code if error else None,
                error.message if error else "",
            )
        return outcome.output
    raise self.retry(
        countdown=outcome.countdown,
        kwargs={"job_id": job_id, "poll_seq": outcome.poll_seq},
    )


def resend(snap: JobSnapshot, first_kwargs: dict[str, Any]) -> None:
    """Send a job's message again; a chain step takes the steps after it along."""
    record = snap.record
    job_ids = [record.id]
    if record.chain_id and record.step:
        # If the chain record expired, finish this step at least.
        with contextlib.suppress(JobNotFoundError):
            job_ids += job_runner().store.get_chain(record.chain_id).step_job_ids[record.step :]
    send_job_chain(app, job_ids, record.priority.queue, first_kwargs=first_kwargs)


_sweeper_stop = threading.Event()


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _start_sweeper(**_: object) -> None:
    runner = job_runner()
    sweeper = Sweeper(
        runner.store,
        runner,
        resend,
        grace=runner.takeover_grace,
        interval=max(1.0, min(30.0, settings.visibility_timeout / 10)),
    )
    thread = threading.Thread(
        target=sweeper.run, args=(_sweeper_stop,), name="wavequeue-sweeper", daemon=True
    )
    thread.start()


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _stop_sweeper(**_: object) -> None:
    _sweeper_stop.set()
