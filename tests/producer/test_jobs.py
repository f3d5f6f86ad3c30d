"""Single jobs through the real stack: idempotency, priorities, metadata, wait."""

from __future__ import annotations

import pytest
import redis

from producer import IdempotencyConflictError, JobClient, JobStatus, Priority, TextToImage
from tests.producer.conftest import ProducerStack
from tests.support.emulator import input_key
from worker.constants import QUEUE_HIGH, QUEUE_NORMAL


def test_the_same_idempotency_key_twice_is_one_job_and_one_submission(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    first = stack_client.text_to_image("idempotent lighthouse", seed=4, idempotency_key="order-77")
    second = stack_client.text_to_image("idempotent lighthouse", seed=4, idempotency_key="order-77")
    assert second == first

    record = stack_client.wait(first, timeout=30)
    assert record.status is JobStatus.COMPLETED
    assert record.idempotency_key == "order-77"
    key = input_key("wavespeed-ai/flux-kontext-max/text-to-image", record.input)
    assert stack.submissions_per_input()[key] == 1
    assert stack.emulator.stats()["submissions"]["total"] == 1
    # Also once the first job has ended: still the same job, nothing new sent; and the key
    # with another request is a conflict, never the first job in silence (issue #12).
    assert stack_client.text_to_image(
        "idempotent lighthouse", seed=4, idempotency_key="order-77"
    ) == first  # fmt: skip
    with pytest.raises(IdempotencyConflictError):
        stack_client.text_to_image("something else", idempotency_key="order-77")
    assert stack.emulator.stats()["submissions"]["total"] == 1


def test_every_endpoint_family_completes_with_its_metadata_and_priority(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    generated = stack_client.text_to_image(
        "jobs: a red door",
        model="flux-kontext-pro/text-to-image",
        num_images=2,
        priority="high",
        metadata={"user": 7, "tags": ["a", "b"]},
    )
    image = stack_client.wait(generated, timeout=30).outputs[0]
    edited = stack_client.edit(image, "jobs: paint it green", model="flux-kontext-max", seed=9)
    combined = stack_client.multi_edit([image, image], "jobs: side by side", deadline=120)

    first, second, third = stack_client.wait_all([generated, edited, combined], timeout=30)
    assert first.status is JobStatus.COMPLETED and len(first.outputs) == 2
    assert first.priority is Priority.HIGH
    assert first.metadata == {"user": 7, "tags": ["a", "b"]}
    assert second.status is JobStatus.COMPLETED and second.input["image"] == image
    assert third.status is JobStatus.COMPLETED and third.input["images"] == [image, image]
    assert third.deadline_at - third.created_at == 120


def test_priorities_go_to_separate_queues(redis_url: str) -> None:
    """Against a Redis no worker consumes, the messages stay where they were sent."""
    with JobClient(redis_url=redis_url) as client:
        client.text_to_image("queued high", priority="high")
        client.text_to_image("queued normal")
        client.text_to_image("queued normal too", priority=Priority.NORMAL)
    raw = redis.Redis.from_url(redis_url)
    assert (raw.llen(QUEUE_HIGH), raw.llen(QUEUE_NORMAL)) == (1, 2)


def test_a_chain_submitted_twice_with_one_key_is_one_chain(redis_url: str) -> None:
    with JobClient(redis_url=redis_url) as client:
        first = client.chain(TextToImage("keyed chain"), ["edit it"], idempotency_key="chain-9")
        again = client.chain(TextToImage("keyed chain"), ["edit it"], idempotency_key="chain-9")
        assert again == first
        raw = redis.Redis.from_url(redis_url)
        assert sum(1 for _ in raw.scan_iter("wq:chain:*")) == 1
        assert sum(1 for _ in raw.scan_iter("wq:job:*", _type="hash")) == 2
        assert raw.llen(QUEUE_NORMAL) == 1  # one Celery chain message
        # A plain job cannot reuse a chain's key to pose as something else.
        with pytest.raises(IdempotencyConflictError) as caught:
            client.text_to_image("x", idempotency_key="chain-9")
        assert caught.value.job_id == client.chain_status(first).steps[0].job_id
