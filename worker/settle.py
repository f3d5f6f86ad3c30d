"""The one place that applies a prediction's end to its job, however the news came.

A prediction's end reaches a job two ways: a poll (``worker.runner.JobRunner``) or
WaveSpeed's webhook (``worker.webhooks.receiver``). Both call ``Settler.settle``,
which ends the job by compare-and-set on the record (``expect`` its prediction id;
the store refuses any write to a terminal record), so whichever arrives second
finds the job ended and changes nothing: a webhook racing a poll finishes the job
exactly once, counts it once and, because only the one that ended it goes on, a
chain advances once.

The path that ended the job is counted (``jobs_ended_by{path}`` and the polls those
jobs made, ``polls_before_end{path}``: polls per job by completion path), in the
same atomic step as the ending. A job a webhook ended is marked ``ended_by=webhook``:
the receiver continues its chain, so the job's own pending message must not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from worker.clock import Clock
from worker.constants import COUNTERS_KEY, LATENCY_BUCKETS, POLL_COUNT_BUCKETS
from worker.errors import TransientError
from worker.models import JobError, JobState, JobStatus, price_of
from worker.outside_text import printable
from worker.store import NOT_BILLED, Effect, JobSnapshot, JobStore, counter_field
from worker.wavespeed import Prediction, failure_of

log = logging.getLogger(__name__)

#: Longest error message a record keeps.
MAX_ERROR_MESSAGE_CHARS = 600

#: How the job learnt that its prediction ended.
Path = Literal["poll", "webhook"]
ENDED_BY_WEBHOOK = "webhook"


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
class Duplicate:
    reason: str


@dataclass(frozen=True)
class Persisting:
    """The prediction completed and the job keeps its outputs: it is ``persisting`` until
    a worker has copied them (``worker.keep_outputs``); then it completes."""

    state: JobState


@dataclass(frozen=True)
class Tally:
    """What a run did that must be counted with the write that follows it: record
    increments (applied with the write) and global counters (counted whatever it decides,
    because the HTTP call happened)."""

    increments: Mapping[str, int]
    count: Sequence[str]

    def __add__(self, other: Tally) -> Tally:
        merged = dict(self.increments)
        for field, amount in other.increments.items():
            merged[field] = merged.get(field, 0) + amount
        return Tally(merged, [*self.count, *other.count])


NOTHING = Tally({}, ())


class Settler:
    """Ends jobs: by a prediction's end (``settle``), or for any other reason (``end``)."""

    def __init__(
        self,
        store: JobStore,
        *,
        clock: Clock,
        keeps: Callable[[JobState], bool] | None = None,
        persist_retry_for: float = 86400.0,
    ) -> None:
        self.store = store
        self.clock = clock
        #: Whether a job copies its outputs before it completes (``OutputKeeper.wants``).
        self.keeps = keeps or (lambda state: bool(state.keep_outputs))
        #: A copy is tried until this long after the prediction completed.
        self.persist_retry_for = persist_retry_for

    def settle(
        self, snap: JobSnapshot, prediction: Prediction, *, path: Path, tally: Tally = NOTHING
    ) -> Finished | Persisting | Duplicate | None:
        """Apply ``prediction`` to the job whose snapshot is ``snap``: ``completed`` ends it
        completed, a final failure ends it failed. None when the prediction does not end
        the job: still running, or failed in a way worth a new prediction (5xxx), which
        is the poll's to do (it holds the job's message)."""
        if prediction.status.is_running:
            return None
        if prediction.status.value == "completed":
            return self.complete(snap, prediction, path=path, tally=tally)
        failure = failure_of(prediction)
        if isinstance(failure, TransientError):
            return None
        return self.end(
            snap,
            {"prediction_id": prediction.id},
            failure.code,
            failure.message,
            tally=tally,
            path=path,
            # WaveSpeed bills completed predictions only (see the README, "Cost").
            billing=NOT_BILLED,
        )

    def complete(
        self, snap: JobSnapshot, prediction: Prediction, *, path: Path, tally: Tally = NOTHING
    ) -> Finished | Persisting | Duplicate:
        if self.keeps(snap.state):
            return self._hold_for_copy(snap, prediction, path=path, tally=tally)
        state = snap.state
        now = self.clock()
        updates: dict[str, Any] = {
            "status": JobStatus.COMPLETED,
            "outputs": prediction.outputs,
            "has_nsfw_contents": prediction.has_nsfw_contents,
            "inference_ms": prediction.inference_ms,
            "completed_at": now,
            # Billed per image delivered, at the price list's figure for the model.
            "cost_micros": price_of(state.model, len(prediction.outputs)),
        }
        polls = state.polls + tally.increments.get("polls", 0)
        finished = state.model_copy(update={**updates, "polls": polls})
        if path == ENDED_BY_WEBHOOK:
            updates["ended_by"] = ENDED_BY_WEBHOOK
        done = self.store.transition(
            state.id,
            expect={"prediction_id": prediction.id},
            updates={k: v.value if isinstance(v, JobStatus) else v for k, v in updates.items()},
            increments=tally.increments,
            count=tally.count,
            count_if_applied=[
                counter_field("jobs_completed", model=state.model),
                counter_field("jobs_ended", model=state.model, outcome="completed"),
            ],
            # The completion's bookkeeping, in the same step: counted once, one round trip.
            effects=[
                *self._completion_effects(finished, prediction, now),
                *self._path_effects(path, polls),
            ],
        )
        if not done:
            return Duplicate(f"completion not applied ({done.name.lower()})")
        log.info(
            "job %s completed in %.1fs (%d poll(s), %d output(s))%s",
            state.id,
            now - state.created_at,
            finished.polls,
            len(prediction.outputs),
            " by its webhook" if path == ENDED_BY_WEBHOOK else "",
        )
        return Finished(finished, ended_here=True)

    def _hold_for_copy(
        self, snap: JobSnapshot, prediction: Prediction, *, path: Path, tally: Tally
    ) -> Persisting | Duplicate:
        """The prediction completed; the job's outputs are to be kept: ``persisting``, with
        WaveSpeed's URLs, until a worker copied them. What belongs to the prediction (polls,
        its inference time, the completion path) is counted now; the job's own completion
        when it completes."""
        state = snap.state
        now = self.clock()
        updates: dict[str, Any] = {
            "status": JobStatus.PERSISTING.value,
            "outputs": prediction.outputs,
            "has_nsfw_contents": prediction.has_nsfw_contents,
            "inference_ms": prediction.inference_ms,
            "prediction_completed_at": now,
            # Billed now, when WaveSpeed completed it: the store bills the write that first
            # records a completed prediction's cost, whatever status it moves to.
            "cost_micros": price_of(state.model, len(prediction.outputs)),
            "persist_give_up_at": now + self.persist_retry_for,
            # The copy starts at once; if that run dies, the sweeper sends the job again.
            "next_run_at": now,
        }
        if path == ENDED_BY_WEBHOOK:
            updates["ended_by"] = ENDED_BY_WEBHOOK
        effects = self._path_effects(path, state.polls + tally.increments.get("polls", 0))
        if prediction.inference_ms is not None:
            effects.append(self.store.latency_sample(state.model, prediction.inference_ms / 1000))
        held = self.store.transition(
            state.id,
            # Only a job still waiting for its prediction: a second callback or poll finds
            # it persisting and changes nothing.
            expect={
                "prediction_id": prediction.id,
                "status": [JobStatus.SUBMITTED.value, JobStatus.PROCESSING.value],
            },
            updates=updates,
            increments=tally.increments,
            count=tally.count,
            effects=effects,
        )
        if not held:
            return Duplicate(f"completion not applied ({held.name.lower()})")
        return Persisting(self.store.snapshot(state.id).state)

    def complete_kept(
        self, snap: JobSnapshot, stored: list[str], *, given_up: str | None = None
    ) -> Finished | Duplicate:
        """Complete a ``persisting`` job: its outputs were copied (``stored``), or the
        copy was given up on (``given_up`` says why; ``stored`` is then empty)."""
        state = snap.state
        now = self.clock()
        updates: dict[str, Any] = {
            "status": JobStatus.COMPLETED.value,
            # Written again so that the day's aggregate counts the images delivered.
            "outputs": state.outputs,
            "stored_outputs": stored,
            "completed_at": now,
        }
        if given_up is None:
            updates["persist_error"] = ""
            kept = counter_field("outputs_kept", model=state.model)
        else:
            # Not a job failure (the job completes): its own field, never ``error``.
            updates["persist_error"] = {"code": "persist_failed", "message": given_up}
            kept = counter_field("outputs_not_kept", model=state.model)
        finished = state.model_copy(
            update={
                "status": JobStatus.COMPLETED,
                "stored_outputs": stored,
                "completed_at": now,
            }
        )
        done = self.store.transition(
            state.id,
            expect={"status": JobStatus.PERSISTING.value},
            updates=updates,
            count_if_applied=[
                counter_field("jobs_completed", model=state.model),
                counter_field("jobs_ended", model=state.model, outcome="completed"),
                kept,
            ],
            effects=self._job_completion_effects(finished, now),
        )
        if not done:
            return Duplicate(f"completion not applied ({done.name.lower()})")
        log.info(
            "job %s completed in %.1fs (%d poll(s), %d output(s) %s)",
            state.id,
            now - state.created_at,
            finished.polls,
            len(state.outputs),
            "kept" if given_up is None else "NOT kept",
        )
        return Finished(self.store.snapshot(state.id).state, ended_here=True)

    def end(
        self,
        snap: JobSnapshot,
        expect: Mapping[str, str],
        code: int | str | None,
        message: str,
        status: JobStatus = JobStatus.FAILED,
        *,
        tally: Tally = NOTHING,
        path: Path | None = None,
        billing: str = "",
    ) -> Finished | Duplicate:
        """End the job ``failed`` (or ``timed_out``) if ``expect`` still holds. ``path``:
        set when a prediction's failure ends it (counted by completion path). ``billing``:
        whether WaveSpeed may still bill it (``store.transition``'s rule by default)."""
        state = snap.state
        # The message may quote WaveSpeed (a poll's answer or a callback's body) or the
        # request: one printable line, capped, before it is stored and logged.
        message = printable(message, MAX_ERROR_MESSAGE_CHARS)
        error = JobError(code=code if code is not None else "unknown", message=message)
        if status is JobStatus.TIMED_OUT:
            ending = counter_field("jobs_timed_out", model=state.model)
        else:
            ending = counter_field("jobs_failed", model=state.model, code=str(error.code))
        # Every ending by outcome in one counter: the denominator of failure ratios.
        ended = counter_field("jobs_ended", model=state.model, outcome=status.value)
        now = self.clock()
        polls = state.polls + tally.increments.get("polls", 0)
        updates: dict[str, Any] = {
            "status": status.value,
            "error": error.model_dump(),
            "completed_at": now,
        }
        if path == ENDED_BY_WEBHOOK:
            updates["ended_by"] = ENDED_BY_WEBHOOK
        done = self.store.transition(
            state.id,
            expect=expect,
            updates=updates,
            increments=tally.increments,
            count=tally.count,
            count_if_applied=[ending, ended],
            effects=self._path_effects(path, polls) if path else (),
            billing=billing,
        )
        if not done:
            return Duplicate(f"{status.value} not applied ({done.name.lower()})")
        log.warning("job %s %s: [%s] %s", state.id, status.value, error.code, message)
        return Finished(
            state.model_copy(
                update={
                    "status": status,
                    "error": error,
                    "completed_at": now,
                    "polls": polls,
                    "cost_micros": 0,
                }
            ),
            ended_here=True,
        )

    def _completion_effects(
        self, state: JobState, prediction: Prediction, now: float
    ) -> list[Effect]:
        effects = self._job_completion_effects(state, now)
        if prediction.inference_ms is not None:
            effects.append(self.store.latency_sample(state.model, prediction.inference_ms / 1000))
        return effects

    def _job_completion_effects(self, state: JobState, now: float) -> list[Effect]:
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
        return effects

    @staticmethod
    def _path_effects(path: Path, polls: int) -> list[Effect]:
        """Polls per job by completion path: jobs ended and the polls they made, by path."""
        return [
            Effect("hincrby", COUNTERS_KEY, counter_field("jobs_ended_by", path=path), 1),
            Effect("hincrby", COUNTERS_KEY, counter_field("polls_before_end", path=path), polls),
        ]
