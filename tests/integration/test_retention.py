"""Retention: finished records expire after the default TTL; what outlives them is the
day's aggregate, written by the same transition that ends the job (real redis-server,
and a real worker with the emulator for the end-to-end case)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.records import put_in_status
from tests.support.stack import WorkerStack, worker_stack
from worker.constants import DAILY_KEY, DAILY_TTL, JOB_KEY, REQUEST_KEY, TENANT_LIVE_KEY
from worker.models import JobRecord, JobStatus
from worker.settings import Settings
from worker.store import JobStore, utc_day

T2I = "flux-kontext-max/text-to-image"
EDIT = "flux-kontext-pro"
DAY = 24 * 3600


def _record(model: str = T2I) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=uuid.uuid4().hex,
        model=model,
        input={"prompt": "a lighthouse"},
        status=JobStatus.QUEUED,
        created_at=now,
        deadline_at=now + 60,
    )


def _today(store: JobStore, before: str) -> dict[str, dict[str, int]]:
    """The aggregate of today; also the day before if midnight (UTC) passed meanwhile."""
    days = sorted({before, utc_day(store.clock())})
    merged: dict[str, dict[str, int]] = {}
    for totals in store.daily_totals(days):
        for model, measures in totals.by_model.items():
            row = merged.setdefault(model, {})
            for measure, value in measures.items():
                row[measure] = row.get(measure, 0) + value
    return merged


def test_the_default_keeps_a_finished_record_one_day(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    assert settings.record_ttl == DAY
    store = JobStore.from_settings(settings)
    live, _ = store.create_job(_record())
    done, _ = store.create_job(_record())
    put_in_status(store, done, "completed", outputs=["http://x/1.png"])

    for key in (JOB_KEY, REQUEST_KEY):
        assert DAY - 60 < store.client.ttl(key.format(job_id=done)) <= DAY
        assert store.client.ttl(key.format(job_id=live)) == -1  # a live job never expires


def test_the_day_aggregate_counts_each_ending_once(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    day = utc_day(store.clock())
    completed, _ = store.create_job(_record())
    failed, _ = store.create_job(_record())
    timed_out, _ = store.create_job(_record(EDIT))
    put_in_status(store, completed, "submitted")
    ending = {
        "status": "completed",
        "outputs": ["http://x/1.png", "http://x/2.png"],
        "inference_ms": 1500,
    }
    assert store.transition(completed, updates=ending)
    assert not store.transition(completed, updates=ending)  # a second copy: nothing counted
    put_in_status(store, failed, "failed")
    put_in_status(store, timed_out, "timed_out")
    live, _ = store.create_job(_record())
    put_in_status(store, live, "processing")  # not finished: not in the aggregate

    assert _today(store, day) == {
        T2I: {"completed": 1, "failed": 1, "outputs": 2, "inference_ms": 1500},
        EDIT: {"timed_out": 1},
    }
    key = DAILY_KEY.format(day=utc_day(store.clock()))
    assert DAILY_TTL - 60 < store.client.ttl(key) <= DAILY_TTL
    # The aggregate outlives the records: gone records leave it as it was.
    store.client.delete(*(JOB_KEY.format(job_id=j) for j in (completed, failed, timed_out)))
    assert _today(store, day)[T2I]["completed"] == 1


# end to end: a real worker and the emulator ---------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    with worker_stack(tmp_path_factory.mktemp("retention")) as running:
        yield running


def test_a_worker_adds_completed_and_failed_jobs_to_the_day(stack: WorkerStack) -> None:
    stack.emulator.configure(
        faults={"prediction_failed": {"code": 1403, "prompt_contains": "doomed"}}
    )
    store = stack.jobs.store
    day = utc_day(store.clock())
    good = stack.jobs.enqueue(T2I, prompt="a lantern")
    bad = stack.jobs.enqueue(T2I, prompt="a doomed lantern")
    records = stack.jobs.wait([good, bad], timeout=30)
    assert [r.status for r in records] == [JobStatus.COMPLETED, JobStatus.FAILED]

    row = _today(store, day)[T2I]
    assert (row["completed"], row["failed"], row["outputs"]) == (1, 1, 1)
    assert records[0].inference_ms is not None
    assert row["inference_ms"] == round(records[0].inference_ms)
    finished = JOB_KEY.format(job_id=good)
    assert 0 < store.client.ttl(finished) <= stack.jobs.settings.record_ttl


def test_per_tenant_figures_outlive_the_records(redis_url: str) -> None:
    """A finished record expires after the TTL (1 s here); the tenant's counts do not."""
    client = JobStore.from_url(redis_url, record_ttl=60).client
    store = JobStore(client, record_ttl=1)
    record = _record().model_copy(update={"tenant": "acme"})
    job_id, _ = store.create_job(record)
    assert client.hget(TENANT_LIVE_KEY, "queued|acme") == "1"
    put_in_status(store, job_id, "completed", outputs=["http://x/1.png"])
    deadline = time.monotonic() + 30
    while client.exists(JOB_KEY.format(job_id=job_id)):  # Redis expires it by itself
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (
        store.counters()[("tenant_jobs_ended", (("status", "completed"), ("tenant", "acme")))] == 1
    )
    live = {
        str(k): int(v)
        for k, v in client.hgetall(TENANT_LIVE_KEY).items()
        if str(k).endswith("|acme")
    }
    assert set(live.values()) == {0}  # counted in, counted out: nothing live is left
