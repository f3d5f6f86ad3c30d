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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from worker.admission import Send, admit_waiting, send_admitted
from worker.budgets import BUDGET_EXCEEDED, Budgets
from worker.clock import Clock
from worker.constants import PREDICTION_OWNER_KEY
from worker.errors import (
    BrokerUnavailableError,
    PermanentError,
    RateLimitedError,
    SubmitOutcomeUnknownError,
    TransientError,
    WaveSpeedError,
)
from worker.fairness import line_member
from worker.inline_images import INLINE_FIELD, decode_data_uri, marker_ids, with_images
from worker.keep_outputs import CopyError, OutputKeeper
from worker.latency import LatencyProfiles
from worker.models import JobState, JobStatus, OnBudget, image_reference_problems, price_of
from worker.ratelimit import AccountLimiter, Admission
from worker.schedule import error_backoff, poll_delay
from worker.settings import Settings
from worker.settle import (
    ENDED_BY_WEBHOOK,
    NOTHING,
    Duplicate,
    Finished,
    Persisting,
    Settler,
    Tally,
)
from worker.store import (
    NOT_BILLED,
    Budget,
    Claim,
    JobSnapshot,
    JobStore,
    Moved,
    counter_field,
    new_write_id,
)
from worker.wavespeed import Prediction, failure_of
from worker.webhooks.urls import callback_url

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
#: A request the worker refuses to send on (the URL rule, an unreadable inline image).
INVALID_INPUT = "invalid_input"
#: An inline image's key expired before the worker uploaded it.
INLINE_IMAGE_MISSING = "inline_image_missing"


class PredictionAPI(Protocol):
    """What the runner needs of WaveSpeed (``worker.wavespeed.WaveSpeedClient``)."""

    def submit(
        self, model: str, body: Mapping[str, Any], *, webhook: str | None = None
    ) -> Prediction: ...

    def result(self, prediction_id: str) -> Prediction: ...

    def upload(self, data: bytes, content_type: str, filename: str) -> str: ...


@dataclass(frozen=True)
class Reschedule:
    countdown: float
    poll_seq: int
    #: "poll" (not an error), "error" (uses the retry budget), "rate_limit" (waits for a
    #: token) or "orphan_wait" (waits for a webhook to prove an unknown submit's prediction).
    reason: str
    #: The job's model, for the next message's label (``worker.messages.run_label``).
    model: str = ""


@dataclass(frozen=True)
class Deferred:
    """The next poll is due further ahead than a countdown message is held
    (``Settings.longest_held_poll``): no message now. The job waits in ``DUE_POLLS_KEY``
    and a worker's dispatcher (``worker.due_polls``) sends its message when it is due."""

    due_at: float
    poll_seq: int


@dataclass(frozen=True)
class Parked:
    """No submission slot now: the job waits in the fair line (``worker.fairness``) with no
    message, until the limiter gives it a slot and whoever made that call sends it again.
    A line of thousands costs nothing while it waits. Or held for a daily budget
    (``reason="budget"``): it waits in ``HELD_KEY`` the same way, until room appears
    (``worker.budgets.wake_held``)."""

    reason: str = "in_flight"


Outcome = Finished | Reschedule | Deferred | Duplicate | Parked

#: A job in the line is sent again by the sweeper's usual re-send after this long at most,
#: if no slot reached it (its line entry lost with a failover, say): it finds itself still
#: in line and parks again.
PARK_HORIZON = 600.0


_Tally = Tally
_NOTHING = NOTHING

