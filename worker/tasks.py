"""The Celery task: a thin shell that turns a ``JobRunner`` outcome into Celery terms."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, NoReturn

from celery import Task, signals
from celery.exceptions import Ignore, Reject
from celery.utils import uuid
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.app import app, settings
from worker.chains import send_job_chain
from worker.constants import RUN_JOB_TASK
from worker.due_polls import DuePollDispatcher
from worker.errors import (
    BrokerUnavailableError,
    JobFailedError,
    JobNotFoundError,
    UnreadableRecordError,
)
from worker.nudge import Nudger
from worker.ratelimit import AccountLimiter
from worker.reconnect import after_reconnect
from worker.runner import Deferred, Duplicate, Finished, JobRunner, Parked
from worker.store import JobSnapshot, JobStore
from worker.sweeper import Sweeper
from worker.wavespeed import WaveSpeedClient

log = logging.getLogger(__name__)

#: What a run raises when Redis is away past the client's retries.
BROKER_LOST = (RedisConnectionError, RedisTimeoutError, BrokerUnavailableError, OperationalError)


@dataclass(frozen=True)
class _Parts:
    """What one worker process builds once: its runner (Redis pool, HTTP session), its
    sweeper, its nudger and its dispatcher of deferred polls."""

    runner: JobRunner
    sweeper: Sweeper
    nudger: Nudger
    due_polls: DuePollDispatcher


_parts_lock = threading.Lock()
_parts: tuple[int, _Parts] | None = None


def _build_parts() -> _Parts:
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
        proxy_from_env=settings.proxy_from_env,
    )
    runner = JobRunner(settings, store, limiter, client)
    sweeper = Sweeper(
        store,
        runner,
        resend,
        grace=runner.takeover_grace,
        interval=settings.sweeper_interval,
        clock=store.clock,  # Redis time, like every deadline it compares
    )
    nudger = Nudger(sweeper.bring_back)
    due_polls = DuePollDispatcher(store, send_due_poll, nudger.add, clock=store.clock)
    return _Parts(runner, sweeper, nudger, due_polls)


def _process_parts() -> _Parts:
    """Built on first use in the process that uses them: after a prefork fork, never at
    import, never inherited."""
    global _parts  # noqa: PLW0603 - one set per process, built lazily
    with _parts_lock:
        if _parts is None or _parts[0] != os.getpid():
            _parts = (os.getpid(), _build_parts())
        return _parts[1]


def job_runner() -> JobRunner:
    return _process_parts().runner


def nudger() -> Nudger:
    return _process_parts().nudger


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
    except BROKER_LOST as exc:
        # Redis went away mid-run (past the client's retries): this message ends here, and
        # the job is sent again from its record as soon as Redis answers.
        _lost_with_the_broker(job_id, exc)
    if isinstance(outcome, Duplicate):
        # Ignore: no state change and, crucially, no chain callback from a duplicate.
        raise Ignore(outcome.reason)
    if isinstance(outcome, Finished):
        if outcome.ended_here:
            wake_parked(1)
        record = outcome.state
        if record.status.value != "completed":
            error = record.error
            raise JobFailedError(
                record.id,
                record.status.value,
                error.code if error else None,
                error.message if error else "",
            )
        return outcome.output
    if isinstance(outcome, Parked | Deferred):
        # No next message: a run that frees a slot (or the sweeper) sends a parked job
        # again; a worker's dispatcher sends a deferred poll when it is due.
        self.request.chain = None
        self.request.callbacks = None
        return None
    try:
        # Publishes the next run (this run's chain and callbacks go with it) and returns:
        # raising Retry would have Celery copy the whole stack's code positions into an
        # ExceptionInfo and log a line, about a quarter of a run's CPU, for every poll.
        # Each run gets its own task id: every run now ends "succeeded" for Celery, and a
        # monitor (Flower) keeps the first final state it sees per id, so one id for all
        # runs would show a job that fails later as a success.
        self.retry(
            countdown=outcome.countdown,
            kwargs={"job_id": job_id, "poll_seq": outcome.poll_seq},
            throw=False,
            task_id=uuid(),
        )
    except Reject as exc:
        # celery could not publish the next message (the broker is away) and would drop
        # this one: the job's next step is claimed in its record but has no message.
        _lost_with_the_broker(job_id, exc)
    # This run ends here: the chain continues from the next run, not from this one.
    self.request.chain = None
    self.request.callbacks = None
    return None


def _lost_with_the_broker(job_id: str, exc: BaseException) -> NoReturn:
    log.warning("job %s: its next message was lost with the broker (%s)", job_id, exc)
    nudger().add(job_id)
    raise Ignore(f"job {job_id}: sent again once the broker is back") from None


def wake_parked(count: int) -> int:
    """Send again up to ``count`` jobs parked behind the in-flight cap (a slot freed).
    Never fails the run that calls it: a job taken but not sent stays in the limiter's
    waking set, and the sweeper parks it again (``requeue_stale_wakes``)."""
    sent = 0
    try:
        for snap in job_runner().unparked(count):
            resend(snap, {})
            sent += 1
    except Exception as exc:  # noqa: BLE001 - a wake is best effort; the sweeper repairs it
        log.warning("could not wake parked jobs (%s); the sweeper will", exc)
    return sent


def resend(snap: JobSnapshot, first_kwargs: dict[str, Any]) -> None:
    """Send a job's message again; a chain step takes the steps after it along."""
    record = snap.state
    job_ids = [record.id]
    if record.chain_id and record.step:
        # If the chain record expired, finish this step at least.
        with contextlib.suppress(JobNotFoundError):
            job_ids += job_runner().store.get_chain(record.chain_id).step_job_ids[record.step :]
    send_job_chain(app, job_ids, record.priority.queue, first_kwargs=first_kwargs)


def send_due_poll(job_id: str) -> None:
    """Send the message of a deferred poll that is due (unless the job ended meanwhile)."""
    try:
        snap = job_runner().store.snapshot(job_id)
    except (JobNotFoundError, UnreadableRecordError):
        return  # expired or unreadable: the sweeper's rules deal with the record
    if not snap.state.is_terminal:
        resend(snap, {"poll_seq": int(snap.number("poll_seq"))})


_sweeper_stop = threading.Event()


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _start_sweeper(**_: object) -> None:
    parts = _process_parts()
    after_reconnect(parts.sweeper.catch_up_soon)
    threading.Thread(
        target=parts.sweeper.run, args=(_sweeper_stop,), name="wavequeue-sweeper", daemon=True
    ).start()
    parts.nudger.start(_sweeper_stop)
    threading.Thread(
        target=parts.due_polls.run, args=(_sweeper_stop,), name="wavequeue-due-polls", daemon=True
    ).start()


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _stop_sweeper(**_: object) -> None:
    _sweeper_stop.set()
