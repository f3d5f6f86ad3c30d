"""What one WaveSpeed callback does to its job. No HTTP here: ``server`` calls ``receive``.

In order, and nothing is written before the first three pass:

1. the URL's MAC must be the job id's (``urls``): else 401;
2. the v3 signature and timestamp must verify (``signature``): else 401;
3. the body must be a prediction object: else 400;
4. the ``webhook-id`` is taken, globally, for ``WEBHOOK_SEEN_TTL``: one taken already
   is a replay or a duplicate delivery, answered 200 and applied no further;
5. the prediction is applied through ``worker.settle`` — the code a poll runs — by
   compare-and-set on the job record: a job that ended (by its poll, say) stays as it
   is, and a prediction that is not the job's changes nothing. A job whose submit
   outcome is unknown (``outcome_unknown_at``, no prediction id, its submit token
   still held) first *adopts* the prediction, unless another job owns that prediction
   id (``PREDICTION_OWNER_KEY``); a prediction that is still running, or failed in a
   way worth a new one (5xxx), is left to the job's poll, which holds its message.

A job this callback ended gets what its own run would have sent: the rest of its
chain (``chains.continue_chain``) and a wake for a job parked behind the in-flight
cap. Its pending poll message then finds ``ended_by=webhook`` and steps aside.

A callback that arrives while its job's submit POST is still in flight (the
prediction finished before the worker stored its id) is answered 503 and its
``webhook-id`` given back, so WaveSpeed's retry can apply it; if no retry comes, the
poll completes the job. A Redis error is a 503 too (the id given back if possible).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from worker.admission import admit_waiting
from worker.chains import continue_chain, send_job_and_rest
from worker.clock import Clock
from worker.constants import PREDICTION_OWNER_KEY, WEBHOOK_SEEN_KEY, WEBHOOK_SEEN_TTL
from worker.errors import JobNotFoundError, PermanentError, UnreadableRecordError
from worker.models import JobState, JobStatus
from worker.ratelimit import AccountLimiter
from worker.settle import Finished, Persisting, Settler
from worker.store import Claim, JobSnapshot, JobStore, Moved, counter_field
from worker.wavespeed import MAX_ERROR_TEXT, Prediction, parse_prediction, redact
from worker.webhooks.signature import SignatureError, Verifier
from worker.webhooks.urls import mac_matches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """The HTTP answer: status and a short word for the body and the log."""

    status: int
    outcome: str


class Sender:
    """Sends run_job messages (a Celery app's ``send_job_chain``), for chains and wakes."""

    def __init__(self, app: Any, store: JobStore) -> None:
        self.app = app
        self.store = store

    def continue_chain(self, finished: Finished) -> bool:
        return continue_chain(self.app, self.store, finished.state)

    def resend(self, snap: JobSnapshot) -> None:
        send_job_and_rest(self.app, self.store, snap.state, {})

    def admit(self, state: JobState, countdown: float) -> None:
        """A job of the fair line given a submission slot: its message, due at the slot."""
        send_job_and_rest(self.app, self.store, state, {}, countdown=countdown)


class WebhookReceiver:
    def __init__(
        self,
        *,
        store: JobStore,
        limiter: AccountLimiter,
        verifier: Verifier,
        url_key: bytes,
        sender: Sender,
        clock: Clock | None = None,
        longest_countdown: float = 60.0,
        keeps: Callable[[JobState], bool] | None = None,
        persist_retry_for: float = 86400.0,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.verifier = verifier
        self.url_key = url_key
        self.sender = sender
        self.clock: Clock = clock or store.clock
        self.settler = Settler(
            store, clock=self.clock, keeps=keeps, persist_retry_for=persist_retry_for
        )
        #: A message for a slot further off comes back early and waits again.
        self.longest_countdown = longest_countdown

    def receive(self, job_id: str, mac: str, headers: Mapping[str, str], body: bytes) -> Reply:
        self._count("webhooks_received")
        if not mac_matches(self.url_key, job_id, mac):
            return self._rejected(401, "bad_url")
        try:
            webhook_id = self.verifier.verify(headers, body)
        except SignatureError as exc:
            return self._rejected(401, exc.reason)
        prediction = _prediction(body)
        if prediction is None:
            return self._rejected(400, "malformed")
        seen = WEBHOOK_SEEN_KEY.format(webhook_id=webhook_id)
        try:
            if not self.store.client.set(seen, job_id, nx=True, ex=WEBHOOK_SEEN_TTL):
                self._count("webhooks_duplicate")
                return Reply(200, "duplicate")
            reply = self._apply(job_id, prediction)
        except redis.RedisError as exc:
            log.warning("webhook for job %s: Redis error (%s); asked to retry", job_id, exc)
            self._give_back(seen)
            return Reply(503, "redis_unavailable")
        if reply.status != 200:
            self._give_back(seen)
        return reply

    def too_large(self) -> Reply:
        """A body over the cap, refused unread (or unkept)."""
        self._count("webhooks_received")
        return self._rejected(413, "too_large")

    # applying -----------------------------------------------------------------

    def _apply(self, job_id: str, prediction: Prediction) -> Reply:
        snap = self._owning_job(job_id, prediction)
        if isinstance(snap, Reply):
            return snap
        settled = self.settler.settle(snap, prediction, path="webhook")
        if settled is None:
            return self._ignored("left_to_poll")
        if isinstance(settled, Persisting):
            # Completed; its outputs are to be kept first: a worker copies them (the job's
            # message, with the rest of its chain, which goes on once the job completes).
            self._count("webhooks_applied")
            self._send_for_copy(settled)
            return Reply(200, settled.state.status.value)
        if not isinstance(settled, Finished):
            return self._ignored("job_ended")
        self._count("webhooks_applied")
        self._carry_on(settled)
        return Reply(200, settled.state.status.value)

    def _owning_job(self, job_id: str, prediction: Prediction) -> JobSnapshot | Reply:
        """The live job, holding this prediction (adopted if its submit's outcome was
        unknown); or the answer for a callback that cannot apply."""
        try:
            snap = self.store.snapshot(job_id)
        except (JobNotFoundError, UnreadableRecordError):
            return self._ignored("unknown_job")
        if snap.state.is_terminal:
            return self._ignored("job_ended")
        if not snap.field("prediction_id"):
            return self._without_prediction(snap, prediction)
        if snap.field("prediction_id") != prediction.id:
            # An earlier prediction's (the job submitted again after WaveSpeed failed it).
            return self._ignored("other_prediction")
        return snap

    def _without_prediction(self, snap: JobSnapshot, prediction: Prediction) -> JobSnapshot | Reply:
        """A live job that has no prediction id yet."""
        if snap.field("outcome_unknown_at") and snap.field("submit_token"):
            refused = self._adopt(snap, prediction.id)
            return refused if refused is not None else self.store.snapshot(snap.state.id)
        if snap.field("submit_token"):
            # Its submit POST is in flight: the answer (and the id) is on its way.
            self._count("webhooks_deferred")
            return Reply(503, "submit_in_flight")
        return self._ignored("no_prediction")

    def _adopt(self, snap: JobSnapshot, prediction_id: str) -> Reply | None:
        """The callback proves that the unknown submit created ``prediction_id``: the job
        takes it as its own, unless another job owns it. None once adopted."""
        state = snap.state
        unknown_since = snap.field("outcome_unknown_at")
        ttl = int(max(0.0, state.deadline_at - self.clock())) + self.store.record_ttl
        moved = self.store.transition(
            state.id,
            expect={
                "prediction_id": "",
                "submit_token": snap.field("submit_token"),
                "outcome_unknown_at": unknown_since,
            },
            updates={
                "status": JobStatus.SUBMITTED.value,
                "prediction_id": prediction_id,
                "submitted_at": unknown_since,
                "submit_token": "",
                "submit_lease_until": "",
                "outcome_unknown_at": "",
                # The message waiting out the orphan window carries poll number 0: it polls
                # this prediction if the callback does not end the job.
                "poll_seq": 0,
            },
            count_if_applied=[counter_field("orphans_adopted", model=state.model)],
            claim=Claim(PREDICTION_OWNER_KEY.format(prediction_id=prediction_id), state.id, ttl),
        )
        if moved is Moved.CLAIMED:
            log.warning(
                "webhook for job %s names prediction %s, which another job owns: refused",
                state.id,
                prediction_id,
            )
            return self._rejected(200, "prediction_owned")
        if not moved:
            return self._ignored("not_adoptable")
        log.warning(
            "job %s adopted prediction %s from its webhook (its submit's answer was lost)",
            state.id,
            prediction_id,
        )
        return None

    def _carry_on(self, finished: Finished) -> None:
        """What the job's own run would have sent after ending it: the rest of its chain,
        and a wake for a parked job (a slot freed). Never fails the callback: the sweeper
        sends a chain's waiting step after its grace period, and wakes parked jobs."""
        try:
            if finished.state.status is JobStatus.COMPLETED:
                self.sender.continue_chain(finished)
        except Exception as exc:  # noqa: BLE001 - the sweeper repairs a lost continuation
            log.warning(
                "job %s: could not send the rest of its chain (%s); the sweeper will",
                finished.state.id,
                exc,
            )
        # An in-flight slot may have freed: the next job of the line gets it.
        admit_waiting(
            self.store, self.limiter, self.sender.admit, longest_countdown=self.longest_countdown
        )

    def _send_for_copy(self, persisting: Persisting) -> None:
        """Never fails the callback: the job waits in ``persisting`` indexed for the
        sweeper, which sends it if this message is lost."""
        try:
            self.sender.admit(persisting.state, 0.0)
        except Exception as exc:  # noqa: BLE001 - the sweeper re-sends an overdue job
            log.warning(
                "job %s: could not send it to keep its outputs (%s); the sweeper will",
                persisting.state.id,
                exc,
            )

    # counting -----------------------------------------------------------------

    def _count(self, name: str, **labels: str) -> None:
        # A counter is not worth failing a callback over.
        with contextlib.suppress(redis.RedisError):
            self.store.count(name, **labels)

    def _rejected(self, status: int, reason: str) -> Reply:
        self._count("webhooks_rejected", reason=reason)
        return Reply(status, f"rejected: {reason}")

    def _ignored(self, reason: str) -> Reply:
        self._count("webhooks_ignored", reason=reason)
        return Reply(200, f"ignored: {reason}")

    def _give_back(self, seen: str) -> None:
        """Let a retry of this delivery be applied (it was not, this time)."""
        # If Redis will not have it, the retry counts as a duplicate; the poll ends the job.
        with contextlib.suppress(redis.RedisError):
            self.store.client.delete(seen)


def _prediction(body: bytes) -> Prediction | None:
    """The callback's body (the bare prediction object) as a ``Prediction``; None when it
    is not one. An unknown remote status is not ours to judge here: the poll will."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        prediction = parse_prediction({"data": data})
    except PermanentError:
        return None
    if not prediction.error_message:
        return prediction
    # The server's words, as a poll's are: no bearer token quoted, and short.
    message = redact(prediction.error_message, "")[:MAX_ERROR_TEXT]
    return dataclasses.replace(prediction, error_message=message)
