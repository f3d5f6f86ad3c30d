"""Cancel and deadlines, staged against real Redis with the clock the test moves and a
scripted WaveSpeed side: a cancel that lands while an HTTP call is in flight, a deadline
that passes while a job waits for its submit slot."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_runner_races import MODEL, Race
from tests.support.scripted import completed, created, processing
from worker.models import JobStatus
from worker.ratelimit import Permit
from worker.runner import Duplicate, Finished, Reschedule
from worker.store import Moved


@pytest.fixture
def race(redis_url: str) -> Race:
    return Race(redis_url)


def _cancel(race: Race, job_id: str) -> None:
    assert race.store.cancel([job_id])[0].cancelled_now


def test_a_job_cancelled_before_its_message_runs_is_never_submitted(race: Race) -> None:
    job_id = race.create()
    _cancel(race, job_id)

    for poll_seq in (0, 0, 1):  # the message and duplicates of it
        outcome = race.runner.run(job_id, poll_seq=poll_seq)
        assert isinstance(outcome, Finished) and not outcome.ended_here

    assert race.wavespeed.calls == []
    record = race.store.get(job_id)
    assert record.status is JobStatus.CANCELLED
    assert record.error is not None and record.error.code == "cancelled"
    assert "nothing was sent" in record.error.message
    assert race.terminal_events(job_id) == ["cancelled"]
    assert race.counter("jobs_cancelled", model=MODEL, stage="queued") == 1
    # Counted once among the endings too, as cancelled: failure ratios leave it out.
    assert race.counter("jobs_ended", model=MODEL, outcome="cancelled") == 1
    assert race.counter("jobs_ended", model=MODEL, outcome="failed") == 0


def test_a_cancel_during_the_submit_post_wins_and_the_answer_is_dropped(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(created("p1"), during=lambda: _cancel(race, job_id))

    outcome = race.runner.run(job_id)

    assert isinstance(outcome, Duplicate)
    record = race.store.get(job_id)
    assert record.status is JobStatus.CANCELLED
    assert record.prediction_id is None
    assert record.error is not None and "may be billed" in record.error.message
    assert race.counter("orphaned_predictions", model=MODEL) == 1
    assert race.counter("jobs_cancelled", model=MODEL, stage="submitting") == 1
    assert race.terminal_events(job_id) == ["cancelled"]
    # The slot the submit took is free again (the ending freed it).
    assert race.runner.limiter.in_flight() == 0


def test_a_result_that_arrives_after_a_cancel_is_ignored(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(created("p1"))
    submitted = race.runner.run(job_id)
    assert isinstance(submitted, Reschedule)
    # The poll is in flight when the cancel lands; WaveSpeed answers "completed".
    race.wavespeed.on_result(completed("p1"), during=lambda: _cancel(race, job_id))

    late = race.runner.run(job_id, poll_seq=submitted.poll_seq)

    assert isinstance(late, Duplicate)
    record = race.store.get(job_id)
    assert record.status is JobStatus.CANCELLED
    assert record.outputs == []
    assert record.error is not None and "prediction p1" in record.error.message
    assert race.counter("jobs_completed", model=MODEL) == 0
    assert race.counter("jobs_cancelled", model=MODEL, stage="submitted") == 1
    # A duplicate of the poll message, and a poll that takes over, change nothing.
    for poll_seq in (submitted.poll_seq, submitted.poll_seq + 1):
        again = race.runner.run(job_id, poll_seq=poll_seq)
        assert isinstance(again, Finished) and not again.ended_here
    assert race.wavespeed.calls == [("submit", MODEL), ("result", "p1")]
    assert race.terminal_events(job_id) == ["cancelled"]


def test_cancel_is_idempotent_and_never_changes_a_finished_job(race: Race) -> None:
    done = race.create()
    race.wavespeed.on_submit(created("p1")).on_result(completed("p1"))
    first = race.runner.run(done)
    assert isinstance(first, Reschedule)
    assert isinstance(race.runner.run(done, poll_seq=first.poll_seq), Finished)
    live = race.create()

    results = race.store.cancel([done, live, "no-such-job", live])

    assert [(r.job_id, r.status, r.cancelled_now) for r in results] == [
        (done, JobStatus.COMPLETED, False),
        (live, JobStatus.CANCELLED, True),
        ("no-such-job", None, False),
    ]
    again = race.store.cancel([live])[0]
    assert again.status is JobStatus.CANCELLED and not again.cancelled_now
    assert race.store.get(done).status is JobStatus.COMPLETED
    assert race.counter("jobs_cancelled", model=MODEL, stage="queued") == 1


def test_a_cancel_that_races_a_submit_claim_reads_the_job_again(race: Race) -> None:
    """The cancel read the job queued; a submit claims it before the cancel writes: the
    cancel's compare-and-set misses, it reads again and says the POST is in flight."""
    job_id = race.create()
    moved = race.store.transition(
        job_id, updates={"status": "submitting", "submit_token": "t", "submit_lease_until": 1}
    )
    assert moved
    # Cancel sees the claim (the read happens after it): stage "submitting".
    result = race.store.cancel([job_id])[0]
    assert result.cancelled_now and "in flight" in result.message
    assert race.counter("jobs_cancelled", model=MODEL, stage="submitting") == 1


class _SlowLimiter:
    """The shared limiter, but granting a slot takes ``wait`` seconds of the test's clock
    (a job that waited that long in line for a token)."""

    def __init__(self, race: Race, wait: float) -> None:
        self._limiter = race.runner.limiter
        self._race = race
        self._wait = wait

    def acquire(self, job_id: str, **kwargs: Any) -> Permit:
        self._race.clock.advance(self._wait)
        return self._limiter.acquire(job_id, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._limiter, name)


def test_the_submit_claim_refuses_a_job_past_its_deadline(race: Race) -> None:
    """The deadline passes after the run's first look but before the submit claim: the
    claim itself refuses it (by the store's clock), the job times out, nothing is sent."""
    job_id = race.create(deadline=10)
    race.runner.limiter = _SlowLimiter(race, wait=11)  # type: ignore[assignment]

    outcome = race.runner.run(job_id)

    assert isinstance(outcome, Finished) and outcome.ended_here
    assert race.wavespeed.calls == []
    record = race.store.get(job_id)
    assert record.status is JobStatus.TIMED_OUT
    assert record.attempts == 0
    assert record.error is not None and record.error.code == "deadline_exceeded"
    assert race.runner.limiter.in_flight() == 0  # the slot taken for it is given back


def test_the_store_refuses_a_write_past_live_at(race: Race) -> None:
    job_id = race.create(deadline=10)
    deadline = race.store.get(job_id).deadline_at
    refused = race.store.transition(job_id, updates={"polls": 0}, live_at=deadline)
    assert refused is Moved.PAST_DEADLINE
    assert race.store.transition(job_id, updates={"polls": 0}, live_at=deadline - 0.001)


def test_a_processing_job_cancelled_between_polls_stops_polling(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(created("p1")).on_result(processing("p1"))
    submitted = race.runner.run(job_id)
    assert isinstance(submitted, Reschedule)
    polled = race.runner.run(job_id, poll_seq=submitted.poll_seq)
    assert isinstance(polled, Reschedule)
    _cancel(race, job_id)

    after = race.runner.run(job_id, poll_seq=polled.poll_seq)

    assert isinstance(after, Finished) and after.state.status is JobStatus.CANCELLED
    assert race.wavespeed.calls == [("submit", MODEL), ("result", "p1")]  # no more polls
