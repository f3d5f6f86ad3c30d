"""The job store against a real redis-server: compare-and-set, TTLs, events, idempotency."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import redis

from tests.support.records import put_in_status
from worker.constants import DEADLINES_KEY, IN_FLIGHT_KEY, JOB_EVENT_CHANNEL, JOB_KEY, LIVE_KEY
from worker.errors import UnreadableRecordError
from worker.models import JobRecord, JobStatus
from worker.store import MOVES, JobStore, Moved, NewJob, counter_field


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
    pubsub.subscribe(JOB_EVENT_CHANNEL.format(job_id=job_id))
    pubsub.get_message(timeout=1)  # the subscribe confirmation

    put_in_status(store, job_id, "submitted")
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
    assert store.transition(job_id, updates={"status": "failed"}) is Moved.FINISHED


def test_missing_record_never_matches(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    assert not store.transition("nope", expect={}, updates={"status": "failed"})
    assert not redis.Redis.from_url(redis_url).exists(JOB_KEY.format(job_id="nope"))


def test_completion_effects_are_written_only_when_the_move_applies(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    job_id, _ = store.create_job(_record())
    put_in_status(store, job_id, "submitted")
    effects = [
        *store.observation("end_to_end_seconds", 3.0, (1.0, 5.0)),
        store.latency_sample("m", 2.5),
    ]
    for _ in range(2):  # the second copy finds the job completed: no second observation
        store.transition(job_id, updates={"status": "completed"}, effects=effects)
    histogram = store.client.hgetall("wq:hist:end_to_end_seconds")
    assert histogram == {"le=5.0": "1", "sum": "3", "count": "1"}
    assert store.latency_samples("m") == [2.5]


def test_the_request_lives_apart_and_the_hash_stays_compact(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    long_prompt = "a lighthouse on a cliff at dusk, waves crashing, " * 20
    job_id, _ = store.create_job(_record(input={"prompt": long_prompt}))
    key = JOB_KEY.format(job_id=job_id)
    assert store.client.object("encoding", key) == "listpack"
    assert "input" not in store.client.hkeys(key)
    assert store.get(job_id).input == {"prompt": long_prompt}
    assert store.request(job_id).input == {"prompt": long_prompt}
    put_in_status(store, job_id, "failed")
    assert 0 < store.client.ttl(f"wq:job:{job_id}:request") <= 120


def test_live_counts_follow_every_move(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    first, _ = store.create_job(_record())
    second, _ = store.create_job(_record())
    put_in_status(store, first, "processing")
    put_in_status(store, second, "completed")
    live = {k: int(v) for k, v in store.client.hgetall("wq:live").items() if int(v)}
    assert live == {"processing|flux-kontext-max/text-to-image": 1}


# the status machine ------------------------------------------------------------

ALL_STATUSES = list(JobStatus)


@pytest.mark.parametrize("current", ALL_STATUSES)
def test_every_status_change_is_checked_against_the_machine(
    redis_url: str, current: JobStatus
) -> None:
    """From each status, each target: applied iff the machine allows it; refused moves
    change nothing."""
    store = JobStore.from_url(redis_url, record_ttl=120)
    for target in ALL_STATUSES:
        job_id, _ = store.create_job(_record())
        put_in_status(store, job_id, current)
        before = store.client.hgetall(JOB_KEY.format(job_id=job_id))
        moved = store.transition(job_id, updates={"status": target.value, "prediction_id": "p"})
        if current.is_terminal:
            assert moved is Moved.FINISHED
        elif target == current or target in MOVES[current]:
            assert moved is Moved.APPLIED, (current, target)
            continue
        else:
            assert moved is Moved.ILLEGAL, (current, target)
        assert store.client.hgetall(JOB_KEY.format(job_id=job_id)) == before


def test_a_terminal_record_takes_no_write_no_increment_and_no_event(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    job_id, _ = store.create_job(_record())
    put_in_status(store, job_id, "timed_out")
    pubsub = store.client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(JOB_EVENT_CHANNEL.format(job_id=job_id))
    pubsub.get_message(timeout=1)
    before = store.client.hgetall(JOB_KEY.format(job_id=job_id))

    moved = store.transition(
        job_id,
        updates={"status": "completed", "outputs": ["http://x/late.png"]},
        increments={"polls": 1},
        count=[counter_field("polls", model="m")],
        count_if_applied=[counter_field("jobs_completed", model="m")],
    )

    assert moved is Moved.FINISHED and not moved
    assert store.client.hgetall(JOB_KEY.format(job_id=job_id)) == before
    counters = store.counters()
    assert counters[("polls", (("model", "m"),))] == 1  # the GET happened: counted
    assert ("jobs_completed", (("model", "m"),)) not in counters
    store.client.publish(JOB_EVENT_CHANNEL.format(job_id=job_id), "marker")
    messages = [pubsub.get_message(timeout=5) for _ in range(1)]
    assert messages[0] is not None and messages[0]["data"] == "marker"


def test_a_missing_record_is_never_created_by_a_write(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    moved = store.transition("gone", updates={"poll_seq": 3}, increments={"polls": 1})
    assert moved is Moved.MISSING
    assert not store.client.exists(JOB_KEY.format(job_id="gone"))


def test_a_status_from_a_newer_version_is_left_alone(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    job_id, _ = store.create_job(_record())
    store.client.hset(JOB_KEY.format(job_id=job_id), "status", "paused")
    assert store.transition(job_id, updates={"status": "failed"}) is Moved.UNKNOWN_STATUS
    assert store.client.hget(JOB_KEY.format(job_id=job_id), "status") == "paused"
    with pytest.raises(UnreadableRecordError, match="status"):
        store.get(job_id)


def test_a_new_deadline_is_indexed_with_the_write(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=120)
    job_id, _ = store.create_job(_record())
    assert store.transition(job_id, updates={"deadline_at": 12345.0})
    assert store.client.zscore(DEADLINES_KEY, job_id) == 12345.0


def test_a_retried_call_is_applied_once(redis_url: str) -> None:
    """redis-py re-sends a script whose reply was lost: the second call finds it applied
    (instead of failing its own compare-and-set), and counts nothing twice."""
    store = JobStore.from_url(redis_url, record_ttl=120)
    job_id, _ = store.create_job(_record())
    call = {
        "expect": {"poll_seq": ""},
        "updates": {"poll_seq": 1},
        "increments": {"polls": 1},
        "count": [counter_field("polls", model="m")],
        "write_id": "w-1",
    }
    assert store.transition(job_id, **call) is Moved.APPLIED  # type: ignore[arg-type]
    assert store.transition(job_id, **call) is Moved.APPLIED  # type: ignore[arg-type]
    assert store.get(job_id).polls == 1
    assert store.counters()[("polls", (("model", "m"),))] == 1
    assert store.transition(job_id, **{**call, "write_id": "w-2"}) is Moved.MISMATCH  # type: ignore[arg-type]


def test_pipelined_scripts_survive_a_flushed_script_cache(redis_url: str) -> None:
    """Pipelines call the scripts by SHA; a Redis that lost them (restart, failover)
    gets them again, and each call still runs exactly once."""
    store = JobStore.from_url(redis_url, record_ttl=120)
    store.client.script_flush()
    (job_id, created), (other_id, _) = store.create_jobs(
        [NewJob(_record()), NewJob(_record(input={"prompt": "a dog"}))]
    )
    assert created
    assert store.client.hget(LIVE_KEY, f"queued|{store.get(job_id).model}") == "2"

    store.client.script_flush()
    moved, request = store.transition_and_read_request(
        job_id,
        expect={"status": "queued", "submit_token": ""},
        updates={"status": "submitting", "submit_token": "t1"},
    )
    assert moved is Moved.APPLIED
    assert request is not None and request.input == store.get(job_id).input
    assert store.snapshot(other_id).state.status == JobStatus.QUEUED
