"""The budget rules in the store's transition script, against a real redis-server: the
claim reserves or holds atomically, an ending bills or gives back, caps set at run time
win, a new UTC day starts from zero, and racing claims never pass a cap."""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.support.clock import ManualClock
from worker.budgets import Budgets, wake_held
from worker.constants import COUNTERS_KEY, HELD_KEY, RESERVED_KEY, SPEND_KEY
from worker.models import JobRecord, JobStatus
from worker.settings import Settings
from worker.store import (
    MAYBE_BILLED,
    NOT_BILLED,
    JobStore,
    Moved,
    counter_field,
    utc_day,
)

PRO = "flux-kontext-pro/text-to-image"
CENTS_4 = 40_000
#: 2030-01-01 23:00 UTC: an hour before a day changes.
LATE_EVENING = 1893538800.0


def _job(store: JobStore, *, tenant: str = "default", images: int = 1, **extra: object) -> str:
    now = store.clock()
    record = JobRecord.model_validate(
        {
            "id": uuid.uuid4().hex,
            "model": PRO,
            "input": {"prompt": "a cat", "num_images": images},
            "status": JobStatus.QUEUED,
            "created_at": now,
            "deadline_at": now + 3600,
            "tenant": tenant,
            **extra,
        }
    )
    store.create_job(record)
    return record.id


def _claim(store: JobStore, budgets: Budgets, job_id: str, amount: int = CENTS_4) -> Moved:
    snap = store.snapshot(job_id)
    return store.transition(
        job_id,
        expect={"prediction_id": "", "submit_token": ""},
        updates={"status": "submitting", "submit_token": uuid.uuid4().hex},
        budget=budgets.budget(
            snap.state.tenant, amount, mode="reserve", hold_until=store.clock() + 600
        ),
    )


def _submitted(store: JobStore, job_id: str) -> None:
    assert store.transition(
        job_id, updates={"status": "submitted", "prediction_id": uuid.uuid4().hex}
    )


