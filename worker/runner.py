"""What one run of ``run_job`` does, decided against the job record.

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
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.constants import LATENCY_BUCKETS, POLL_COUNT_BUCKETS
from worker.errors import (
    PermanentError,
    SubmitOutcomeUnknownError,
    TransientError,
    WaveSpeedError,
)
from worker.models import JobRecord, JobStatus, can_move
from worker.ratelimit import AccountLimiter
from worker.schedule import error_backoff, poll_delay
from worker.settings import Settings
from worker.store import JobSnapshot, JobStore
from worker.wavespeed import Prediction, WaveSpeedClient, failure_of

log = logging.getLogger(__name__)

_LIVE = [s.value for s in JobStatus if not s.is_terminal]
SUBMIT_OUTCOME_UNKNOWN = "submit_outcome_unknown"
DEADLINE_EXCEEDED = "deadline_exceeded"


@dataclass(frozen=True)
class Finished:
    record: JobRecord

    @property
    def output(self) -> str | None:
        return self.record.outputs[0] if self.record.outputs else None


@dataclass(frozen=True)
class Reschedule:
    countdown: float
    poll_seq: int
    #: "poll" (not an error), "error" (uses the retry budget) or "rate_limit" (waits for a token).
    reason: str


@dataclass(frozen=True)
class Duplicate:
    reason: str


Outcome = Finished | Reschedule | Duplicate


class JobRunner:
    """Runs one step of a job: submit, poll or finish. Safe to call from many copies."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        limiter: AccountLimiter,
        client: WaveSpeedClient,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.limiter = limiter
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()
        #: How overdue a poll must be before an older copy concludes its message was lost.
        self.takeover_grace = (settings.visibility_timeout - settings.longest_countdown) / 2

    # entry --------------------------------------------------------------------

    def run(self, job_id: str, *, poll_seq: int = 0, previous_output: str | None = None) -> Outcome:
        snap = self.store.snapshot(job_id)
        if snap.record.is_terminal:
            return Finished(snap.record)
        now = self.clock()
        if now >= snap.record.deadline_at:
            return self._time_out(snap)
        if snap.field("awaiting_image") == "1":
            snap = self._take_previous_output(snap, previous_output)
            if snap.record.is_terminal:
                return Finished(snap.record)
        if snap.field("prediction_id"):
            return self._poll(snap, poll_seq, now)
        return self._submit(snap, now)

    def expire(self, job_id: str) -> Outcome | None:
        """Time the job out if its deadline passed and it is not terminal (the sweeper
        calls this for jobs whose message was lost). None when there was nothing to do."""
        snap = self.store.snapshot(job_id)
        if snap.record.is_terminal or self.clock() < snap.record.deadline_at:
            return None
        return self._time_out(snap)

    # submit -------------------------------------------------------------------

    def _take_previous_output(self, snap: JobSnapshot, image: str | None) -> JobSnapshot:
        """A chain step gets its input image from the step before, at run time."""
        job_id = snap.record.id
        if not image:
            self._fail(snap, {}, "missing_input", "chain step ran without the previous output")
        else:
            new_input = {**snap.record.input, "image": image}
            self.store.transition(
                job_id,
                expect={"awaiting_image": "1", "status": JobStatus.QUEUED.value},
                updates={"input": new_input, "awaiting_image": "0"},
            )
        return self.store.snapshot(job_id)

    def _submit(self, snap: JobSnapshot, now: float) -> Outcome:
        record = snap.record
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
        time_left = record.deadline_at - now
        permit = self.limiter.acquire(
            record.id,
            images=int(record.input.get("num_images", 1)),
            slot_ttl=time_left + self.settings.visibility_timeout,
        )
        if not permit.granted:
            self.store.count("limiter_waits")
            wait = min(permit.wait, self.settings.retry_max_delay, time_left)
            return self._reschedule_submit(
                record.id, wait + self.rng.uniform(0, 0.25), "rate_limit"
            )
        token = uuid.uuid4().hex
        new_status = JobStatus.SUBMITTING if can_move(record.status, JobStatus.SUBMITTING) else None
        claimed = self.store.transition(
            record.id,
            expect={"status": record.status.value, "prediction_id": "", "submit_token": ""},
            updates={
                "submit_token": token,
                "submit_lease_until": now + self.settings.task_time_limit,
                # If this run dies mid-POST and its message is lost, the sweeper finds it.
                "next_run_at": now + self.settings.task_time_limit,
                **({"status": new_status.value} if new_status else {}),
            },
            increments={"attempts": 1},
        )
        if not claimed:
            return Duplicate("another copy claimed the submit")
        # The claim changed only bookkeeping this run does not read again: no re-read.
        return self._send(snap, token)

    def _send(self, snap: JobSnapshot, token: str) -> Outcome:
        record = snap.record
        try:
            prediction = self.client.submit(record.model, record.input)
        except SubmitOutcomeUnknownError as exc:
            self.store.count("submit_outcome_unknown", model=record.model)
            return self._ambiguous(snap, token, exc)
        except TransientError as exc:
            # Provably not created (refused, 429, 503): give the token and slot back.
            self.store.transition(
                record.id, expect={"submit_token": token}, updates={"submit_token": ""}
            )
            self.limiter.release(record.id)
            if exc.code == 429:
                self.store.count("remote_rate_limited")
            return self._error_retry(snap, exc, poll_seq=0)
        except PermanentError as exc:
            return self._fail(snap, {"submit_token": token}, exc.code, exc.message)
        self.store.count("submissions", model=record.model)
        now = self.clock()
        delay = self._poll_delay(record, 0, now)
        moved = self.store.transition(
            record.id,
            expect={"submit_token": token, "prediction_id": ""},
            updates={
                "status": JobStatus.SUBMITTED.value,
                "prediction_id": prediction.id,
                "submitted_at": now,
                "submit_token": "",
                "poll_seq": 1,
                "poll_due_at": now + delay,
                "next_run_at": now + delay,
            },
        )
        if not moved:
            return self._after_lost_race(record.id)
        log.info("job %s submitted as prediction %s", record.id, prediction.id)
        return Reschedule(delay, 1, "poll")

    def _ambiguous(self, snap: JobSnapshot, token: str, exc: WaveSpeedError) -> Outcome:
        """The POST may have created a prediction we know nothing of."""
        if self.settings.ambiguous_submit_policy == "fail":
            message = f"{exc.message} (not re-sent: WAVEQUEUE_AMBIGUOUS_SUBMIT=fail)"
            return self._fail(snap, {"submit_token": token}, SUBMIT_OUTCOME_UNKNOWN, message)
        released = self.store.transition(
            snap.record.id, expect={"submit_token": token}, updates={"submit_token": ""}
        )
        if not released:
            return self._after_lost_race(snap.record.id)
        self.store.count("resubmissions", model=snap.record.model)
        return self._error_retry(snap, exc, poll_seq=0)

    # poll ---------------------------------------------------------------------

    def _poll(self, snap: JobSnapshot, my_seq: int, now: float) -> Outcome:
        record = snap.record
        current_seq = int(snap.number("poll_seq"))
        if my_seq != current_seq:
            overdue = now - snap.number("poll_due_at")
            if my_seq > current_seq or overdue < self.takeover_grace:
                return Duplicate(f"poll {my_seq} superseded by poll {current_seq}")
            log.warning(
                "job %s: poll %s is %.0fs overdue, taking over", record.id, current_seq, overdue
            )
            my_seq = current_seq
        prediction_id = snap.field("prediction_id")
        try:
            prediction = self.client.result(prediction_id)
        except TransientError as exc:
            return self._error_retry(snap, exc, poll_seq=my_seq)
        except PermanentError as exc:
            return self._fail(snap, {"prediction_id": prediction_id}, exc.code, exc.message)
        self.store.count("polls", job_id=record.id, model=record.model)
        return self._on_prediction(snap, my_seq, prediction, now)

    def _on_prediction(
        self, snap: JobSnapshot, my_seq: int, prediction: Prediction, now: float
    ) -> Outcome:
        record = snap.record
        if prediction.status.is_running:
            extra = {}
            if prediction.status.value == "processing" and can_move(
                record.status, JobStatus.PROCESSING
            ):
                extra["status"] = JobStatus.PROCESSING.value
            delay = self._poll_delay(record, record.polls + 1, now)
            return self._schedule(snap, my_seq, delay, "poll", extra)
        if prediction.status.value == "completed":
            return self._complete(snap, prediction)
        failure = failure_of(prediction)
        if isinstance(failure, TransientError):
            return self._resubmit_after_remote_failure(snap, prediction, failure)
        return self._fail(snap, {"prediction_id": prediction.id}, failure.code, failure.message)

    def _complete(self, snap: JobSnapshot, prediction: Prediction) -> Outcome:
        now = self.clock()
        updates: dict[str, Any] = {
            "status": JobStatus.COMPLETED.value,
            "outputs": prediction.outputs,
            "has_nsfw_contents": prediction.has_nsfw_contents,
            "inference_ms": prediction.inference_ms,
            "completed_at": now,
        }
        done = self.store.transition(
            snap.record.id,
            expect={"prediction_id": prediction.id, "status": _LIVE},
            updates=updates,
        )
        if not done:
            return Duplicate("another copy completed this job")
        record = self.store.get(snap.record.id)
        self._observe_completion(record, now)
        if prediction.inference_ms is not None:
            self.store.record_latency(record.model, prediction.inference_ms / 1000)
        log.info("job %s completed with %d output(s)", record.id, len(prediction.outputs))
        return Finished(record)

    def _observe_completion(self, record: JobRecord, now: float) -> None:
        self.store.count("jobs_completed", model=record.model)
        observations: dict[str, tuple[float, tuple[float, ...]]] = {
            "end_to_end_seconds": (now - record.created_at, LATENCY_BUCKETS),
            "polls_per_job": (record.polls, POLL_COUNT_BUCKETS),
        }
        if record.submitted_at is not None:
            waited = record.submitted_at - record.created_at
            observations["queued_to_submitted_seconds"] = (waited, LATENCY_BUCKETS)
            ran = now - record.submitted_at
            observations["submitted_to_completed_seconds"] = (ran, LATENCY_BUCKETS)
        self.store.observe_many(observations)

    def _resubmit_after_remote_failure(
        self, snap: JobSnapshot, prediction: Prediction, failure: TransientError
    ) -> Outcome:
        """WaveSpeed says the prediction failed on its side (5xxx): a new one is safe."""
        if self._budget_spent(snap):
            return self._fail(snap, {"prediction_id": prediction.id}, failure.code, failure.message)
        reset = self.store.transition(
            snap.record.id,
            expect={"prediction_id": prediction.id},
            updates={"prediction_id": "", "submit_token": "", "poll_seq": 0},
        )
        if not reset:
            return self._after_lost_race(snap.record.id)
        self.limiter.release(snap.record.id)
        return self._error_retry(snap, failure, poll_seq=0)

    def _schedule(
        self,
        snap: JobSnapshot,
        my_seq: int,
        delay: float,
        reason: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Claim the next poll number; of two copies, only one schedules."""
        due = self.clock() + delay
        claimed = self.store.transition(
            snap.record.id,
            expect={"poll_seq": str(my_seq), "prediction_id": snap.field("prediction_id")},
            updates={
                "poll_seq": my_seq + 1,
                "poll_due_at": due,
                "next_run_at": due,
                **(extra or {}),
            },
        )
        if not claimed:
            return Duplicate(f"another copy scheduled poll {my_seq + 1}")
        return Reschedule(delay, my_seq + 1, reason)

    # errors and endings -------------------------------------------------------

    def _budget_spent(self, snap: JobSnapshot) -> bool:
        return int(snap.number("error_retries")) >= self.settings.retry_budget

    def _error_retry(self, snap: JobSnapshot, exc: WaveSpeedError, *, poll_seq: int) -> Outcome:
        if self._budget_spent(snap):
            message = f"gave up after {self.settings.retry_budget} error retries: {exc.message}"
            expect = {"prediction_id": snap.field("prediction_id")}
            return self._fail(snap, expect, exc.code, message)
        used = int(snap.number("error_retries"))
        self.store.count("error_retries", job_id=snap.record.id, model=snap.record.model)
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        delay = error_backoff(
            used,
            base=self.settings.retry_base_delay,
            cap=self.settings.retry_max_delay,
            retry_after=retry_after,
            rng=self.rng,
        )
        delay = round(min(delay, max(0.05, snap.record.deadline_at - self.clock())), 3)
        log.warning("job %s: %s; retry %d in %.1fs", snap.record.id, exc.message, used + 1, delay)
        if poll_seq:
            return self._schedule(snap, poll_seq, delay, "error")
        return self._reschedule_submit(snap.record.id, delay, "error")

    def _reschedule_submit(self, job_id: str, delay: float, reason: str) -> Reschedule:
        """A retry before any prediction exists: the submit claim dedupes copies, so no
        sequence number is needed; only tell the sweeper when the message is due."""
        delay = round(delay, 3)
        self.store.mark_due(job_id, self.clock() + delay)
        return Reschedule(delay, 0, reason)

    def _fail(
        self,
        snap: JobSnapshot,
        expect: Mapping[str, str],
        code: int | str | None,
        message: str,
        status: JobStatus = JobStatus.FAILED,
    ) -> Outcome:
        error = {"code": code if code is not None else "unknown", "message": message}
        done = self.store.transition(
            snap.record.id,
            expect={**expect, "status": _LIVE},
            updates={"status": status.value, "error": error, "completed_at": self.clock()},
        )
        if not done:
            return self._after_lost_race(snap.record.id)
        if status is JobStatus.TIMED_OUT:
            self.store.count("jobs_timed_out", model=snap.record.model)
        else:
            self.store.count("jobs_failed", model=snap.record.model, code=str(error["code"]))
        log.warning("job %s %s: [%s] %s", snap.record.id, status.value, error["code"], message)
        return Finished(self.store.get(snap.record.id))

    def _time_out(self, snap: JobSnapshot) -> Outcome:
        allowed = snap.record.deadline_at - snap.record.created_at
        message = f"not finished by its deadline ({allowed:.0f}s after it was enqueued)"
        if snap.field("prediction_id"):
            message += f"; prediction {snap.field('prediction_id')} may still complete on WaveSpeed"
        expect = {"status": snap.record.status.value}
        return self._fail(snap, expect, DEADLINE_EXCEEDED, message, JobStatus.TIMED_OUT)

    def _after_lost_race(self, job_id: str) -> Outcome:
        """Another copy changed the record first: report what it decided, or step aside."""
        record = self.store.get(job_id)
        return Duplicate(f"record moved to {record.status.value} by another copy")

    def _poll_delay(self, record: JobRecord, poll_number: int, now: float) -> float:
        # Only the first poll depends on the model's history: read it only then.
        expected = self.store.expected_latency(record.model) if poll_number == 0 else None
        return poll_delay(
            poll_number,
            expected_latency=expected if expected is not None else self.settings.first_poll_default,
            min_interval=self.settings.poll_min_interval,
            max_interval=self.settings.poll_max_interval,
            backoff=self.settings.poll_backoff,
            time_left=record.deadline_at - now,
        )
