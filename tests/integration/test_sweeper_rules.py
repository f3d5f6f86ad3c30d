"""The sweeper's rules against a real redis-server, pass by pass (no worker: what it
would re-send is recorded, and the clock is the test's)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.support.jobs import Enqueuer
from tests.support.records import put_in_status
from worker.constants import DEADLINES_KEY, QUEUE_NORMAL
from worker.fairness import line_member
from worker.models import JobRecord, JobStatus
from worker.ratelimit import AccountLimiter
from worker.runner import JobRunner
from worker.settings import Settings
from worker.store import NewJob
from worker.sweeper import PAGE, PASS_BUDGET, Sweeper, SweepReport
from worker.wavespeed import WaveSpeedClient

T2I = "flux-kontext-max/text-to-image"
EDIT = "flux-kontext-pro"
GRACE = 10.0


class Harness:
    def __init__(self, redis_url: str, budget: int = PASS_BUDGET) -> None:
        settings = Settings.from_env({"REDIS_URL": redis_url})
        self.jobs = Enqueuer(settings)
        self.store = self.jobs.store
        self.now = time.time()
        self.resent: list[tuple[str, dict[str, Any]]] = []
        limiter = AccountLimiter(self.store.client, per_minute=60, max_in_flight=10)
        # The runner only times jobs out here; its HTTP client is never used.
        client = WaveSpeedClient(
            base_url="http://127.0.0.1:9", api_key="unused", connect_timeout=1, read_timeout=1
        )
        runner = JobRunner(settings, self.store, limiter, client, clock=lambda: self.now)
        # Jobs of the fair line given slots are "sent" like the sweeper's re-sends.
        runner.send = lambda state, _countdown: self.resent.append((state.id, {}))
        self.sweeper = Sweeper(
            self.store,
            runner,
            lambda snap, kwargs: self.resent.append((snap.state.id, kwargs)),
            grace=GRACE,
            interval=1,
            clock=lambda: self.now,
            budget=budget,
        )

    def sweep_later(self, seconds: float) -> list[tuple[str, dict[str, Any]]]:
        self.now += seconds
        self.resent.clear()
        self.sweeper.sweep_once()
        return list(self.resent)

    def create_many(self, count: int, deadline: float, created_ago: float = 0.0) -> list[str]:
        """``count`` queued jobs in one round trip (a batch enqueue), each due a millisecond
        after the one before (so "oldest first" can be checked)."""
        records = [
            JobRecord(
                id=uuid.uuid4().hex,
                model=T2I,
                input={"prompt": f"lantern {i}"},
                status=JobStatus.QUEUED,
                created_at=self.now - created_ago + i / 1000,
                deadline_at=self.now + deadline + i / 1000,
            )
            for i in range(count)
        ]
        return [job_id for job_id, _ in self.store.create_jobs([NewJob(r) for r in records])]


@pytest.fixture
def harness(redis_url: str) -> Harness:
    return Harness(redis_url)


def test_a_queued_job_waits_while_its_queue_has_a_backlog(harness: Harness) -> None:
    job_id = harness.jobs.create(T2I, prompt="in line")
    harness.store.client.lpush(QUEUE_NORMAL, "someone else's message")
    assert harness.sweep_later(GRACE + 1) == []
    harness.store.client.delete(QUEUE_NORMAL)
    # Pushed back one grace period by the pass that skipped it.
    assert harness.sweep_later(1) == []
    assert harness.sweep_later(GRACE) == [(job_id, {})]
    # and not again before another grace period
    assert harness.sweep_later(1) == []


def test_a_job_in_flight_is_resent_with_its_poll_number(harness: Harness) -> None:
    job_id = harness.jobs.create(T2I, prompt="polling")
    put_in_status(
        harness.store, job_id, "submitted", prediction_id="p1", poll_seq=4,
        next_run_at=harness.now,
    )  # fmt: skip
    assert harness.sweep_later(1) == []
    assert harness.sweep_later(GRACE) == [(job_id, {"poll_seq": 4})]


def test_a_waiting_chain_step_follows_its_completed_predecessor(harness: Harness) -> None:
    first = harness.jobs.create(T2I, prompt="step one")
    second = harness.jobs.create(EDIT, prompt="step two", image="https://x.invalid/a.png")
    harness.store.create_chain("c", [first, second], metadata={})
    harness.store.transition(first, expect={}, updates={"chain_id": "c", "step": 1})
    harness.store.transition(
        second, expect={}, updates={"chain_id": "c", "step": 2, "awaiting_image": "1"}
    )
    put_in_status(harness.store, first, "submitted", next_run_at=harness.now + 999)
    # Step 1 still running: step 2 waits, however old it is.
    assert harness.sweep_later(GRACE + 1) == []
    assert harness.store.transition(
        first,
        expect={"status": "submitted"},
        updates={"status": "completed", "outputs": ["http://x/1.png"],
                 "completed_at": harness.now},
    )  # fmt: skip
    assert harness.sweep_later(GRACE / 2) == []  # its own message may just be late
    assert harness.sweep_later(GRACE) == [(second, {"previous_output": "http://x/1.png"})]


def test_terminal_and_missing_jobs_leave_the_index(harness: Harness) -> None:
    job_id = harness.jobs.create(T2I, prompt="done")
    put_in_status(harness.store, job_id, "completed")
    harness.store.client.zadd("wq:next_run", {"gone": harness.now})
    harness.store.client.zadd("wq:deadlines", {"gone": harness.now})
    assert harness.sweep_later(GRACE + 1) == []
    assert harness.store.overdue(harness.now + 10_000, 10) == []
    assert harness.store.past_deadline(harness.now + 10_000, 10) == []


def test_past_deadline_jobs_time_out(harness: Harness) -> None:
    job_id = harness.jobs.create(T2I, deadline=5, prompt="late")
    harness.sweep_later(6)
    record = harness.store.get(job_id)
    assert record.status == "timed_out"
    assert record.error is not None and record.error.code == "deadline_exceeded"


def test_an_unreadable_record_is_quarantined_and_does_not_stop_the_pass(
    harness: Harness,
) -> None:
    """A status a newer version added (a rolling deploy) used to raise on every pass."""
    newer = harness.jobs.create(T2I, deadline=5, prompt="written by a newer version")
    harness.store.client.hset(f"wq:job:{newer}", "status", "paused")
    late = harness.jobs.create(T2I, deadline=6, prompt="behind it")

    harness.sweep_later(7)
    report = harness.sweeper.sweep_once()

    assert harness.store.get(late).status == "timed_out"
    assert harness.store.quarantined(10) == [newer]
    assert harness.store.client.hget(f"wq:job:{newer}", "status") == "paused"  # untouched
    assert harness.store.past_deadline(harness.now + 10_000, 10) == []
    assert harness.store.overdue(harness.now + 10_000, 10) == []
    assert report.quarantined == 0  # found once, by the first pass
    assert harness.store.counters()[("records_quarantined", ())] == 1


def test_a_quarantined_record_that_can_be_read_again_is_readmitted(harness: Harness) -> None:
    job_id = harness.jobs.create(T2I, deadline=5, prompt="repaired")
    harness.store.client.hset(f"wq:job:{job_id}", "status", "paused")
    harness.sweep_later(6)
    assert harness.store.quarantined(10) == [job_id]

    harness.store.client.hset(f"wq:job:{job_id}", "status", "queued")  # a newer worker's view
    report = harness.sweeper.sweep_once()
    assert report.readmitted == 1
    assert harness.store.quarantined(10) == []
    harness.sweep_later(1)  # readmitted past its deadline: the next pass ends it
    assert harness.store.get(job_id).status == "timed_out"


def test_index_entries_without_records_never_fill_the_batches(harness: Harness) -> None:
    """600 ids whose hash is gone (chain steps that expired before they ran) ahead of a
    real late job: they are dropped, and the real job times out on the next pass."""
    gone = {f"gone-{i}": harness.now + i / 1000 for i in range(600)}
    harness.store.client.zadd("wq:deadlines", gone)
    harness.store.client.zadd("wq:next_run", gone)
    late = harness.jobs.create(T2I, deadline=5, prompt="behind 600 ghosts")

    harness.sweep_later(6)
    harness.sweep_later(1)

    assert harness.store.get(late).status == "timed_out"
    assert harness.store.past_deadline(harness.now + 10_000, 1000) == []
    assert harness.store.overdue(harness.now + 10_000, 1000) == []


def test_a_job_whose_message_was_lost_with_the_broker_is_brought_back_at_once(
    harness: Harness,
) -> None:
    polling = harness.jobs.create(T2I, prompt="claimed poll 3, message lost")
    put_in_status(harness.store, polling, "submitted", prediction_id="p", poll_seq=3)
    queued = harness.jobs.create(T2I, prompt="never ran")
    assert harness.sweeper.bring_back(polling)
    assert harness.sweeper.bring_back(queued)
    assert harness.resent == [(polling, {"poll_seq": 3}), (queued, {})]
    # Nothing to bring back for an ended or missing job.
    put_in_status(harness.store, queued, "failed")
    assert harness.sweeper.bring_back(queued) and harness.sweeper.bring_back("gone")
    assert len(harness.resent) == 2


def test_a_catch_up_after_an_outage_resends_what_is_still_overdue(harness: Harness) -> None:
    from worker.sweeper import CATCH_UP_SETTLE

    lost = harness.jobs.create(T2I, prompt="its message vanished with the connection")
    put_in_status(
        harness.store, lost, "submitted", prediction_id="p", poll_seq=2,
        next_run_at=harness.now - CATCH_UP_SETTLE - 1,
    )  # fmt: skip
    on_time = harness.jobs.create(T2I, prompt="its countdown is due later")
    put_in_status(
        harness.store, on_time, "submitted", prediction_id="q", poll_seq=1,
        next_run_at=harness.now + 5,
    )  # fmt: skip
    assert harness.sweeper.catch_up() == 1
    assert harness.resent == [(lost, {"poll_seq": 2})]
    # One worker per outage: the others' requests find the lock taken.
    assert harness.sweeper.catch_up() == 0


def test_one_bad_bookkeeping_field_does_not_stall_the_pass(harness: Harness) -> None:
    """A record that decodes but has a corrupt field used to raise on every pass, and the
    jobs after it in the batch were never re-sent."""
    ids = [harness.jobs.create(T2I, prompt=f"overdue {i}") for i in range(4)]
    for job_id in ids:
        put_in_status(harness.store, job_id, "submitted", prediction_id="p", poll_seq=2,
                      next_run_at=harness.now)  # fmt: skip
    harness.store.client.hset(f"wq:job:{ids[0]}", "poll_seq", "1.5e")  # corrupt
    resent = harness.sweep_later(GRACE + 1)
    assert sorted(job_id for job_id, _ in resent) == sorted(ids[1:])
    assert harness.store.quarantined(10) == [ids[0]]


def test_one_pass_handles_every_overdue_job_up_to_its_budget(harness: Harness) -> None:
    """More than a page of each (the sweeper used to look at a fixed 500 per pass)."""
    late = harness.create_many(1200, deadline=5)
    lost = harness.create_many(1200, deadline=900, created_ago=100)  # first messages lost

    resent = harness.sweep_later(GRACE + 1)

    assert PAGE < 1200
    assert sorted(job_id for job_id, _ in resent) == sorted(lost)
    records = harness.store.get_states(late)
    assert all(r is not None and r.status is JobStatus.TIMED_OUT for r in records)
    assert harness.store.past_deadline(harness.now + 1, 10) == []


def test_a_backlog_is_worked_off_over_consecutive_passes_oldest_first(redis_url: str) -> None:
    """A backlog bigger than a pass's budget: each pass takes the oldest ``budget`` of each
    index (time-outs never starve re-sends, nor the reverse), and consecutive passes end
    every late job and re-send every lost message exactly once."""
    harness = Harness(redis_url, budget=300)
    late = harness.create_many(1000, deadline=5)
    lost = harness.create_many(800, deadline=900, created_ago=200)
    for i, job_id in enumerate(lost):
        put_in_status(
            harness.store, job_id, "submitted", prediction_id=f"p{i}", poll_seq=1,
            next_run_at=harness.now - 100 + i / 100,
        )  # fmt: skip

    harness.now += 6
    reports: list[SweepReport] = []
    sent: list[str] = []
    while not reports or reports[-1] != SweepReport():
        harness.resent.clear()
        reports.append(harness.sweeper.sweep_once())
        sent += [job_id for job_id, _ in harness.resent]
        if len(reports) == 1:
            assert [job_id for job_id, _ in harness.resent] == lost[:300]  # the oldest first
        harness.now += 1
        assert len(reports) <= 5, reports

    assert [(r.timed_out, r.resent) for r in reports] == [
        (300, 300), (300, 300), (300, 200), (100, 0), (0, 0),
    ]  # fmt: skip
    assert Counter(sent) == dict.fromkeys(lost, 1)
    records = harness.store.get_states(late)
    assert all(r is not None and r.status is JobStatus.TIMED_OUT for r in records)
    assert harness.store.past_deadline(harness.now, 10) == []


def test_entries_a_pass_cannot_handle_never_hide_the_ones_behind(harness: Harness) -> None:
    """600 deadline entries (more than a page, all one score) that the pass leaves in place
    (their record says the deadline has not passed: an index written by another version)
    ahead of a real late job: the pass steps past them and ends the late job."""
    stale = harness.create_many(600, deadline=900)
    harness.store.client.zadd(DEADLINES_KEY, dict.fromkeys(stale, harness.now - 50))
    late = harness.jobs.create(T2I, deadline=5, prompt="behind 600 stale entries")

    harness.sweep_later(6)

    assert harness.store.get(late).status == "timed_out"
    states = harness.store.get_states(stale)
    assert all(r is not None and r.status is JobStatus.QUEUED for r in states)


def test_jobs_in_line_are_given_free_slots_by_the_sweeper(harness: Harness) -> None:
    """A job refused for the in-flight cap waits in the fair line with no message; if the
    run that freed a slot died before giving it out, the sweeper gives the free slots to
    the jobs in line, oldest first, and sends them."""
    limiter = AccountLimiter(harness.store.client, per_minute=1_000_000, max_in_flight=10)
    fillers = [f"filler-{i}" for i in range(10)]
    for filler in fillers:
        assert limiter.acquire(filler, images=1, slot_ttl=600).granted
    job_ids = harness.create_many(3, deadline=600)
    for order, job_id in enumerate(job_ids):
        member = line_member(job_id, order=order)  # enqueued in this order
        permit = limiter.acquire(job_id, images=1, slot_ttl=600, member=member)
        assert (permit.granted, permit.reason) == (False, "in_flight")
    assert limiter.waiting() == 3

    assert harness.sweep_later(1) == []  # no slot free: they stay in line
    assert limiter.waiting() == 3
    limiter.release(fillers[0])
    limiter.release(fillers[1])
    assert harness.sweep_later(1) == [(job_ids[0], {}), (job_ids[1], {})]
    assert limiter.waiting() == 1
    # A job given a slot uses it; the one still in line gets nothing (no room).
    assert limiter.acquire(job_ids[0], images=1, slot_ttl=600).granted
    assert limiter.give_out() == ()
    assert limiter.waiting() == 1


def _park(limiter: AccountLimiter, job_ids: list[str]) -> list[str]:
    """Fill the cap with fillers, then have each job refused (and so parked)."""
    for i in range(limiter.max_in_flight - limiter.in_flight()):
        assert limiter.acquire(f"filler-{i}", images=1, slot_ttl=600).granted
    for order, job_id in enumerate(job_ids):
        member = line_member(job_id, order=order)  # enqueued in this order
        assert limiter.acquire(job_id, images=1, slot_ttl=600, member=member).reason == "in_flight"
    return [f"filler-{i}" for i in range(limiter.max_in_flight)]


def test_a_job_parked_after_a_failed_submit_is_woken(harness: Harness) -> None:
    """A 503 on submit leaves the job ``submitting`` (token given back): it still waits
    for a slot, so a wake must send it, not drop it."""
    limiter = AccountLimiter(harness.store.client, per_minute=1_000_000, max_in_flight=10)
    (job_id,) = harness.create_many(1, deadline=600)
    put_in_status(harness.store, job_id, "submitting")
    fillers = _park(limiter, [job_id])
    limiter.release(fillers[0])
    assert harness.sweep_later(1) == [(job_id, {})]


def test_a_slot_whose_job_never_came_goes_back_in_line_at_the_front(harness: Harness) -> None:
    """The run that gave a job its slot died before sending its message: the slot lapses
    after the limiter's window and the job goes back to the front of its line."""
    limiter = AccountLimiter(harness.store.client, per_minute=1_000_000, max_in_flight=10)
    first, second = harness.create_many(2, deadline=600)
    fillers = _park(limiter, [first, second])
    redis_now = float(harness.store.client.time()[0])
    limiter.release(fillers[0])
    (given,) = limiter.give_out(now=redis_now)  # ... and the sender dies here
    assert given.job_id == first and limiter.waiting() == 1
    limiter.release(fillers[1])
    # Within the window its slot is kept (the message may be late): one slot for second.
    assert [a.job_id for a in limiter.give_out(now=redis_now + 1)] == [second]
    limiter.release(fillers[2])
    # Past the window the slot lapses: first is back in line, ahead of anyone, and gets it.
    later = redis_now + limiter.window + 0.5  # first's slot lapsed, second's not yet
    assert [a.job_id for a in limiter.give_out(now=later)] == [first]


def test_an_ended_job_leaves_the_line(harness: Harness) -> None:
    limiter = AccountLimiter(harness.store.client, per_minute=1_000_000, max_in_flight=10)
    ended, waiting = harness.create_many(2, deadline=600)
    fillers = _park(limiter, [ended, waiting])
    assert harness.store.transition(ended, updates={"status": "failed"})
    assert limiter.waiting() == 1
    for filler in fillers[:5]:
        limiter.release(filler)
    assert [a.job_id for a in limiter.give_out()] == [waiting]
