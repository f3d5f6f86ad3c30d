"""Runner decisions against real Redis, with a clock the test moves and a scripted
WaveSpeed side: the races that revived finished jobs, staged one by one.

Each test says what happens *while* an HTTP call is in flight (the sweeper times the
job out, a redelivered copy takes over an expired lease, another copy finishes it),
then checks the record, the terminal events published and the counters.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from ops.localstack.redis_server import RedisServer
from tests.support.clock import ManualClock
from tests.support.scripted import ScriptedClient, completed, created, processing
from worker.constants import COUNTERS_KEY, JOB_EVENT_CHANNEL, JOB_EVENTS_PATTERN, JOB_KEY
from worker.errors import SubmitOutcomeUnknownError
from worker.models import JobRecord, JobStatus
from worker.ratelimit import AccountLimiter
from worker.runner import Duplicate, Finished, JobRunner, Reschedule
from worker.settings import Settings
from worker.store import JobStore, counter_field
from worker.sweeper import Sweeper

MODEL = "flux-kontext-max/text-to-image"
END_OF_EVENTS = "end-of-events"


class Race:
    def __init__(self, redis_url: str, policy: str = "fail") -> None:
        self.clock = ManualClock()
        self.settings = Settings(redis_url=redis_url, ambiguous_submit_policy=policy)
        self.store = JobStore.from_url(redis_url, record_ttl=3600, clock=self.clock)
        limiter = AccountLimiter(self.store.client, per_minute=100_000, max_in_flight=1000)
        self.wavespeed = ScriptedClient()
        self.runner = JobRunner(self.settings, self.store, limiter, self.wavespeed)
        self.sweeper = Sweeper(
            self.store, self.runner, lambda *_: None, grace=30, interval=1, clock=self.clock
        )
        self._events = self.store.client.pubsub()  # type: ignore[no-untyped-call]
        # Every job's own channel, as a monitor listens to all of them.
        self._events.psubscribe(JOB_EVENTS_PATTERN)
        self._events.get_message(timeout=5)  # the subscribe confirmation

    def create(self, deadline: float = 60) -> str:
        now = self.clock()
        record = JobRecord(
            id=uuid.uuid4().hex,
            model=MODEL,
            input={"prompt": "a race"},
            status=JobStatus.QUEUED,
            created_at=now,
            deadline_at=now + deadline,
        )
        return self.store.create_job(record)[0]

    def sweep_past_deadline(self) -> None:
        """The sweeper's pass after the job's deadline (from inside an HTTP call)."""
        self.clock.advance(3600)
        self.sweeper.sweep_once()

    def terminal_events(self, job_id: str) -> list[str]:
        """Every terminal status announced for ``job_id`` so far: a marker published after
        the actions arrives after all of their events (one server, one order)."""
        self.store.client.publish(JOB_EVENT_CHANNEL.format(job_id=job_id), END_OF_EVENTS)
        statuses: list[str] = []
        while True:
            message = self._events.get_message(timeout=10)
            assert message is not None, "the end-of-events marker never arrived"
            if message["type"] != "pmessage":
                continue
            if message["data"] == END_OF_EVENTS:
                return statuses
            event = json.loads(message["data"])
            if event["job_id"] == job_id:
                statuses.append(event["status"])

    def counter(self, name: str, **labels: str) -> int:
        value = self.store.client.hget(COUNTERS_KEY, counter_field(name, **labels))
        return int(value or 0)


@pytest.fixture
def race(redis_url: str) -> Race:
    return Race(redis_url)


def _status(race: Race, job_id: str) -> JobStatus:
    return race.store.get(job_id).status


def test_a_job_timed_out_during_its_submit_post_stays_timed_out(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(created("p1"), during=race.sweep_past_deadline)

    outcome = race.runner.run(job_id)

    assert isinstance(outcome, Duplicate)  # no chain callback from this run
    record = race.store.get(job_id)
    assert record.status is JobStatus.TIMED_OUT
    assert record.prediction_id is None
    assert race.terminal_events(job_id) == ["timed_out"]
    assert race.counter("jobs_timed_out", model=MODEL) == 1
    assert race.counter("submissions", model=MODEL) == 1  # the POST did happen
    assert race.counter("orphaned_predictions", model=MODEL) == 1


def test_a_job_timed_out_during_a_poll_is_not_completed(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(created("p1"))
    first = race.runner.run(job_id)
    assert isinstance(first, Reschedule) and first.poll_seq == 1
    race.wavespeed.on_result(completed("p1"), during=race.sweep_past_deadline)

    outcome = race.runner.run(job_id, poll_seq=1)

    assert isinstance(outcome, Duplicate)
    record = race.store.get(job_id)
    assert record.status is JobStatus.TIMED_OUT and record.outputs == []
    assert race.terminal_events(job_id) == ["timed_out"]
    assert race.counter("jobs_completed", model=MODEL) == 0
    assert race.counter("polls", model=MODEL) == 1


def test_a_submit_lease_that_runs_out_mid_post_cannot_revive_the_failed_job(race: Race) -> None:
    """Copy A's POST hangs past its lease; redelivered copy B finds the lease expired and,
    under the default policy, fails the job. Then A's POST returns."""
    job_id = race.create(deadline=900)
    copy_b: list[Any] = []

    def lease_runs_out_and_copy_b_runs() -> None:
        race.clock.advance(race.settings.submit_lease + 1)
        copy_b.append(race.runner.run(job_id))

    race.wavespeed.on_submit(created("p1"), during=lease_runs_out_and_copy_b_runs)
    outcome_a = race.runner.run(job_id)

    assert isinstance(copy_b[0], Finished) and copy_b[0].state.status is JobStatus.FAILED
    assert isinstance(outcome_a, Duplicate)
    record = race.store.get(job_id)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "submit_outcome_unknown"
    assert record.prediction_id is None
    assert race.terminal_events(job_id) == ["failed"]
    # A redelivered poll message cannot bring it back either.
    assert isinstance(race.runner.run(job_id, poll_seq=1), Finished)
    assert race.wavespeed.calls == [("submit", MODEL)]


