"""What one run of ``run_job`` does, decided against the job state.

The Celery task is a thin shell around ``JobRunner.run()``, which returns an
``Outcome``: ``Finished`` (return or raise), ``Reschedule`` (``self.retry`` with
a countdown) or ``Duplicate`` (another copy of this message owns the job: do
nothing, and do not advance a chain).

Why each copy of a message is safe (Celery on Redis can deliver twice):

- **Submit**: the right to POST is a token taken by compare-and-set on the
  record (``prediction_id`` and ``submit_token`` both empty). One copy wins. A
  copy that finds a live token steps aside; one that finds an expired token
  knows the holder died mid-POST: the outcome is unknown, and the configured
  ambiguous-submit policy decides (``fail`` by default, never a blind resend).
- **Poll**: each scheduled poll carries a sequence number; scheduling the next
  one is a compare-and-set from ``poll_seq`` to ``poll_seq + 1``, so of two
  copies only one schedules. A copy with an old number steps aside, unless the
  poll it lost to is long overdue (its message was lost), in which case it
  takes over.
- **Finish**: moving to a terminal status is a compare-and-set too; a record
  that is already terminal makes the run return its result (so a chain that
  lost its next message carries on) and nothing else.

Every write is a ``JobStore.transition``, which refuses to touch a terminal
record: an answer that arrives after the job ended (a POST or GET in flight
while the sweeper timed the job out, or while a redelivered copy failed it)
is dropped, never applied — a finished job cannot come back to life. Times
come from ``store.clock`` (Redis time), so leases and deadlines mean the same
on every host.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from worker.clock import Clock
from worker.constants import LATENCY_BUCKETS, POLL_COUNT_BUCKETS
from worker.errors import (
    BrokerUnavailableError,
    JobNotFoundError,
    PermanentError,
    RateLimitedError,
    SubmitOutcomeUnknownError,
    TransientError,
    UnreadableRecordError,
    WaveSpeedError,
)
from worker.latency import LatencyProfiles
from worker.models import JobError, JobState, JobStatus
from worker.ratelimit import AccountLimiter
from worker.schedule import error_backoff, poll_delay
from worker.settings import Settings
from worker.store import Effect, JobSnapshot, JobStore, Moved, counter_field
from worker.wavespeed import Prediction, failure_of

log = logging.getLogger(__name__)

SUBMIT_OUTCOME_UNKNOWN = "submit_outcome_unknown"
#: How long before its submit lease ends a run stops trying to record its prediction.
LEASE_MARGIN = 5.0
#: Redis errors a write may outlast: the server away (past the client's own retries).
STORE_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, BrokerUnavailableError)


def _store_unavailable(exc: Exception) -> bool:
    """Away, or refusing writes because it is out of memory (``maxmemory`` with
    ``noeviction``): both pass; any other error is a bug that retrying cannot fix."""
    if isinstance(exc, STORE_UNAVAILABLE):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("OOM")


DEADLINE_EXCEEDED = "deadline_exceeded"


class PredictionAPI(Protocol):
    """What the runner needs of WaveSpeed (``worker.wavespeed.WaveSpeedClient``)."""

    def submit(self, model: str, body: Mapping[str, Any]) -> Prediction: ...

    def result(self, prediction_id: str) -> Prediction: ...


@dataclass(frozen=True)
class Finished:
    state: JobState
    #: This run made the job terminal (not a copy that found it so): an in-flight slot
    #: may have freed, so a parked job is woken.
    ended_here: bool = False

    @property
    def output(self) -> str | None:
        return self.state.outputs[0] if self.state.outputs else None


@dataclass(frozen=True)
class Reschedule:
    countdown: float
    poll_seq: int
    #: "poll" (not an error), "error" (uses the retry budget) or "rate_limit" (waits for a token).
    reason: str


@dataclass(frozen=True)
class Deferred:
    """The next poll is due further ahead than a countdown message is held
    (``Settings.longest_held_poll``): no message now. The job waits in ``DUE_POLLS_KEY``
    and a worker's dispatcher (``worker.due_polls``) sends its message when it is due."""

    due_at: float
    poll_seq: int


