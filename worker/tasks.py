"""The Celery tasks: thin shells that turn a ``JobRunner`` outcome (and a callback
delivery's) into Celery terms."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import requests
from celery import Task, signals
from celery.exceptions import Ignore, Reject
from celery.utils import uuid
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.app import app, settings
from worker.balance import BalanceWatch
from worker.callbacks import CallbackDelivery, members_for
from worker.chains import send_callback_deliveries, send_job_and_rest
from worker.constants import DELIVER_CALLBACK_TASK, RUN_JOB_TASK
from worker.due_polls import DuePollDispatcher
from worker.errors import (
    BrokerUnavailableError,
    JobFailedError,
    JobNotFoundError,
    UnreadableRecordError,
)
from worker.messages import run_label
from worker.models import JobState
from worker.nudge import Nudger
from worker.pool_threads import start_pool_threads
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
    """What one worker process builds once: its runner (Redis pool, HTTP pools), its
    sweeper, its nudger and its dispatcher of deferred polls."""

    runner: JobRunner
    sweeper: Sweeper
    nudger: Nudger
    due_polls: DuePollDispatcher
    callbacks: CallbackDelivery


_parts_lock = threading.Lock()
_parts: tuple[int, _Parts] | None = None


def _build_parts() -> _Parts:
    store = JobStore.from_settings(settings)
    limiter = AccountLimiter.from_settings(store.client, settings)
    # One urllib3 pool manager per process: thread-safe, and sized for the threads pool.
    client = WaveSpeedClient(
        base_url=settings.base_url,
        api_key=settings.require_api_key(),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        pool_size=64,
        proxy_from_env=settings.proxy_from_env,
    )
    runner = JobRunner(settings, store, limiter, client)
    # A job of the line given a submission slot runs when its slot comes.
    runner.send = lambda state, countdown: send_job_and_rest(
        app, store, state, {}, countdown=countdown
    )
    balance = BalanceWatch(
        store.client,
        limiter,
        client,
        threshold_micros=settings.low_balance_micros,
        interval=settings.balance_check_interval,
        clock=store.clock,
        sweep_interval=settings.sweeper_interval,
    )
    sweeper = Sweeper(
        store,
        runner,
        resend,
        grace=runner.takeover_grace,
        interval=settings.sweeper_interval,
        clock=store.clock,  # Redis time, like every deadline it compares
        send_callbacks=_send_callback_deliveries,
        balance=balance,
    )
    nudger = Nudger(sweeper.bring_back)
    due_polls = DuePollDispatcher(store, send_due_poll, nudger.add, clock=store.clock)
    http = requests.Session()
    # The backend is usually inside the user's network: proxies only when configured.
    http.trust_env = settings.proxy_from_env
    callbacks = CallbackDelivery(settings, store, http)
    return _Parts(runner, sweeper, nudger, due_polls, callbacks)


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
            # An in-flight slot may have freed: the next job of the line gets it.
            job_runner().admit_waiting()
            announce_ending(outcome.state)
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
        # No next message: a job in the fair line is sent when it is given a submission
        # slot; a worker's dispatcher sends a deferred poll when it is due.
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
            **run_label(job_id, outcome.poll_seq, outcome.model),
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


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    name=DELIVER_CALLBACK_TASK,
    acks_late=True,
    max_retries=None,  # the retry window (WAVEQUEUE_CALLBACK_RETRY_FOR) bounds it
    ignore_result=True,
)
def deliver_callback(self: Task, target: str = "") -> None:
    """One attempt at the callback of ``target`` (``job:<id>`` or ``chain:<id>``)."""
    try:
        countdown = _process_parts().callbacks.deliver(target)
    except BROKER_LOST as exc:
        # Its outbox entry stays, with the time the sweeper sends it again.
        log.warning(
            "callback %s: Redis lost mid-delivery (%s); the sweeper sends it again", target, exc
        )
        raise Ignore(str(exc)) from None
    if countdown is None:
        return
    try:
        self.retry(countdown=countdown, kwargs={"target": target}, throw=False, task_id=uuid())
    except Reject as exc:
        log.warning("callback %s: next attempt not scheduled (%s); the sweeper will", target, exc)
    self.request.callbacks = None


def announce_ending(state: JobState) -> None:
    """Send the callbacks the job's ending made owed (the store put them in the outbox in
    the same step). Best effort: an outbox entry whose message never went out is sent by
    the sweeper after ``CALLBACK_SEND_GRACE``."""
    try:
        send_callbacks(_process_parts().runner.store, state)
    except Exception as exc:  # noqa: BLE001 - the sweeper sends what this could not
        log.warning("job %s: callback not sent yet (%s); the sweeper will", state.id, exc)


def send_callbacks(store: JobStore, state: JobState) -> int:
    """Send a delivery for each callback owed for this job's ending; how many."""
    owed = store.callbacks_owed(members_for(state.id, state.callback_url, state.chain_id))
    _send_callback_deliveries(owed)
    return len(owed)


def _send_callback_deliveries(members: Sequence[str]) -> None:
    if members:
        send_callback_deliveries(app, members)


def resend(snap: JobSnapshot, first_kwargs: dict[str, Any]) -> None:
    """Send a job's message again; a chain step takes the steps after it along."""
    send_job_and_rest(app, job_runner().store, snap.state, first_kwargs)


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


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _start_pool_threads(sender: object = None, **_: object) -> None:
    # sender: the consumer; its pool is the worker's (threads: every thread now, each
    # with a connection of the job store's pool).
    start_pool_threads(getattr(sender, "pool", None), job_runner().store.client.connection_pool)


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _stop_sweeper(**_: object) -> None:
    _sweeper_stop.set()
