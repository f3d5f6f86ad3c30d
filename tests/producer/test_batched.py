"""``prepare_many`` / ``submit_many`` and ``wait_all`` through the real stack (a worker, the
emulator over HTTP): batched jobs complete, each submitted once; a bad item enqueues
nothing; a waiter whose pub/sub connection is killed still sees every job end."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from producer import (
    IdempotencyConflictError,
    JobClient,
    JobRecord,
    JobStatus,
    Priority,
    ValidationError,
)
from tests.producer.conftest import ProducerStack
from tests.support.emulator import input_key
from tests.support.jobs import Enqueuer
from worker.settings import Settings

T2I = "wavespeed-ai/flux-kontext-max/text-to-image"


def _requests(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"kind": "text-to-image", "prompt": f"{prefix} {n}", "seed": n} for n in range(count)]


def test_a_batch_completes_in_order_each_job_submitted_once(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    requests = _requests("batched lighthouse", 40)
    requests[3]["priority"] = "high"
    requests[7]["metadata"] = {"order": 7}
    job_ids = stack_client.submit_many(stack_client.prepare_many(requests))

    assert len(set(job_ids)) == 40
    records = stack_client.wait_all(job_ids, timeout=60)
    assert [record.id for record in records] == job_ids
    assert all(record.status is JobStatus.COMPLETED for record in records)
    assert [record.input["prompt"] for record in records] == [r["prompt"] for r in requests]
    assert records[3].priority is Priority.HIGH
    assert records[7].metadata == {"order": 7}
    per_input = stack.submissions_per_input()
    assert all(per_input[input_key(T2I, record.input)] == 1 for record in records)
    assert stack.emulator.stats()["submissions"]["total"] == 40


def test_an_idempotency_key_gives_one_job_within_a_batch_and_across_batches(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    keyed = {"kind": "text-to-image", "prompt": "keyed once", "idempotency_key": "k-1"}
    first, again, other = stack_client.submit_many(
        stack_client.prepare_many([keyed, keyed, {"kind": "text-to-image", "prompt": "not keyed"}])
    )
    later = stack_client.submit_many([stack_client.prepare(keyed)])
    # The key with another request is a conflict (issue #12), not the first job in silence.
    with pytest.raises(IdempotencyConflictError):
        stack_client.submit_many([stack_client.prepare({**keyed, "prompt": "keyed twice"})])

    assert again == first and later == [first] and other != first
    keyed_record, unkeyed = stack_client.wait_all([first, other], timeout=60)
    assert keyed_record.input["prompt"] == "keyed once"
    assert keyed_record.status is unkeyed.status is JobStatus.COMPLETED
    assert stack.emulator.stats()["submissions"]["total"] == 2


def _keys(redis_url: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    keys: list[bytes] = client.keys("*")  # type: ignore[assignment]
    client.close()
    return keys


def test_one_bad_request_enqueues_nothing_and_is_named(redis_url: str) -> None:
    requests = _requests("fine", 6)
    requests[2]["guidance_scale"] = 99
    requests[4] = {"kind": "sketch", "prompt": "no such kind"}
    with JobClient(redis_url=redis_url) as client, pytest.raises(ValidationError) as raised:
        client.submit_many(client.prepare_many(requests))
    assert set(raised.value.problems) == {"item2.guidance_scale", "item4.kind"}
    assert "item2.guidance_scale" in str(raised.value)
    assert _keys(redis_url) == []


def test_an_item_that_was_not_prepared_enqueues_nothing(redis_url: str) -> None:
    with JobClient(redis_url=redis_url) as client:
        good = client.prepare({"kind": "text-to-image", "prompt": "fine"})
        with pytest.raises(ValidationError) as raised:
            client.submit_many([good, {"kind": "text-to-image", "prompt": "raw"}])  # type: ignore[list-item]
    assert list(raised.value.problems) == ["item1"]
    assert _keys(redis_url) == []


def test_wait_all_sees_every_end_when_its_pubsub_connection_is_killed(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    """A real fault: Redis drops the waiter's pub/sub connection, and every job ends while
    it is gone, so each announcement is lost. Only the re-read can end the wait."""
    settings = Settings(redis_url=stack.redis_url, allow_private_image_urls=True)
    enqueuer = Enqueuer(settings)
    # Records first, messages later: nothing can end before the waiter has looked.
    job_ids = [enqueuer.create(T2I, prompt=f"lost news {n}") for n in range(5)]
    looked, resume = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def on_progress(_: list[JobRecord]) -> None:
        if not looked.is_set():
            looked.set()
            assert resume.wait(60)

    def wait() -> None:
        try:
            outcome["records"] = stack_client.wait_all(job_ids, timeout=60, on_progress=on_progress)
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            outcome["error"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        assert looked.wait(30)  # subscribed, and the first look found nothing ended
        admin = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        # The waiter's connection: the one subscribed to these jobs' channels (the worker
        # has pub/sub connections of its own).
        [listener] = [c for c in admin.client_list(_type="pubsub") if c["sub"] == "5"]
        assert admin.client_kill_filter(_id=listener["id"]) == 1
        for job_id in job_ids:
            enqueuer.send(job_id)
        _until_all_ended(stack_client, job_ids)  # announced while nobody listened
        admin.close()
    finally:
        resume.set()
        waiter.join(90)

    assert "error" not in outcome, outcome.get("error")
    records = outcome["records"]
    assert [record.id for record in records] == job_ids
    assert all(record.status is JobStatus.COMPLETED for record in records)


def _until_all_ended(client: JobClient, job_ids: list[str], timeout: float = 60) -> None:
    give_up = time.monotonic() + timeout
    while not all(s is not None and s.is_terminal for s in client.store.get_states(job_ids)):
        assert time.monotonic() < give_up, "the jobs did not end"
        time.sleep(0.05)