@dataclass(frozen=True)
class Duplicate:
    reason: str


@dataclass(frozen=True)
class Parked:
    """Refused for the in-flight cap: the job waits in the limiter's parked set, with no
    message, until a run that frees a slot (or the sweeper, seeing free slots) sends it
    again. A line of thousands behind the cap costs nothing while it waits."""


Outcome = Finished | Reschedule | Deferred | Duplicate | Parked

#: A parked job is sent again by the sweeper's usual re-send after this long at most, if
#: no wake reached it (its parked entry lost with a failover, say).
PARK_HORIZON = 600.0
#: How many times a wake takes more parked jobs in place of ones that no longer wait.
_UNPARK_ROUNDS = 4


@dataclass(frozen=True)
class _Tally:
    """What the run did that must be counted with the write that follows it: record
    increments (applied with the write) and global counters (counted whatever it decides,
    because the HTTP call happened)."""

    increments: Mapping[str, int]
    count: Sequence[str]

    def __add__(self, other: _Tally) -> _Tally:
        merged = dict(self.increments)
        for field, amount in other.increments.items():
            merged[field] = merged.get(field, 0) + amount
        return _Tally(merged, [*self.count, *other.count])


_NOTHING = _Tally({}, ())


class JobRunner:
    """Runs one step of a job: submit, poll or finish. Safe to call from many copies."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        limiter: AccountLimiter,
        client: PredictionAPI,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.limiter = limiter
        self.client = client
        self.clock: Clock = clock or store.clock
        self.rng = rng or random.Random()
        #: Each model's recent latency, read from Redis at most every half minute.
        self.latency = LatencyProfiles(store, clock=self.clock)
        #: How overdue a poll must be before an older copy concludes its message was lost.
        self.takeover_grace = (settings.visibility_timeout - settings.longest_countdown) / 2

    # entry --------------------------------------------------------------------

    def run(self, job_id: str, *, poll_seq: int = 0, previous_output: str | None = None) -> Outcome:
        snap = self.store.snapshot(job_id)
        if snap.state.is_terminal:
            return Finished(snap.state)
        now = self.clock()
        if now >= snap.state.deadline_at:
            if snap.field("prediction_id") and poll_seq == int(snap.number("poll_seq")):
                return self._last_look(snap, poll_seq)
            return self._time_out(snap)
        if snap.field("awaiting_image") == "1":
            snap = self._take_previous_output(snap, previous_output)
            if snap.state.is_terminal:
                return Finished(snap.state)
        if snap.field("prediction_id"):
            return self._poll(snap, poll_seq, now)
        return self._submit(snap, now)

    def _last_look(self, snap: JobSnapshot, poll_seq: int) -> Outcome:
        """The poll due at the deadline: a prediction that completed in the last interval
        is billed, so take its result; anything else ends the job ``timed_out``."""
        prediction_id = snap.field("prediction_id")
        try:
            prediction = self.client.result(prediction_id)
        except WaveSpeedError:
            return self._time_out(snap)
        if prediction.status.value == "completed":
            polled = _Tally({"polls": 1}, [counter_field("polls", model=snap.state.model)])
            return self._complete(snap, prediction, polled)
        return self._time_out(snap)

    def time_out(self, snap: JobSnapshot) -> Outcome:
        """End a live job past its deadline (the sweeper, for jobs whose message is gone
        or late): ``timed_out`` unless it ended or its deadline moved meanwhile."""
        return self._time_out(snap)

    # submit -------------------------------------------------------------------

    def _take_previous_output(self, snap: JobSnapshot, image: str | None) -> JobSnapshot:
        """A chain step gets its input image from the step before, at run time."""
        job_id = snap.state.id
        if not image:
            self._fail(snap, {}, "missing_input", "chain step ran without the previous output")
        else:
            request = self.store.request(job_id)
            self.store.transition(
                job_id,
                expect={"awaiting_image": "1"},
                updates={"awaiting_image": "0"},
                request=request.with_input({**request.input, "image": image}),
            )
        return self.store.snapshot(job_id)

    def _submit(self, snap: JobSnapshot, now: float) -> Outcome:
        state = snap.state
        holder = snap.field("submit_token")
        if holder:
            if now < snap.number("submit_lease_until"):
                return Duplicate("another copy is submitting this job")
            # The holder's lease ran out: it died, or hung, after (maybe) sending the POST.
            return self._ambiguous(
                snap,
                holder,
                SubmitOutcomeUnknownError(
                    "an earlier submit attempt did not finish; the prediction may exist on "
                    "WaveSpeed and may be billed",
                    code=SUBMIT_OUTCOME_UNKNOWN,
                ),
            )
        time_left = state.deadline_at - now
        permit = self.limiter.acquire(
            state.id,
            images=state.images,
            slot_ttl=time_left + self.settings.visibility_timeout,
            deadline=state.deadline_at,
        )
        if not permit.granted:
            if permit.reason == "in_flight":
                return self._park(snap, now)
            tally = _Tally({}, [counter_field("limiter_waits")])
            # The limiter says when this job's slot on the schedule comes.
            wait = permit.wait + self.rng.uniform(0, 0.25)
            wait = min(wait, self.settings.retry_max_delay, time_left)
            return self._reschedule_submit(snap, wait, "rate_limit", tally)
        token = uuid.uuid4().hex
        lease = self.settings.submit_lease
        claimed, request = self.store.transition_and_read_request(
            state.id,
            expect={"status": state.status.value, "prediction_id": "", "submit_token": ""},
            updates={
                "status": JobStatus.SUBMITTING.value,
                "submit_token": token,
                "submit_lease_until": now + lease,
                # If this run dies mid-POST and its message is lost, the sweeper finds it.
                "next_run_at": now + lease,
            },
            increments={"attempts": 1},
        )
        if not claimed or request is None:
            return Duplicate(f"submit not claimed ({claimed.name.lower()})")
        # The claim changed only bookkeeping this run does not read again: no re-read.
        return self._send(snap, token, request.input)

    def _send(self, snap: JobSnapshot, token: str, body: Mapping[str, Any]) -> Outcome:
        state = snap.state
        # Everything the write after the POST needs is read before it: once a prediction
        # exists, only that write may touch Redis.
        delay = self._poll_delay(state, self.clock(), submitted_at=self.clock())
        lease_ends = time.monotonic() + self.settings.submit_lease - LEASE_MARGIN
        try:
            prediction = self.client.submit(state.model, body)
        except SubmitOutcomeUnknownError as exc:
            self.store.count("submit_outcome_unknown", model=state.model)
            return self._ambiguous(snap, token, exc)
        except RateLimitedError as exc:
            self.limiter.release(state.id)
            return self._remote_rate_limited(snap, token, exc)
        except TransientError as exc:
            # Provably not created (refused, 503): give the token and slot back.
            self.limiter.release(state.id)
            return self._error_retry(snap, exc, poll_seq=0, token=token)
        except PermanentError as exc:
            return self._fail(snap, {"submit_token": token}, exc.code, exc.message)
        now = self.clock()
        due = now + delay
        moved = self._write_until(
            lease_ends,
            state.id,
            expect={"submit_token": token, "prediction_id": ""},
            updates={
                "status": JobStatus.SUBMITTED.value,
                "prediction_id": prediction.id,
                "submitted_at": now,
                "submit_token": "",
                "submit_lease_until": "",
                "poll_seq": 1,
                "poll_due_at": due,
                "next_run_at": due,
            },
            count=[counter_field("submissions", model=state.model)],
            defer_until=self._deferral(delay, due),
        )
        if not moved:
            # The job ended (or another copy took over) while the POST was in flight: the
            # prediction exists and may be billed, but the job's ending stands.
            self.store.count("orphaned_predictions", model=state.model)
            log.warning(
                "job %s: prediction %s was created after the job moved on (%s); not applied",
                state.id,
                prediction.id,
                moved.name.lower(),
            )
            return Duplicate(f"submit answer not applied ({moved.name.lower()})")
        log.debug("job %s submitted as prediction %s", state.id, prediction.id)
        return self._next_poll(delay, due, 1, "poll")

    def _remote_rate_limited(self, snap: JobSnapshot, token: str, exc: RateLimitedError) -> Outcome:
        """A 429 on submit: the account's window is full, nothing was created. It is the
        account's state, not this job's error: every worker's submits pause until it has
        room, and this job waits like any the limiter holds back, on no retry budget.
        Except a job larger than the whole per-minute limit, which the server may never
        take: it spends its budget, so it ends with a clear error instead of pausing the
        fleet until its deadline."""
        state = snap.state
        tally = _Tally({}, [counter_field("remote_rate_limited")])
        self.limiter.pause(exc.retry_after, "429 from WaveSpeed on submit")
        if state.images > self.settings.rate_limit_per_minute:
            return self._error_retry(snap, exc, poll_seq=0, token=token, tally=tally)
        wait = exc.retry_after if exc.retry_after is not None else self.limiter.default_pause
        wait = min(wait, self.settings.retry_max_delay, state.deadline_at - self.clock())
        wait = max(0.05, wait) + self.rng.uniform(0, 0.25)
        return self._reschedule_submit(snap, wait, "rate_limit", tally, token=token)

    def _write_until(self, give_up_at: float, job_id: str, **change: Any) -> Moved:
        """``store.transition`` for the write that records a created prediction: if Redis
        is away (or full), keep trying, the same write (one write id), until shortly before
        the submit lease ends — giving up earlier would throw the prediction id away and
        leave a billed prediction nobody polls. After that the lease's expiry decides."""
        write_id = uuid.uuid4().hex[:16]
        while True:
            try:
                return self.store.transition(job_id, write_id=write_id, **change)
            except redis.RedisError as exc:
                if not _store_unavailable(exc) or time.monotonic() >= give_up_at:
                    raise
                log.warning("job %s: cannot record its prediction yet (%s); retrying", job_id, exc)
                time.sleep(1.0)

    def _ambiguous(self, snap: JobSnapshot, token: str, exc: WaveSpeedError) -> Outcome:
        """The POST may have created a prediction we know nothing of."""
        if self.settings.ambiguous_submit_policy == "fail":
            message = f"{exc.message} (not re-sent: WAVEQUEUE_AMBIGUOUS_SUBMIT=fail)"
            return self._fail(snap, {"submit_token": token}, SUBMIT_OUTCOME_UNKNOWN, message)
        tally = _Tally({}, [counter_field("resubmissions", model=snap.state.model)])
        return self._error_retry(snap, exc, poll_seq=0, token=token, tally=tally)

    # poll ---------------------------------------------------------------------

    def _poll(self, snap: JobSnapshot, my_seq: int, now: float) -> Outcome:
        state = snap.state
        current_seq = int(snap.number("poll_seq"))
        if my_seq != current_seq:
            overdue = now - snap.number("poll_due_at")
            if my_seq > current_seq or overdue < self.takeover_grace:
                return Duplicate(f"poll {my_seq} superseded by poll {current_seq}")
            log.warning(
                "job %s: poll %s is %.0fs overdue, taking over", state.id, current_seq, overdue
            )
            my_seq = current_seq
        prediction_id = snap.field("prediction_id")
        try:
            prediction = self.client.result(prediction_id)
        except RateLimitedError as exc:
            # Polled too fast for the account: poll later, on no retry budget (the deadline
            # bounds it). A GET limit is not the images limit: submits go on.
            delay = max(exc.retry_after or 0.0, self._poll_delay(state, now))
            # Never longer than any countdown the visibility timeout was sized for.
            delay = min(delay, self.settings.longest_countdown, max(0.05, state.deadline_at - now))
            return self._schedule(snap, my_seq, delay, "poll")
        except TransientError as exc:
            return self._error_retry(snap, exc, poll_seq=my_seq)
        except PermanentError as exc:
            return self._fail(snap, {"prediction_id": prediction_id}, exc.code, exc.message)
        polled = _Tally({"polls": 1}, [counter_field("polls", model=state.model)])
        return self._on_prediction(snap, my_seq, prediction, now, polled)

    def _on_prediction(
        self, snap: JobSnapshot, my_seq: int, prediction: Prediction, now: float, polled: _Tally
    ) -> Outcome:
        state = snap.state
        if prediction.status.is_running:
            extra = {}
            if prediction.status.value == "processing":
                extra["status"] = JobStatus.PROCESSING.value
            delay = self._poll_delay(state, now)
            return self._schedule(snap, my_seq, delay, "poll", polled, extra=extra)
        if prediction.status.value == "completed":
            return self._complete(snap, prediction, polled)
        failure = failure_of(prediction)
        if isinstance(failure, TransientError):
            return self._resubmit_after_remote_failure(snap, prediction, failure, polled)
        return self._fail(
            snap, {"prediction_id": prediction.id}, failure.code, failure.message, tally=polled
        )

    def _complete(self, snap: JobSnapshot, prediction: Prediction, polled: _Tally) -> Outcome:
        state = snap.state
        now = self.clock()
        updates: dict[str, Any] = {
            "status": JobStatus.COMPLETED,
            "outputs": prediction.outputs,
            "has_nsfw_contents": prediction.has_nsfw_contents,
            "inference_ms": prediction.inference_ms,
            "completed_at": now,
        }
        finished = state.model_copy(update={**updates, "polls": state.polls + 1})
        done = self.store.transition(
            state.id,
            expect={"prediction_id": prediction.id},
            updates={k: v.value if isinstance(v, JobStatus) else v for k, v in updates.items()},
            increments=polled.increments,
            count=polled.count,
            count_if_applied=[
                counter_field("jobs_completed", model=state.model),
                counter_field("jobs_ended", model=state.model, outcome="completed"),
            ],
            # The completion's bookkeeping, in the same step: counted once, one round trip.
            effects=self._completion_effects(finished, prediction, now),
        )
        if not done:
            return Duplicate(f"completion not applied ({done.name.lower()})")
        log.info(
            "job %s completed in %.1fs (%d poll(s), %d output(s))",
            state.id,
            now - state.created_at,
            finished.polls,
            len(prediction.outputs),
        )
        return Finished(finished, ended_here=True)

    def _completion_effects(
        self, state: JobState, prediction: Prediction, now: float
    ) -> list[Effect]:
        observe = self.store.observation
        effects = [
            *observe("end_to_end_seconds", now - state.created_at, LATENCY_BUCKETS),
            *observe("polls_per_job", state.polls, POLL_COUNT_BUCKETS),
        ]
        if state.submitted_at is not None:
            waited = state.submitted_at - state.created_at
            ran = now - state.submitted_at
            effects += observe("queued_to_submitted_seconds", waited, LATENCY_BUCKETS)
            effects += observe("submitted_to_completed_seconds", ran, LATENCY_BUCKETS)
        if prediction.inference_ms is not None:
            effects.append(self.store.latency_sample(state.model, prediction.inference_ms / 1000))
        return effects

    def _resubmit_after_remote_failure(
        self, snap: JobSnapshot, prediction: Prediction, failure: TransientError, polled: _Tally
    ) -> Outcome:
        """WaveSpeed says the prediction failed on its side (5xxx): a new one is safe."""
        expect = {"prediction_id": prediction.id}
        if self._budget_spent(snap):
            return self._fail(snap, expect, failure.code, failure.message, tally=polled)
        delay = self._error_delay(snap, failure)
        tally = polled + self._error_tally(snap)
        reset = self.store.transition(
            snap.state.id,
            expect=expect,
            updates={
                "prediction_id": "",
                "submit_token": "",
                "poll_seq": 0,
                "next_run_at": self.clock() + delay,
            },
            increments=tally.increments,
            count=tally.count,
        )
        if not reset:
            return Duplicate(f"resubmit not applied ({reset.name.lower()})")
        self.limiter.release(snap.state.id)
        log.warning("job %s: %s; submitting again in %.1fs", snap.state.id, failure.message, delay)
        return Reschedule(delay, 0, "error")

    def _schedule(
        self,
        snap: JobSnapshot,
        my_seq: int,
        delay: float,
        reason: str,
        tally: _Tally = _NOTHING,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Claim the next poll number; of two copies, only one schedules."""
        due = self.clock() + delay
        claimed = self.store.transition(
            snap.state.id,
            expect={"poll_seq": str(my_seq), "prediction_id": snap.field("prediction_id")},
            updates={
                "poll_seq": my_seq + 1,
                "poll_due_at": due,
                "next_run_at": due,
                **(extra or {}),
            },
            increments=tally.increments,
            count=tally.count,
            defer_until=self._deferral(delay, due),
        )
        if not claimed:
            return Duplicate(f"poll {my_seq + 1} not scheduled ({claimed.name.lower()})")
        return self._next_poll(delay, due, my_seq + 1, reason)

    def _deferral(self, delay: float, due: float) -> float | None:
        """When a poll this far ahead waits in Redis instead of in a held message."""
        return due if delay > self.settings.longest_held_poll else None

    def _next_poll(self, delay: float, due: float, poll_seq: int, reason: str) -> Outcome:
        if self._deferral(delay, due) is not None:
            return Deferred(due, poll_seq)
        return Reschedule(delay, poll_seq, reason)

    # errors and endings -------------------------------------------------------

    def _budget_spent(self, snap: JobSnapshot) -> bool:
        return int(snap.number("error_retries")) >= self.settings.retry_budget

    def _error_tally(self, snap: JobSnapshot) -> _Tally:
        return _Tally(
            {"error_retries": 1}, [counter_field("error_retries", model=snap.state.model)]
        )

    def _error_delay(self, snap: JobSnapshot, exc: WaveSpeedError) -> float:
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        delay = error_backoff(
            int(snap.number("error_retries")),
            base=self.settings.retry_base_delay,
            cap=self.settings.retry_max_delay,
            retry_after=retry_after,
            rng=self.rng,
        )
        return round(min(delay, max(0.05, snap.state.deadline_at - self.clock())), 3)

    def _error_retry(
        self,
        snap: JobSnapshot,
        exc: WaveSpeedError,
        *,
        poll_seq: int,
        token: str | None = None,
        tally: _Tally = _NOTHING,
    ) -> Outcome:
        """Retry after an error, on the job's own budget. ``token``: the submit right this
        run holds, given back with the same write (the POST provably created nothing, or
        the policy allows a new one)."""
        if self._budget_spent(snap):
            message = f"gave up after {self.settings.retry_budget} error retries: {exc.message}"
            expect = {"prediction_id": snap.field("prediction_id")}
            if token is not None:
                expect["submit_token"] = token
            return self._fail(snap, expect, exc.code, message, tally=tally)
        delay = self._error_delay(snap, exc)
        used = int(snap.number("error_retries"))
        log.warning("job %s: %s; retry %d in %.1fs", snap.state.id, exc.message, used + 1, delay)
        tally = tally + self._error_tally(snap)
        if poll_seq:
            return self._schedule(snap, poll_seq, delay, "error", tally)
        return self._reschedule_submit(snap, delay, "error", tally, token=token)

    def _park(self, snap: JobSnapshot, now: float) -> Outcome:
        """The limiter parked the job (atomically with refusing it): no message until a
        slot frees. Its next run is due at the horizon, for the sweeper's re-send if no
        wake ever comes."""
        moved = self.store.transition(
            snap.state.id,
            expect={"prediction_id": "", "submit_token": ""},
            updates={"next_run_at": min(snap.state.deadline_at, now + PARK_HORIZON)},
            increments={"inflight_waits": 1},
            count=[counter_field("limiter_waits"), counter_field("parked")],
        )
        if not moved:
            return Duplicate(f"park not recorded ({moved.name.lower()})")
        return Parked()

    def unparked(self, count: int) -> list[JobSnapshot]:
        """Up to ``count`` parked jobs that still wait for a slot, taken from the parked
        set (longest parked first), for the caller to send again. A job waits for a slot
        when it is live with no prediction and no submit in progress, whatever its status
        (a 503 on submit leaves it ``submitting``, a remote failure before a new attempt
        ``processing``). Others are dropped, and more are taken in their place."""
        ready: list[JobSnapshot] = []
        for _ in range(_UNPARK_ROUNDS):
            taken = self.limiter.unpark(count - len(ready))
            for job_id in taken:
                snap = self._waiting_for_a_slot(job_id)
                if snap is None:
                    self.limiter.woke(job_id)
                else:
                    ready.append(snap)
            if len(ready) >= count or len(taken) == 0:
                break
        return ready

    def _waiting_for_a_slot(self, job_id: str) -> JobSnapshot | None:
        try:
            snap = self.store.snapshot(job_id)
        except (JobNotFoundError, UnreadableRecordError):
            return None
        waiting = not snap.state.is_terminal and not snap.field("prediction_id")
        return snap if waiting and not snap.field("submit_token") else None

    def _reschedule_submit(
        self,
        snap: JobSnapshot,
        delay: float,
        reason: str,
        tally: _Tally = _NOTHING,
        *,
        token: str | None = None,
    ) -> Outcome:
        """A retry before any prediction exists: the submit claim dedupes copies, so no
        sequence number is needed; record when the message is due (for the sweeper),
        giving back the submit right if this run held it."""
        delay = round(delay, 3)
        updates: dict[str, Any] = {"next_run_at": self.clock() + delay}
        if token is not None:
            updates["submit_token"] = ""
        moved = self.store.transition(
            snap.state.id,
            expect={"prediction_id": "", "submit_token": token or ""},
            updates=updates,
            increments=tally.increments,
            count=tally.count,
        )
        if not moved:
            return Duplicate(f"retry not scheduled ({moved.name.lower()})")
        return Reschedule(delay, 0, reason)

    def _fail(
        self,
        snap: JobSnapshot,
        expect: Mapping[str, str],
        code: int | str | None,
        message: str,
        status: JobStatus = JobStatus.FAILED,
        *,
        tally: _Tally = _NOTHING,
    ) -> Outcome:
        state = snap.state
        error = JobError(code=code if code is not None else "unknown", message=message)
        if status is JobStatus.TIMED_OUT:
            ending = counter_field("jobs_timed_out", model=state.model)
        else:
            ending = counter_field("jobs_failed", model=state.model, code=str(error.code))
        # Every ending by outcome in one counter: the denominator of failure ratios.
        ended = counter_field("jobs_ended", model=state.model, outcome=status.value)
        now = self.clock()
        done = self.store.transition(
            state.id,
            expect=expect,
            updates={"status": status.value, "error": error.model_dump(), "completed_at": now},
            increments=tally.increments,
            count=tally.count,
            count_if_applied=[ending, ended],
        )
        if not done:
            return Duplicate(f"{status.value} not applied ({done.name.lower()})")
        log.warning("job %s %s: [%s] %s", state.id, status.value, error.code, message)
        polls = state.polls + tally.increments.get("polls", 0)
        return Finished(
            state.model_copy(
                update={"status": status, "error": error, "completed_at": now, "polls": polls}
            ),
            ended_here=True,
        )

    def _time_out(self, snap: JobSnapshot) -> Outcome:
        if self.clock() < snap.state.deadline_at:
            return Duplicate("not past its deadline by Redis time")
        allowed = snap.state.deadline_at - snap.state.created_at
        message = f"not finished by its deadline ({allowed:.0f}s after it was enqueued)"
        if snap.field("prediction_id"):
            message += f"; prediction {snap.field('prediction_id')} may still complete on WaveSpeed"
        # Whatever the job is doing, unless its deadline was pushed (retry_chain) meanwhile.
        expect = {"deadline_at": snap.field("deadline_at")}
        return self._fail(snap, expect, DEADLINE_EXCEEDED, message, JobStatus.TIMED_OUT)

    def _poll_delay(self, state: JobState, now: float, submitted_at: float | None = None) -> float:
        submitted = submitted_at if submitted_at is not None else state.submitted_at or now
        return poll_delay(
            now - submitted,
            profile=self.latency.profile(state.model),
            first_poll_default=self.settings.first_poll_default,
            min_interval=self.settings.poll_min_interval,
            max_interval=self.settings.poll_max_interval,
            backoff=self.settings.poll_backoff,
            time_left=state.deadline_at - now,
        )