__all__ = [
    "Deferred",
    "Duplicate",
    "Finished",
    "JobRunner",
    "Outcome",
    "Parked",
    "PredictionAPI",
    "Reschedule",
]


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
        keeper: OutputKeeper | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.limiter = limiter
        self.client = client
        self.clock: Clock = clock or store.clock
        self.rng = rng or random.Random()
        #: Each model's recent latency, read from Redis at most every half minute.
        self.latency = LatencyProfiles(store, clock=self.clock)
        #: Copies the outputs of jobs that keep them (``worker.keep_outputs``).
        self.keeper = keeper or OutputKeeper(settings)
        #: Applies a prediction's end to its job: the same code the webhook receiver runs.
        self.settler = Settler(
            store,
            clock=self.clock,
            keeps=self.keeper.wants,
            persist_retry_for=settings.persist_retry_for,
        )
        #: The daily budgets the submit claim checks (``worker.budgets``).
        self.budgets = Budgets(store.client, settings, clock=self.clock)
        #: With webhooks on: the key that MACs each job's callback URL.
        self.webhook_url_key = (
            settings.require_webhook_url_key() if settings.webhooks_enabled else None
        )
        #: How overdue a poll must be before an older copy concludes its message was lost.
        self.takeover_grace = (settings.visibility_timeout - settings.longest_countdown) / 2
        #: Sends the message of a job given a submission slot (the Celery task sets it).
        self.send: Send | None = None

    # entry --------------------------------------------------------------------

    def run(  # noqa: PLR0911 - one return per kind of run
        self, job_id: str, *, poll_seq: int = 0, previous_output: str | None = None
    ) -> Outcome:
        snap = self.store.snapshot(job_id)
        if snap.state.is_terminal:
            return self._ended(snap)
        if snap.state.status is JobStatus.PERSISTING:
            # Completed at WaveSpeed: only its outputs' copy is left (no deadline applies).
            return self._persist(snap)
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
        return self._upload_then_submit(snap, now)

    @staticmethod
    def _ended(snap: JobSnapshot) -> Outcome:
        """A message for a job that has ended: its result, so that a chain whose next
        message was lost carries on; unless its webhook ended it, when the receiver sent
        the chain on and this message (the safety-net poll, carrying the chain too) must
        not send it again."""
        if snap.field("ended_by") == ENDED_BY_WEBHOOK:
            return Duplicate("ended by its webhook; the chain went on from there")
        return Finished(snap.state)

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
            return self._then_persist(
                self.settler.complete(snap, prediction, path="poll", tally=polled)
            )
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

    def _upload_then_submit(self, snap: JobSnapshot, now: float) -> Outcome:
        if snap.field(INLINE_FIELD) == "1":
            uploaded = self._upload_inline_images(snap)
            if not isinstance(uploaded, JobSnapshot):
                return uploaded
            snap = uploaded
        return self._submit(snap, now)

    def _upload_inline_images(self, snap: JobSnapshot) -> Outcome | JobSnapshot:
        """Upload the request's inline images to WaveSpeed, write their URLs into the
        request in place of the markers, and forget the bytes (``worker.inline_images``).
        An upload is safe to repeat: failures are error retries on the job's budget."""
        job_id = snap.state.id
        no_submit_yet = {"prediction_id": "", "submit_token": ""}
        request = self.store.request(job_id)
        image_ids = marker_ids(request.input)
        stored = self.store.inline_images(image_ids)
        missing = [image_id for image_id in image_ids if image_id not in stored]
        if missing:
            return self._fail(
                snap,
                no_submit_yet,
                INLINE_IMAGE_MISSING,
                f"{len(missing)} inline image(s) of this job are no longer stored (expired)",
            )
        urls: dict[str, str] = {}
        for image_id in image_ids:
            try:
                data, mime = decode_data_uri(stored[image_id])
            except ValueError as exc:
                return self._fail(snap, no_submit_yet, INVALID_INPUT, f"inline image: {exc}")
            extension = mime.rpartition("/")[2] or "png"
            try:
                urls[image_id] = self.client.upload(data, mime, f"{image_id}.{extension}")
            except TransientError as exc:
                return self._error_retry(snap, exc, poll_seq=0)
            except PermanentError as exc:
                message = f"uploading an inline image: {exc.message}"
                return self._fail(snap, no_submit_yet, exc.code, message)
        moved = self.store.transition(
            job_id,
            expect={INLINE_FIELD: "1", **no_submit_yet},
            updates={INLINE_FIELD: ""},
            request=request.with_input(with_images(request.input, urls)),
            count=[counter_field("inline_uploads", model=snap.state.model)] * len(urls),
        )
        if not moved:
            return Duplicate(f"uploaded images not recorded ({moved.name.lower()})")
        self.store.drop_inline_images(image_ids)
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
        cost = price_of(state.model, state.images)
        if self.budgets.may_bind():
            # Asked before the limiter: a job the budgets would refuse must not take a
            # slot of the rate schedule (thousands of them would delay everyone else).
            checked = self.store.transition(
                state.id,
                expect={"prediction_id": "", "submit_token": ""},
                budget=self._budget(snap, cost, "check", now),
            )
            if checked is not Moved.WITHIN_BUDGET:
                return self._refused_by_budget(snap, checked, cost)
        permit = self.limiter.acquire(
            state.id,
            images=state.images,
            slot_ttl=time_left + self.settings.visibility_timeout,
            deadline=state.deadline_at,
            member=line_member(
                state.id,
                tenant=state.tenant,
                priority=state.priority,
                order=state.created_at,
                images=state.images,
                deadline=state.deadline_at,
            ),
        )
        self.send_admitted(permit.admitted)
        if not permit.granted:
            if permit.in_line:
                return self._park(snap, now)
            tally = _Tally({}, [counter_field("limiter_waits")])
            # The limiter says when this job's slot on the schedule comes.
            wait = permit.wait + self.rng.uniform(0, 0.25)
            wait = min(wait, self.settings.retry_max_delay, time_left)
            return self._reschedule_submit(snap, wait, "rate_limit", tally)
        return self._claim_and_send(snap, now, cost)

    def _budget(self, snap: JobSnapshot, cost: int, mode: str, now: float) -> Budget:
        hold_until = min(snap.state.deadline_at, now + PARK_HORIZON)
        return self.budgets.budget(snap.state.tenant, cost, mode=mode, hold_until=hold_until)

    def _refused_by_budget(self, snap: JobSnapshot, verdict: Moved, cost: int) -> Outcome:
        """A budget check or claim that did not go through: held (the store parked the
        job, with no message), to fail now (the job asked), or moved on meanwhile."""
        state = snap.state
        if verdict is Moved.HELD:
            self.store.count("jobs_held", reason="budget", tenant=state.tenant)
            if state.held is None:  # once per hold, not at every wake that finds no room
                why = self.budgets.status(state.tenant).describe(cost)
                log.info("job %s held: %s", state.id, why)
            return Parked(reason="budget")
        if verdict is Moved.OVER_BUDGET:
            why = self.budgets.status(state.tenant).describe(cost)
            message = f"{why} (on_budget={OnBudget.FAIL.value}: not waiting)"
            expect = {"prediction_id": "", "submit_token": ""}
            return self._fail(snap, expect, BUDGET_EXCEEDED, message, billing=NOT_BILLED)
        return Duplicate(f"budget check not applied ({verdict.name.lower()})")

    def _claim_and_send(self, snap: JobSnapshot, now: float, cost: int) -> Outcome:
        """With a permit: take the right to POST (compare-and-set), check the request
        once more, and send it."""
        state = snap.state
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
            # Never submit past the deadline, however long the limiter or the queue took.
            live_at=self.clock(),
            # The job's estimate is reserved against the daily budgets, or it is held.
            budget=self._budget(snap, cost, "reserve", now),
        )
        if claimed in (Moved.HELD, Moved.OVER_BUDGET):
            self.limiter.release(state.id)  # the slot just taken is nobody's
            return self._refused_by_budget(snap, claimed, cost)
        if not claimed or request is None:
            return self._not_claimed(state.id, claimed)
        # The URL rule again, with this worker's setting, before anything is sent on.
        problems = image_reference_problems(
            request.input, allow_private_image_urls=self.settings.allow_private_image_urls
        )
        if problems:
            self.limiter.release(state.id)
            reasons = "; ".join(f"{field}: {why}" for field, why in problems.items())
            message = f"refused before submitting: {reasons}"
            return self._fail(
                snap, {"submit_token": token}, INVALID_INPUT, message, billing=NOT_BILLED
            )
        # The claim changed only bookkeeping this run does not read again: no re-read.
        return self._send(snap, token, request.input)

    def _not_claimed(self, job_id: str, claimed: Moved) -> Outcome:
        if claimed in (Moved.FINISHED, Moved.PAST_DEADLINE):
            # Ended meanwhile (cancelled, timed out), or must end now: the slot just taken
            # is nobody's.
            self.limiter.release(job_id)
        if claimed is Moved.PAST_DEADLINE:
            return self._time_out(self.store.snapshot(job_id))
        return Duplicate(f"submit not claimed ({claimed.name.lower()})")

    def _send(self, snap: JobSnapshot, token: str, body: Mapping[str, Any]) -> Outcome:
        state = snap.state
        # Everything the write after the POST needs is read before it: once a prediction
        # exists, only that write may touch Redis.
        if self.webhook_url_key is not None:
            delay = self._webhook_wait(state, self.clock())
        else:
            delay = self._poll_delay(state, self.clock(), submitted_at=self.clock())
        webhook = self._callback_url(state.id)
        lease_ends = time.monotonic() + self.settings.submit_lease - LEASE_MARGIN
        try:
            prediction = self.client.submit(state.model, body, webhook=webhook)
        except SubmitOutcomeUnknownError as exc:
            self.store.count("submit_outcome_unknown", model=state.model)
            return self._ambiguous(snap, token, exc)
        except RateLimitedError as exc:
            self.limiter.release(state.id)
            return self._remote_rate_limited(snap, token, exc)
        except TransientError as exc:
            # Provably not created (refused, 503): give the token and slot back.
            self.limiter.release(state.id)
            return self._error_retry(snap, exc, poll_seq=0, token=token, billing=NOT_BILLED)
        except PermanentError as exc:
            # Refused (4xx): nothing was created, nothing is billed.
            expect = {"submit_token": token}
            return self._fail(snap, expect, exc.code, exc.message, billing=NOT_BILLED)
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
                "next_run_at": due,
            },
            count=[counter_field("submissions", model=state.model)],
            defer_until=self._deferral(delay, due),
            claim=self._ownership(state, prediction.id, now),
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
        return self._next_poll(delay, due, 1, "poll", snap.state.model)

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
        write_id = new_write_id()
        while True:
            try:
                return self.store.transition(job_id, write_id=write_id, **change)
            except redis.RedisError as exc:
                if not _store_unavailable(exc) or time.monotonic() >= give_up_at:
                    raise
                log.warning("job %s: cannot record its prediction yet (%s); retrying", job_id, exc)
                time.sleep(1.0)

    def _ambiguous(self, snap: JobSnapshot, token: str, exc: WaveSpeedError) -> Outcome:
        """The POST may have created a prediction we know nothing of. With webhooks on,
        the job first waits for a webhook to prove it (the receiver adopts the prediction);
        the configured policy applies only if none came."""
        if self.webhook_url_key is not None and not snap.field("outcome_unknown_at"):
            return self._await_orphan_webhook(snap, token)
        if self.settings.ambiguous_submit_policy == "fail":
            message = f"{exc.message} (not re-sent: WAVEQUEUE_AMBIGUOUS_SUBMIT=fail)"
            if snap.field("outcome_unknown_at"):
                message += "; no webhook proved the prediction while the job waited"
            return self._fail(snap, {"submit_token": token}, SUBMIT_OUTCOME_UNKNOWN, message)
        tally = _Tally({}, [counter_field("resubmissions", model=snap.state.model)])
        return self._error_retry(snap, exc, poll_seq=0, token=token, tally=tally)

    def _await_orphan_webhook(self, snap: JobSnapshot, token: str) -> Outcome:
        """Keep the submit right (no copy may POST) and wait ``_orphan_window`` for the
        prediction's webhook: the receiver adopts the prediction only from a job marked
        ``outcome_unknown_at`` that holds this token. This job's next run comes at the
        window's end (a deferred poll when the window is long); if the job is still
        unproven then, the policy applies."""
        now = self.clock()
        window = self._orphan_window(snap.state, now)
        due = now + window
        moved = self.store.transition(
            snap.state.id,
            expect={"submit_token": token, "prediction_id": ""},
            updates={
                "outcome_unknown_at": now,
                "submit_lease_until": due,
                "next_run_at": due,
            },
            defer_until=self._deferral(window, due),
        )
        if not moved:
            return Duplicate(f"orphan wait not recorded ({moved.name.lower()})")
        log.warning(
            "job %s: submit outcome unknown; waiting %.0fs for its webhook before "
            "WAVEQUEUE_AMBIGUOUS_SUBMIT=%s applies",
            snap.state.id,
            window,
            self.settings.ambiguous_submit_policy,
        )
        return self._next_poll(window, due, 0, "orphan_wait", snap.state.model)

    # poll ---------------------------------------------------------------------

    def _poll(self, snap: JobSnapshot, my_seq: int, now: float) -> Outcome:
        state = snap.state
        current_seq = int(snap.number("poll_seq"))
        if my_seq != current_seq:
            # next_run_at is when the current poll was due: only a poll claim moves it
            # while a prediction is being polled.
            overdue = now - snap.number("next_run_at")
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
        settled = self.settler.settle(snap, prediction, path="poll", tally=polled)
        if settled is not None:
            return self._then_persist(settled)
        failure = failure_of(prediction)
        assert isinstance(failure, TransientError)  # settle() ends every other failure
        return self._resubmit_after_remote_failure(snap, prediction, failure, polled)

    def _resubmit_after_remote_failure(
        self, snap: JobSnapshot, prediction: Prediction, failure: TransientError, polled: _Tally
    ) -> Outcome:
        """WaveSpeed says the prediction failed on its side (5xxx): a new one is safe."""
        expect = {"prediction_id": prediction.id}
        if self._budget_spent(snap):
            return self._fail(
                snap, expect, failure.code, failure.message, tally=polled, billing=NOT_BILLED
            )
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
        return Reschedule(delay, 0, "error", snap.state.model)

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
                "next_run_at": due,
                **(extra or {}),
            },
            increments=tally.increments,
            count=tally.count,
            defer_until=self._deferral(delay, due),
        )
        if not claimed:
            return Duplicate(f"poll {my_seq + 1} not scheduled ({claimed.name.lower()})")
        return self._next_poll(delay, due, my_seq + 1, reason, snap.state.model)

    def _deferral(self, delay: float, due: float) -> float | None:
        """When a poll this far ahead waits in Redis instead of in a held message."""
        return due if delay > self.settings.longest_held_poll else None

    def _next_poll(
        self, delay: float, due: float, poll_seq: int, reason: str, model: str
    ) -> Outcome:
        if self._deferral(delay, due) is not None:
            return Deferred(due, poll_seq)
        return Reschedule(delay, poll_seq, reason, model)

    # keeping outputs ----------------------------------------------------------

    def _then_persist(self, settled: Finished | Persisting | Duplicate) -> Outcome:
        """A job that keeps its outputs copies them in the same run that saw it complete."""
        if isinstance(settled, Persisting):
            return self._persist(self.store.snapshot(settled.state.id))
        return settled

    def _persist(self, snap: JobSnapshot) -> Outcome:
        """Copy the outputs of a ``persisting`` job, then complete it; a copy that fails is
        tried again on its own schedule (never a new submit), and given up on after
        ``persist_retry_for`` (the job then completes with WaveSpeed's URLs only)."""
        state = snap.state
        try:
            stored = self.keeper.copy(state.id, state.outputs)
        except CopyError as exc:
            return self._persist_failed(snap, str(exc))
        return self.settler.complete_kept(snap, stored)

    def _persist_failed(self, snap: JobSnapshot, why: str) -> Outcome:
        state = snap.state
        now = self.clock()
        attempts = state.persist_attempts
        if now >= snap.number("persist_give_up_at"):
            log.error("job %s: gave up keeping its outputs: %s", state.id, why)
            message = (
                f"outputs not kept after {attempts + 1} attempt(s), the last: {why}; "
                "they stay at WaveSpeed's URLs until WaveSpeed deletes them (7 days)"
            )
            return self.settler.complete_kept(snap, [], given_up=message)
        # Doubling from the base, half to all of it (never "at once": storage that failed
        # a moment ago rarely works a moment later).
        ceiling = min(
            self.settings.persist_retry_max_delay,
            self.settings.persist_retry_base_delay * 2**attempts,
        )
        delay = ceiling * self.rng.uniform(0.5, 1.0)
        delay = round(max(0.05, min(delay, snap.number("persist_give_up_at") - now)), 3)
        due = now + delay
        moved = self.store.transition(
            state.id,
            # Of two copies of the message, one schedules the next attempt.
            expect={
                "status": JobStatus.PERSISTING.value,
                # A count of 0 is not stored (the record keeps only what is set).
                "persist_attempts": ["", "0"] if attempts == 0 else str(attempts),
            },
            updates={
                "persist_error": {"code": "persist_failed", "message": why},
                "next_run_at": due,
            },
            increments={"persist_attempts": 1},
            count=[counter_field("persist_failures", model=state.model)],
            defer_until=self._deferral(delay, due),
        )
        if not moved:
            return Duplicate(f"next copy not scheduled ({moved.name.lower()})")
        log.warning("job %s: outputs not kept yet (%s); next try in %.0fs", state.id, why, delay)
        return self._next_poll(delay, due, int(snap.number("poll_seq")), "persist", state.model)

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
        billing: str = "",
    ) -> Outcome:
        """Retry after an error, on the job's own budget. ``token``: the submit right this
        run holds, given back with the same write (the POST provably created nothing, or
        the policy allows a new one). ``billing``: what giving up would mean for the bill
        (``NOT_BILLED`` when the POST provably created nothing; by default the store
        judges from the record)."""
        if self._budget_spent(snap):
            message = f"gave up after {self.settings.retry_budget} error retries: {exc.message}"
            expect = {"prediction_id": snap.field("prediction_id")}
            if token is not None:
                expect["submit_token"] = token
            return self._fail(snap, expect, exc.code, message, tally=tally, billing=billing)
        delay = self._error_delay(snap, exc)
        used = int(snap.number("error_retries"))
        log.warning("job %s: %s; retry %d in %.1fs", snap.state.id, exc.message, used + 1, delay)
        tally = tally + self._error_tally(snap)
        if poll_seq:
            return self._schedule(snap, poll_seq, delay, "error", tally)
        return self._reschedule_submit(snap, delay, "error", tally, token=token)

    def _park(self, snap: JobSnapshot, now: float) -> Outcome:
        """The limiter put the job in the line (atomically with refusing it): no message
        until it is given a slot. Its next run is due at the horizon, for the sweeper's
        re-send if no slot ever reaches it."""
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

    def send_admitted(self, admitted: tuple[Admission, ...]) -> int:
        """Send the jobs of the line that a limiter call gave slots to (``worker.admission``)."""
        if not admitted or self.send is None:
            return 0
        return send_admitted(
            self.store, admitted, self.send, longest_countdown=self.settings.longest_countdown
        )

    def admit_waiting(self) -> int:
        """Give the free submission slots to jobs in the line and send them: after an ending
        freed an in-flight slot, and on every sweeper pass. Never fails its caller."""
        if self.send is None:
            return 0
        return admit_waiting(
            self.store, self.limiter, self.send, longest_countdown=self.settings.longest_countdown
        )

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
            # The right to POST goes back; an unknown outcome's wait for a webhook is over.
            updates["submit_token"] = ""
            updates["outcome_unknown_at"] = ""
        moved = self.store.transition(
            snap.state.id,
            expect={"prediction_id": "", "submit_token": token or ""},
            updates=updates,
            increments=tally.increments,
            count=tally.count,
        )
        if not moved:
            return Duplicate(f"retry not scheduled ({moved.name.lower()})")
        return Reschedule(delay, 0, reason, snap.state.model)

    def _fail(
        self,
        snap: JobSnapshot,
        expect: Mapping[str, str],
        code: int | str | None,
        message: str,
        status: JobStatus = JobStatus.FAILED,
        *,
        tally: _Tally = _NOTHING,
        billing: str = "",
    ) -> Outcome:
        return self.settler.end(snap, expect, code, message, status, tally=tally, billing=billing)

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

    # webhooks -----------------------------------------------------------------

    def _callback_url(self, job_id: str) -> str | None:
        if self.webhook_url_key is None or self.settings.webhook_url is None:
            return None
        return callback_url(self.settings.webhook_url, self.webhook_url_key, job_id)

    def _webhook_wait(self, state: JobState, now: float) -> float:
        """With webhooks on: how long after a submit the first poll comes, the safety net
        for a lost webhook. ``webhook_poll_factor`` times the model's typical latency (the
        first target of its poll schedule, or the first-poll default with no history), at
        most ``webhook_poll_max`` and never past the deadline."""
        profile = self.latency.profile(state.model)
        typical = profile.targets[0] if profile is not None else self.settings.first_poll_default
        wait = self.settings.webhook_poll_factor * typical
        wait = max(wait, self.settings.poll_min_interval)
        wait = min(wait, self.settings.webhook_poll_max, state.deadline_at - now)
        return round(max(0.05, wait), 3)

    def _orphan_window(self, state: JobState, now: float) -> float:
        """How long a job whose submit outcome is unknown waits for a webhook."""
        window = self.settings.webhook_orphan_window
        if window is None:
            return self._webhook_wait(state, now)
        return round(max(0.05, min(window, state.deadline_at - now)), 3)

    def _ownership(self, state: JobState, prediction_id: str, now: float) -> Claim | None:
        """With webhooks on, the submit's write records which job owns the prediction, so
        a callback replayed to another job's URL can never hand it to that job."""
        if self.webhook_url_key is None:
            return None
        ttl = int(max(0.0, state.deadline_at - now)) + self.store.record_ttl
        return Claim(PREDICTION_OWNER_KEY.format(prediction_id=prediction_id), state.id, ttl)
