"""The list index against a real redis-server: the store's scripts keep it (one entry per
job, moved at every status change, trimmed with the record TTL), and a page costs the
same Redis commands however many jobs there are."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator

import pytest
import redis

from producer import JobClient, ValidationError
from tests.support.clock import ManualClock
from tests.support.records import put_in_status
from worker.constants import JOB_KEY, JOBS_INDEX_PREFIX, JOBS_REGISTRY_KEY
from worker.job_listing import JobFilter, index_figures, list_jobs
from worker.models import JobRecord, JobStatus
from worker.store import JobStore
from worker.timeline import TIMELINE_LIMIT, parse_timeline

T2I = "flux-kontext-max/text-to-image"
EDIT = "flux-kontext-pro"


def _record(created_at: float, model: str = T2I, tenant: str = "default") -> JobRecord:
    return JobRecord(
        id=uuid.uuid4().hex,
        model=model,
        input={"prompt": "listed"} if model == T2I else {"prompt": "x", "image": "data:,"},
        status=JobStatus.QUEUED,
        created_at=created_at,
        deadline_at=created_at + 600,
        tenant=tenant,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


@pytest.fixture
def store(redis_url: str, clock: ManualClock) -> Iterator[JobStore]:
    store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True), record_ttl=3600,
                     clock=clock)  # fmt: skip
    yield store
    store.client.close()


def _entries(store: JobStore) -> dict[str, str]:
    """job id -> the index set it is in, from every set of the index."""
    found: dict[str, str] = {}
    for key in store.client.scan_iter(JOBS_INDEX_PREFIX + "*"):
        for member in store.client.zrange(key, 0, -1):
            job_id = str(member).rpartition(":")[2]
            assert job_id not in found, f"{job_id} is in two sets"
            found[job_id] = str(key).removeprefix(JOBS_INDEX_PREFIX)
    return found


def _ids(store: JobStore, **wanted: object) -> list[str]:
    page = list_jobs(store, JobFilter(**wanted), limit=100)  # type: ignore[arg-type]
    return [state.id for state in page.jobs]


def test_each_job_is_in_one_set_that_follows_its_status(
    store: JobStore, clock: ManualClock
) -> None:
    first, second, third = (_record(clock.advance(1)) for _ in range(3))
    for record in (first, second, third):
        store.create_job(record)
    assert set(_entries(store).values()) == {f"queued|{T2I}|default"}

    clock.advance(5)
    put_in_status(store, second.id, JobStatus.COMPLETED)
    clock.advance(5)
    put_in_status(store, first.id, JobStatus.FAILED)
    assert _entries(store) == {
        first.id: f"failed|{T2I}|default",
        second.id: f"completed|{T2I}|default",
        third.id: f"queued|{T2I}|default",
    }
    # Newest status change first.
    assert _ids(store) == [first.id, second.id, third.id]
    assert _ids(store, statuses=frozenset({"queued"})) == [third.id]
    assert _ids(store, statuses=frozenset({"failed", "completed"})) == [first.id, second.id]
    # A bookkeeping write (no status change) leaves the index alone.
    store.transition(third.id, updates={"deadline_at": clock() + 900})
    assert _entries(store)[third.id] == f"queued|{T2I}|default"


def test_a_job_created_between_two_milliseconds_leaves_its_queued_set(
    store: JobStore, clock: ManualClock
) -> None:
    """The record keeps times to the millisecond; the entry its creation made must be the
    one its first move takes out (a creation time with more digits left it behind)."""
    record = _record(clock.advance(0.123456789))
    store.create_job(record)
    clock.advance(1.0004321)
    put_in_status(store, record.id, JobStatus.SUBMITTING)
    put_in_status(store, record.id, JobStatus.COMPLETED)
    assert _entries(store) == {record.id: f"completed|{T2I}|default"}
    assert store.client.hget(JOB_KEY.format(job_id=record.id), "created_at") == "1800000000.123"


def test_filters_by_model_tenant_and_time(store: JobStore, clock: ManualClock) -> None:
    edit = _record(clock(), model=EDIT, tenant="shop")
    t2i = _record(clock(), tenant="shop")
    other = _record(clock(), tenant="blog")
    for record in (edit, t2i, other):
        store.create_job(record)
    clock.advance(3600)
    put_in_status(store, t2i.id, JobStatus.FAILED)

    assert _ids(store, models=frozenset({EDIT})) == [edit.id]
    assert set(_ids(store, tenants=frozenset({"shop"}))) == {edit.id, t2i.id}
    assert _ids(store, tenants=frozenset({"blog"}), models=frozenset({EDIT})) == []
    # since: entered its status at or after (t2i failed an hour after the others queued).
    assert _ids(store, since=clock() - 60) == [t2i.id]
    assert _ids(store, statuses=frozenset({"failed"}), since=clock() + 1) == []


def test_pages_are_exact_when_many_jobs_share_a_time(redis_url: str) -> None:
    with JobClient(redis_url=redis_url) as client:
        ids = client.submit_many(
            [client.prepare({"kind": "text-to-image", "prompt": f"tie {n}"}) for n in range(25)]
        )
        seen: list[str] = []
        cursor = None
        sizes = []
        while True:
            page = client.list(status="queued", limit=10, cursor=cursor)
            sizes.append(len(page.jobs))
            seen.extend(state.id for state in page.jobs)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert sizes == [10, 10, 5]
        assert sorted(seen) == sorted(ids) and len(set(seen)) == 25
        with pytest.raises(ValidationError) as caught:
            client.list(status="lost", limit=0, cursor="nope")
        assert set(caught.value.problems) == {"status", "limit", "cursor"}
        assert client.list(since=datetime.timedelta(hours=1), limit=1).next_cursor is not None


def test_ended_jobs_leave_the_index_with_their_records(store: JobStore, clock: ManualClock) -> None:
    old, new = _record(clock()), _record(clock())
    store.create_job(old)
    store.create_job(new)
    put_in_status(store, old.id, JobStatus.FAILED)
    key = JOBS_INDEX_PREFIX + f"failed|{T2I}|default"
    assert 0 < store.client.ttl(key) <= store.record_ttl
    clock.advance(store.record_ttl + 1)
    put_in_status(store, new.id, JobStatus.FAILED)  # trims what is older than the TTL
    assert _entries(store) == {new.id: f"failed|{T2I}|default"}


def test_a_listing_drops_entries_of_records_that_are_gone(
    store: JobStore, clock: ManualClock
) -> None:
    records = [_record(clock.advance(1)) for _ in range(4)]
    for record in records:
        store.create_job(record)
    store.client.delete(JOB_KEY.format(job_id=records[-1].id))  # expired while queued
    page = list_jobs(store, JobFilter(), limit=3)
    assert [s.id for s in page.jobs] == [r.id for r in reversed(records[:-1])]
    assert records[-1].id not in _entries(store)
    # A set left empty leaves the registry too.
    for record in records[:-1]:
        store.client.delete(JOB_KEY.format(job_id=record.id))
    assert list_jobs(store, JobFilter(), limit=3).jobs == []
    assert list_jobs(store, JobFilter(), limit=3).jobs == []
    assert store.client.smembers(JOBS_REGISTRY_KEY) == set()


def _commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


def _cost_of_a_page(client: JobClient) -> dict[str, int]:
    before = _commands(client.store.client)
    page = client.list(status="queued", limit=20)
    after = _commands(client.store.client)
    assert len(page.jobs) == 20
    cost = {name: after[name] - before.get(name, 0) for name in after}
    cost["cmdstat_info"] -= 1  # the second INFO itself
    return {name: calls for name, calls in cost.items() if calls}


def test_a_page_costs_the_same_for_fifty_jobs_or_three_thousand(redis_url: str) -> None:
    with JobClient(redis_url=redis_url) as client:
        client.submit_many(
            [client.prepare({"kind": "text-to-image", "prompt": f"few {n}"}) for n in range(50)]
        )
        few = _cost_of_a_page(client)
        client.submit_many(
            [client.prepare({"kind": "text-to-image", "prompt": f"many {n}"}) for n in range(2950)]
        )
        many = _cost_of_a_page(client)
    assert few == many, (few, many)
    assert sum(many.values()) <= 25  # a page: one SMEMBERS, one ZREVRANGEBYLEX, 20 HGETALLs


def test_figures_oldest_waiting_and_ended_in_the_last_hour(
    store: JobStore, clock: ManualClock
) -> None:
    start = clock()
    waiting = [_record(clock.advance(10)) for _ in range(2)]
    done = [_record(clock()) for _ in range(4)]
    for record in (*waiting, *done):
        store.create_job(record)
    put_in_status(store, done[0].id, JobStatus.COMPLETED)  # two hours before "now"
    clock.advance(3600 + 1)
    put_in_status(store, done[1].id, JobStatus.COMPLETED)
    put_in_status(store, done[2].id, JobStatus.COMPLETED)
    put_in_status(store, done[3].id, JobStatus.FAILED)
    clock.advance(3000)
    figures = index_figures(store.client, clock())
    assert figures.oldest_queued_at == pytest.approx(start + 10, abs=1e-5)
    assert figures.ended == {"completed": 2, "failed": 1, "timed_out": 0, "cancelled": 0}


def test_the_record_keeps_a_short_timeline(store: JobStore, clock: ManualClock) -> None:
    record = _record(clock())
    store.create_job(record)
    clock.advance(0.5)
    store.transition(record.id, updates={"status": "submitting"}, increments={"attempts": 1})
    clock.advance(0.5)
    store.transition(record.id, updates={"status": "submitted"})
    for _ in range(3):
        clock.advance(2)
        store.transition(record.id, increments={"polls": 1})
    clock.advance(1)
    store.transition(record.id, updates={"status": "completed"}, increments={"polls": 1})
    events = parse_timeline(store.snapshot(record.id).field("timeline"))
    assert [(e.what, e.at) for e in events] == [
        ("queued", 0.0), ("submitting", 0.5), ("submitted", 1.0), ("poll 1", 3.0),
        ("poll 2", 5.0), ("poll 3", 7.0), ("poll 4", 8.0), ("completed", 8.0),
    ]  # fmt: skip
    # A refused write adds nothing: the record is finished.
    store.transition(record.id, increments={"polls": 1})
    assert len(parse_timeline(store.snapshot(record.id).field("timeline"))) == len(events)


def test_a_long_timeline_stops_growing_but_keeps_the_ending(
    store: JobStore, clock: ManualClock
) -> None:
    record = _record(clock())
    store.create_job(record)
    put_in_status(store, record.id, JobStatus.SUBMITTED)
    for _ in range(200):
        clock.advance(1)
        store.transition(record.id, increments={"polls": 1})
    text = store.snapshot(record.id).field("timeline")
    assert TIMELINE_LIMIT <= len(text) < TIMELINE_LIMIT + 20
    store.transition(record.id, updates={"status": "failed"})
    assert parse_timeline(store.snapshot(record.id).field("timeline"))[-1].what == "failed"
