"""Enqueueing subscribes nothing (issue #17's producer leak).

Celery's ``send_task`` without ``ignore_result`` and with a result backend configured
subscribes the result's channel (``celery-task-meta-<id>``) per send, and never
unsubscribes it when nobody reads the result: the producer's memory and Redis's
pub/sub table grow with every job. Jobs and chains here are enqueued as a backend
does, a sample of them waited for (the waiter's own subscriptions must end with the
wait), and Redis is asked what is subscribed afterwards.
"""

from __future__ import annotations

import redis

from producer import JobClient, TextToImage
from tests.producer.conftest import ProducerStack

T2I = "flux-kontext-pro/text-to-image"
JOBS = 150


def _pubsub_state(admin: redis.Redis) -> tuple[int, list[str], int]:
    """Pub/sub clients, channels and patterns (the worker's own are there throughout)."""
    clients = admin.client_list(_type="pubsub")
    channels = sorted(str(channel) for channel in admin.pubsub_channels())
    return len(clients), channels, int(admin.pubsub_numpat())


def test_enqueues_and_waits_leave_no_subscription(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    admin = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        before = _pubsub_state(admin)
        job_ids = [
            stack_client.text_to_image(f"no subscription {n}", model=T2I) for n in range(JOBS)
        ]
        stack_client.chain(TextToImage("no subscription chain"), ["no subscription: step two"])
        stack_client.wait_all(job_ids[::10], timeout=60)
        after = _pubsub_state(admin)
        assert [c for c in after[1] if c.startswith("celery-task-meta-")] == []
        assert after == before
    finally:
        admin.close()
