"""Runner decisions on WaveSpeed's rate limit, against real Redis with a scripted
WaveSpeed side: a 429 pauses the fleet and costs the job nothing, except a job larger
than the whole per-minute limit."""

from __future__ import annotations

import pytest

from tests.integration.test_runner_races import MODEL, Race
from tests.support.scripted import completed, created
from worker.errors import RateLimitedError
from worker.runner import Finished, Reschedule
from worker.store import JobStore


def _error_retries(store: JobStore, job_id: str) -> int:
    return int(store.snapshot(job_id).number("error_retries"))


@pytest.fixture
def race(redis_url: str) -> Race:
    return Race(redis_url)


def test_a_429_on_submit_pauses_the_fleet_and_spends_no_budget(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(RateLimitedError("HTTP 429", code=429, retry_after=7))

    outcome = race.runner.run(job_id)

    assert isinstance(outcome, Reschedule) and outcome.reason == "rate_limit"
    assert 7 <= outcome.countdown <= 7.25
    assert _error_retries(race.store, job_id) == 0
    assert race.counter("remote_rate_limited") == 1
    assert race.runner.limiter.paused_until() > 0
    # Every worker now waits: the next submit of any job is held by the limiter.
    other = race.create()
    held = race.runner.run(other)
    assert isinstance(held, Reschedule) and held.reason == "rate_limit"
    assert race.wavespeed.calls == [("submit", MODEL)]


def test_a_job_larger_than_the_limit_spends_its_budget_on_429s(redis_url: str) -> None:
    race = Race(redis_url)
    race.settings = race.runner.settings = race.settings.model_copy(
        update={"rate_limit_per_minute": 2}
    )
    job_id = race.create()
    race.store.transition(job_id, updates={"images": 4})  # as num_images=4 records it
    race.wavespeed.on_submit(RateLimitedError("HTTP 429", code=429, retry_after=1))

    outcome = race.runner.run(job_id)

    assert isinstance(outcome, Reschedule) and outcome.reason == "error"
    assert _error_retries(race.store, job_id) == 1


def test_a_429_on_a_poll_polls_later_on_no_budget(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(created("p1"))
    first = race.runner.run(job_id)
    assert isinstance(first, Reschedule)
    race.wavespeed.on_result(RateLimitedError("HTTP 429", code=429, retry_after=9))
    race.wavespeed.on_result(completed("p1"))

    later = race.runner.run(job_id, poll_seq=first.poll_seq)

    assert isinstance(later, Reschedule) and later.reason == "poll" and later.countdown >= 9
    assert _error_retries(race.store, job_id) == 0
    assert race.runner.limiter.paused_until() == 0.0  # a GET limit is not the images limit
    done = race.runner.run(job_id, poll_seq=later.poll_seq)
    assert isinstance(done, Finished) and done.state.status == "completed"