def _complete(store: JobStore, job_id: str, cost: int = CENTS_4, outputs: int = 1) -> Moved:
    return store.transition(
        job_id,
        updates={
            "status": "completed",
            "outputs": [f"https://x/{i}.png" for i in range(outputs)],
            "cost_micros": cost,
        },
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(LATE_EVENING)


@pytest.fixture
def store(redis_url: str, clock: ManualClock) -> JobStore:
    return JobStore.from_url(redis_url, record_ttl=3600, clock=clock)


def _budgets(store: JobStore, **settings: object) -> Budgets:
    return Budgets(store.client, Settings(**settings), clock=store.clock)


def _spend(store: JobStore) -> dict[str, str]:
    return store.client.hgetall(SPEND_KEY.format(day=utc_day(store.clock())))  # type: ignore[return-value]


def test_the_claim_reserves_then_holds_when_the_cap_is_met(store: JobStore) -> None:
    budgets = _budgets(store, daily_budget_micros=100_000)
    first, second, third = (_job(store) for _ in range(3))
    assert _claim(store, budgets, first) is Moved.APPLIED
    assert _claim(store, budgets, second) is Moved.APPLIED
    assert store.client.hget(RESERVED_KEY, "total") == "80000"
    # 80,000 reserved + 40,000 > 100,000: held, nothing else written.
    assert _claim(store, budgets, third) is Moved.HELD
    snap = store.snapshot(third)
    assert snap.state.held == "budget"
    assert snap.state.status is JobStatus.QUEUED and not snap.field("submit_token")
    assert store.client.zscore(HELD_KEY, third) is not None
    assert store.client.hget(RESERVED_KEY, "total") == "80000"
    # A job that asked to fail is refused without a hold.
    failing = _job(store, on_budget="fail")
    assert _claim(store, budgets, failing) is Moved.OVER_BUDGET
    assert store.snapshot(failing).state.held is None


def test_a_check_writes_nothing_when_there_is_room(store: JobStore) -> None:
    budgets = _budgets(store, daily_budget_micros=100_000)
    job_id = _job(store)
    before = store.client.hgetall(f"wq:job:{job_id}")
    check = budgets.budget("default", CENTS_4, mode="check", hold_until=store.clock() + 600)
    assert store.transition(job_id, budget=check) is Moved.WITHIN_BUDGET
    assert store.client.hgetall(f"wq:job:{job_id}") == before
    assert not store.client.exists(RESERVED_KEY)


def test_a_completion_bills_and_a_failure_gives_back(store: JobStore) -> None:
    budgets = _budgets(store, tenant_budgets_micros={"acme": 1_000_000})
    done, failed, maybe = (_job(store, tenant="acme", images=2) for _ in range(3))
    for job_id in (done, failed, maybe):
        assert _claim(store, budgets, job_id, amount=80_000)
        _submitted(store, job_id)
    assert store.client.hgetall(RESERVED_KEY) == {"total": "240000", "acme": "240000"}

    assert _complete(store, done, cost=80_000, outputs=2)
    failure = {"status": "failed", "error": {"code": 1403, "message": "no"}}
    assert store.transition(failed, updates=failure, billing=NOT_BILLED)
    assert store.transition(maybe, updates={"status": "timed_out"})  # a prediction exists

    assert store.client.hgetall(RESERVED_KEY) == {"total": "0", "acme": "0"}
    assert _spend(store) == {
        "billed": "80000",
        "billed|acme": "80000",
        "images": "2",
        "images|acme": "2",
        "jobs": "1",
        "jobs|acme": "1",
        "unconfirmed": "80000",
        "unconfirmed|acme": "80000",
    }
    assert store.get(done).cost_micros == 80_000
    assert store.get(failed).cost_micros == 0 and not store.get(failed).cost_unconfirmed
    assert store.get(maybe).cost_micros == 0 and store.get(maybe).cost_unconfirmed
    counters = store.client.hgetall(COUNTERS_KEY)
    labels = {"model": PRO, "tenant": "acme"}
    assert counters[counter_field("spend_micros", **labels)] == "80000"
    assert counters[counter_field("images_billed", **labels)] == "2"
    assert counters[counter_field("spend_unconfirmed_micros", **labels)] == "80000"
    # The day's spend outlives the records, as the daily aggregate does.
    assert store.client.ttl(SPEND_KEY.format(day=utc_day(store.clock()))) > 300 * 86400
    # Unconfirmed spend counts against the caps: 1.00 - 0.08 - 0.08 leaves 0.84.
    assert budgets.status("acme").remaining == 840_000


def test_an_ending_is_counted_once_and_a_queued_cancel_costs_nothing(store: JobStore) -> None:
    budgets = _budgets(store)
    job_id = _job(store)
    assert _claim(store, budgets, job_id)
    _submitted(store, job_id)
    assert _complete(store, job_id)
    assert _complete(store, job_id) is Moved.FINISHED
    assert _spend(store)["billed"] == "40000"
    queued = _job(store)
    [result] = store.cancel([queued])
    assert result.cancelled_now
    assert store.get(queued).cost_micros == 0 and not store.get(queued).cost_unconfirmed
    assert "unconfirmed" not in _spend(store)


def test_a_prediction_that_may_run_counts_as_unconfirmed_when_cancelled(store: JobStore) -> None:
    budgets = _budgets(store)
    job_id = _job(store)
    assert _claim(store, budgets, job_id)
    _submitted(store, job_id)
    store.cancel([job_id])
    assert _spend(store)["unconfirmed"] == "40000"
    assert store.get(job_id).cost_unconfirmed


def test_a_refused_submit_is_not_billed_even_with_its_token(store: JobStore) -> None:
    budgets = _budgets(store)
    job_id = _job(store)
    assert _claim(store, budgets, job_id)
    failure = {"status": "failed", "error": {"code": 400, "message": "bad"}}
    assert store.transition(job_id, updates=failure, billing=NOT_BILLED)
    assert "unconfirmed" not in _spend(store)
    other = _job(store)
    assert _claim(store, budgets, other)
    assert store.transition(other, updates=failure, billing=MAYBE_BILLED)
    assert _spend(store)["unconfirmed"] == "40000"


def test_runtime_caps_win_over_the_settings(store: JobStore) -> None:
    budgets = _budgets(store, tenant_budgets_micros={"acme": 10_000_000, "*": 0})
    assert _claim(store, budgets, _job(store, tenant="acme"))
    # "*" = 0 in the settings: every other tenant is held.
    assert _claim(store, budgets, _job(store, tenant="beta")) is Moved.HELD
    budgets.set_cap("*", 1_000_000)
    assert _claim(store, budgets, _job(store, tenant="beta")) is Moved.APPLIED
    budgets.set_cap("acme", 40_000)  # acme's own run-time cap: already used
    assert _claim(store, budgets, _job(store, tenant="acme")) is Moved.HELD
    budgets.set_cap("acme", None)  # no cap at all for acme
    assert _claim(store, budgets, _job(store, tenant="acme")) is Moved.APPLIED
    budgets.set_cap(None, 0)  # the whole account
    assert _claim(store, budgets, _job(store, tenant="acme")) is Moved.HELD
    budgets.clear_cap(None)
    assert _claim(store, budgets, _job(store, tenant="acme")) is Moved.APPLIED
    status = budgets.status("acme")
    assert status.own.cap.micros is None and status.own.cap.source == "runtime"


def test_a_new_utc_day_starts_from_zero(store: JobStore, clock: ManualClock) -> None:
    budgets = _budgets(store, daily_budget_micros=40_000)
    first = _job(store)
    assert _claim(store, budgets, first)
    _submitted(store, first)
    assert _complete(store, first)
    held = _job(store)
    assert _claim(store, budgets, held) is Moved.HELD
    clock.advance(3600)  # past midnight UTC
    assert budgets.status("default").remaining == 40_000
    sent: list[str] = []
    assert wake_held(budgets, store.snapshots, lambda snap: sent.append(snap.state.id)) == 1
    assert sent == [held]
    assert _claim(store, budgets, held) is Moved.APPLIED
    assert store.snapshot(held).state.held is None
    assert store.client.zscore(HELD_KEY, held) is None


def test_a_wake_sends_only_what_the_room_holds(store: JobStore, clock: ManualClock) -> None:
    budgets = _budgets(store, daily_budget_micros=0)
    held = [_job(store) for _ in range(5)]
    for job_id in held:
        assert _claim(store, budgets, job_id) is Moved.HELD
        clock.advance(1)  # held one after the other: woken oldest first
    sent: list[str] = []
    budgets.set_cap(None, 100_000)  # room for two
    assert wake_held(budgets, store.snapshots, lambda snap: sent.append(snap.state.id)) == 2
    assert sent == held[:2]
    # Not looked at again before the grace period (their messages may still be queued).
    assert wake_held(budgets, store.snapshots, lambda snap: sent.append(snap.state.id)) == 0


def test_racing_claims_never_pass_the_cap(store: JobStore) -> None:
    """Twelve threads claim 40 jobs at once against a cap of ten jobs' worth."""
    budgets = _budgets(store, daily_budget_micros=10 * CENTS_4)
    job_ids = [_job(store) for _ in range(40)]
    verdicts: dict[str, Moved] = {}
    barrier = threading.Barrier(12)
    lock = threading.Lock()

    def claim(mine: list[str]) -> None:
        barrier.wait()
        for job_id in mine:
            moved = _claim(store, budgets, job_id)
            with lock:
                verdicts[job_id] = moved

    threads = [threading.Thread(target=claim, args=(job_ids[i::12],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    applied = [j for j, moved in verdicts.items() if moved is Moved.APPLIED]
    assert len(applied) == 10
    assert sorted({m.name for m in verdicts.values()}) == ["APPLIED", "HELD"]
    assert store.client.hget(RESERVED_KEY, "total") == str(10 * CENTS_4)


def test_a_cost_recorded_before_the_end_is_billed_once(store: JobStore) -> None:
    """A completed prediction's cost may be recorded by a write that does not end the job
    (outputs still to copy to durable storage, say): billed then, once, with the
    reservation given back; a later ending (even not a completion) changes nothing."""
    budgets = _budgets(store, daily_budget_micros=1_000_000)
    job_id = _job(store)
    assert _claim(store, budgets, job_id)
    _submitted(store, job_id)
    assert store.transition(
        job_id,
        updates={"status": "processing", "outputs": ["https://x/0.png"], "cost_micros": CENTS_4},
    )
    assert _spend(store)["billed"] == "40000"
    assert store.client.hget(RESERVED_KEY, "total") == "0"
    assert not store.snapshot(job_id).field("reserved")
    assert store.transition(job_id, updates={"status": "timed_out"})
    assert _spend(store)["billed"] == "40000" and "unconfirmed" not in _spend(store)
    assert store.client.hget(RESERVED_KEY, "total") == "0"
    record = store.get(job_id)
    assert record.cost_micros == CENTS_4 and not record.cost_unconfirmed


def test_a_reservation_recorded_by_an_earlier_release_is_given_back(store: JobStore) -> None:
    """Records written before the field was renamed hold ``reserved_micros``: an ending
    gives that reservation back."""
    budgets = _budgets(store, daily_budget_micros=1_000_000)
    job_id = _job(store)
    assert _claim(store, budgets, job_id)
    # As an earlier release left it: the reservation under its old name.
    store.client.hdel(f"wq:job:{job_id}", "reserved")
    store.client.hset(f"wq:job:{job_id}", "reserved_micros", CENTS_4)
    assert store.client.hget(RESERVED_KEY, "total") == str(CENTS_4)
    assert store.transition(job_id, updates={"status": "failed"})
    assert store.client.hget(RESERVED_KEY, "total") == "0"
    assert not store.client.hexists(f"wq:job:{job_id}", "reserved_micros")