def test_resubmit_policy_takeover_keeps_only_the_new_prediction(redis_url: str) -> None:
    race = Race(redis_url, policy="resubmit")
    job_id = race.create(deadline=900)
    copy_b: list[Any] = []

    def lease_runs_out_and_copy_b_runs() -> None:
        race.clock.advance(race.settings.submit_lease + 1)
        copy_b.append(race.runner.run(job_id))

    race.wavespeed.on_submit(created("p1"), during=lease_runs_out_and_copy_b_runs)
    assert isinstance(race.runner.run(job_id), Duplicate)  # copy A's late answer is dropped
    retry = copy_b[0]
    assert isinstance(retry, Reschedule) and retry.reason == "error"

    race.wavespeed.on_submit(created("p2")).on_result(completed("p2"))
    race.clock.advance(retry.countdown)
    polled = race.runner.run(job_id)
    assert isinstance(polled, Reschedule)
    done = race.runner.run(job_id, poll_seq=polled.poll_seq)

    assert isinstance(done, Finished) and done.state.prediction_id == "p2"
    assert race.terminal_events(job_id) == ["completed"]
    assert race.counter("submissions", model=MODEL) == 2
    assert race.counter("orphaned_predictions", model=MODEL) == 1
    assert race.counter("resubmissions", model=MODEL) == 1


