"""A producer while Redis is away: it waits for Redis within the retry window, or raises
``BrokerUnavailableError`` once the window has passed, and never hangs."""

from __future__ import annotations

import threading
import time

import pytest

from ops.localstack.redis_server import RedisServer
from producer import JobClient
from worker.errors import BrokerUnavailableError
from worker.models import JobRecord
from worker.settings import Settings


def test_a_call_during_a_restart_waits_for_redis_and_succeeds(private_redis: RedisServer) -> None:
    settings = Settings(redis_url=private_redis.url, redis_retry_window=60)
    with JobClient(settings) as client:
        job_id = client.text_to_image("before the restart", seed=1)
        private_redis.stop()
        results: list[JobRecord] = []
        errors: list[Exception] = []
        calling = threading.Event()

        def read() -> None:
            calling.set()
            try:
                results.append(client.get(job_id))
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        calling.wait(10)
        # Let the call meet the stopped server first (the assertions hold either way).
        time.sleep(0.5)
        private_redis.start()  # same port and data (AOF): the record is still there
        thread.join(60)
        assert not thread.is_alive()
        assert errors == []
        assert [record.id for record in results] == [job_id]
        # The broker connection comes back too: enqueueing works without a new client.
        assert (
            client.get(client.text_to_image("after the restart", seed=2)).status.value == "queued"
        )


def test_a_call_while_redis_stays_down_raises_once_the_window_has_passed(
    private_redis: RedisServer,
) -> None:
    settings = Settings(redis_url=private_redis.url, redis_retry_window=2)
    with JobClient(settings) as client:
        job_id = client.text_to_image("before the outage", seed=3)
        private_redis.stop()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as caught:
            client.get(job_id)
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(f"cannot reach Redis at {private_redis.url} after retrying for 2s")
    assert "\n" not in message
    # The documented bound is the window plus one connect timeout; this machine is
    # shared and slow at times, so allow generously more, but not a hang.
    assert elapsed < settings.redis_retry_window + settings.redis_connect_timeout + 10
