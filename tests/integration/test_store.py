"""The job store against a real redis-server: compare-and-set, TTLs, events, idempotency."""

from __future__ import annotations

import json
import threading
import time
import uuid

import redis

from worker.constants import DEADLINES_KEY, IN_FLIGHT_KEY, JOB_EVENTS_CHANNEL, JOB_KEY
from worker.models import JobRecord, JobStatus
from worker.store import JobStore


def _record(**overrides: object) -> JobRecord:
    now = time.time()
    values: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "model": "flux-kontext-max/text-to-image",
        "input": {"prompt": "a cat"},
        "status": JobStatus.QUEUED,
        "created_at": now,
        "deadline_at": now + 60,
        "metadata": {"user": 7},
    }
    values.update(overrides)
    return JobRecord.model_validate(values)


def test_create_and_read_back(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=3600)
    record = _record()
    job_id, created = store.create_job(record)
    assert created and job_id == record.id
    assert store.get(job_id) == record
    assert store.client.zscore(DEADLINES_KEY, job_id) == record.deadline_at


def test_idempotency_key_returns_the_first_job(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=3600)
    first, second = _record(), _record()
    assert store.create_job(first, idempotency_key="order-1") == (first.id, True)
    assert store.create_job(second, idempotency_key="order-1") == (first.id, False)
    assert not store.client.exists(JOB_KEY.format(job_id=second.id))


def test_only_one_of_many_concurrent_claims_wins(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=3600)
    job_id, _ = store.create_job(_record())
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def claim(token: str) -> None:
        barrier.wait()
        if store.transition(
            job_id,
            expect={"status": "queued", "submit_token": ""},
            updates={"status": "submitting", "submit_token": token},
        ):
            wins.append(token)

    threads = [threading.Thread(target=claim, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert store.snapshot(job_id).field("submit_token") == wins[0]


def test_terminal_transition_expires_unindexes_and_announces(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    job_id, _ = store.create_job(_record())
    store.client.zadd(IN_FLIGHT_KEY, {job_id: time.time() + 100})
    pubsub = store.client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(JOB_EVENTS_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscribe confirmation

    assert store.transition(
        job_id,
        expect={"status": ["queued", "submitted"]},
        updates={"status": "completed", "outputs": ["http://x/1.png"]},
    )
    message = pubsub.get_message(timeout=2)
    assert message is not None
    assert json.loads(message["data"]) == {"job_id": job_id, "status": "completed"}
    assert 0 < store.client.ttl(JOB_KEY.format(job_id=job_id)) <= 120
    assert store.client.zscore(DEADLINES_KEY, job_id) is None
    assert store.client.zscore(IN_FLIGHT_KEY, job_id) is None
    assert store.get(job_id).outputs == ["http://x/1.png"]
    # nothing leaves a terminal status
    assert not store.transition(job_id, expect={"status": ["queued"]}, updates={"status": "failed"})


def test_missing_record_never_matches(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    assert not store.transition("nope", expect={}, updates={"status": "failed"})
    assert not redis.Redis.from_url(redis_url).exists(JOB_KEY.format(job_id="nope"))


def test_expected_latency_is_the_recent_median(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    assert store.expected_latency("m") is None
    for seconds in (1.0, 9.0, 3.0):
        store.record_latency("m", seconds)
    assert store.expected_latency("m") == 3.0