def test_two_copies_of_a_poll_complete_the_job_once(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(created("p1"))
    assert isinstance(race.runner.run(job_id), Reschedule)
    second: list[Any] = []
    race.wavespeed.on_result(
        completed("p1"), during=lambda: second.append(race.runner.run(job_id, poll_seq=1))
    )
    race.wavespeed.on_result(completed("p1"))

    first = race.runner.run(job_id, poll_seq=1)

    assert isinstance(second[0], Finished)
    assert isinstance(first, Duplicate)
    assert race.terminal_events(job_id) == ["completed"]
    assert race.counter("jobs_completed", model=MODEL) == 1
    assert race.counter("polls", model=MODEL) == 2  # both GETs happened
    assert race.store.get(job_id).polls == 1  # the job's own count: the poll that decided


def test_a_record_gone_during_a_poll_is_not_recreated(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(created("p1"))
    assert isinstance(race.runner.run(job_id), Reschedule)
    key = JOB_KEY.format(job_id=job_id)
    race.wavespeed.on_result(processing("p1"), during=lambda: race.store.client.delete(key))

    assert isinstance(race.runner.run(job_id, poll_seq=1), Duplicate)
    assert not race.store.client.exists(key)


def test_an_ambiguous_submit_under_fail_ends_once(race: Race) -> None:
    job_id = race.create()
    race.wavespeed.on_submit(SubmitOutcomeUnknownError("dropped", code="submit_outcome_unknown"))

    outcome = race.runner.run(job_id)

    assert isinstance(outcome, Finished) and outcome.state.status is JobStatus.FAILED
    assert race.terminal_events(job_id) == ["failed"]
    assert race.counter("jobs_failed", model=MODEL, code="submit_outcome_unknown") == 1
    # A second copy of the message changes nothing and sends nothing.
    assert isinstance(race.runner.run(job_id), Finished)
    assert race.wavespeed.calls == [("submit", MODEL)]


def test_no_state_is_ever_written_to_a_finished_record(redis_url: str) -> None:
    """Every path of the runner on a terminal record: nothing written, nothing sent."""
    race = Race(redis_url)
    job_id = race.create()
    race.sweep_past_deadline()
    before = race.store.client.hgetall(JOB_KEY.format(job_id=job_id))
    for poll_seq in (0, 1, 7):
        assert isinstance(race.runner.run(job_id, poll_seq=poll_seq), Finished)
    assert race.store.client.hgetall(JOB_KEY.format(job_id=job_id)) == before
    assert race.wavespeed.calls == []
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.ttl(JOB_KEY.format(job_id=job_id)) > 0


def test_a_prediction_created_while_redis_is_away_is_recorded_when_it_is_back(
    private_redis: RedisServer,
) -> None:
    """Redis goes away during the POST and stays away past the client's own retries: the
    run keeps trying the same write (until shortly before its lease ends) instead of
    throwing the prediction id away, which left the job to fail submit_outcome_unknown."""
    race = Race(private_redis.url)
    job_id = race.create(deadline=900)
    restarted = threading.Event()

    def redis_goes_away() -> None:
        private_redis.stop()

        def back_later() -> None:
            time.sleep(race.settings.redis_retry_window + 3)  # the outage itself
            private_redis.start()
            restarted.set()

        threading.Thread(target=back_later, daemon=True).start()

    race.wavespeed.on_submit(created("p1"), during=redis_goes_away)
    outcome = race.runner.run(job_id)

    assert restarted.is_set()
    assert isinstance(outcome, Reschedule) and outcome.poll_seq == 1
    record = race.store.get(job_id)
    assert (record.status, record.prediction_id) == (JobStatus.SUBMITTED, "p1")


def test_the_poll_due_at_the_deadline_still_takes_a_completed_result(race: Race) -> None:
    """The last poll lands on the deadline: the prediction is billed, so its result counts."""
    job_id = race.create(deadline=60)
    race.wavespeed.on_submit(created("p1"))
    first = race.runner.run(job_id)
    assert isinstance(first, Reschedule)
    race.clock.advance(60)  # the schedule never overshoots the deadline: it lands on it
    race.wavespeed.on_result(completed("p1"))
    done = race.runner.run(job_id, poll_seq=first.poll_seq)
    assert isinstance(done, Finished) and done.state.status is JobStatus.COMPLETED
