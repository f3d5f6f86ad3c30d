"""A real stack for producer tests: a redis-server, the emulator over HTTP and one
`wavequeue worker` process, started once per test module (``producer_stack``).

Tests of one module share the stack; each test uses its own prompts, so the
emulator's per-input counts stay per test. ``stack_client`` is a fresh
``JobClient`` per test (a fresh Celery app, so queue declarations are fresh too).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.localstack.redis_server import RedisServer
from producer import JobClient
from tests.support.emulator import EmulatorHandle, running_emulator
from tests.support.worker_process import WorkerProcess
from worker.settings import Settings

#: Distinctive, so a leak into a record or a message is found by a plain search.
EMULATOR_API_KEY = "sk-producer-tests-5b1d"

#: Test speed knobs: the production code paths with smaller numbers.
FAST_WORKER_SETTINGS = {
    "WAVEQUEUE_POLL_MIN_INTERVAL": "0.2",
    "WAVEQUEUE_POLL_MAX_INTERVAL": "1",
    "WAVEQUEUE_FIRST_POLL_DEFAULT": "0.3",
    "WAVEQUEUE_RETRY_BASE_DELAY": "0.1",
    "WAVEQUEUE_RETRY_MAX_DELAY": "1",
    "WAVEQUEUE_VISIBILITY_TIMEOUT": "60",
    "WAVEQUEUE_TASK_TIME_LIMIT": "20",
    "WAVEQUEUE_CONNECT_TIMEOUT": "2",
    "WAVEQUEUE_READ_TIMEOUT": "5",
    "WAVEQUEUE_RATE_LIMIT_PER_MINUTE": "100000",
    "WAVEQUEUE_MAX_IN_FLIGHT": "10000",
    # The emulator serves its outputs on 127.0.0.1, and tests edit them.
    "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1",
}
#: A producer's settings for the stack: emulator outputs are valid images to edit.
STACK_SETTINGS = Settings(allow_private_image_urls=True)


@dataclass
class ProducerStack:
    redis: RedisServer
    emulator: EmulatorHandle
    worker: WorkerProcess

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def submissions_per_input(self) -> dict[str, int]:
        return dict(self.emulator.stats()["submissions"]["per_input"])


@pytest.fixture(scope="module")
def producer_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProducerStack]:
    workdir = tmp_path_factory.mktemp("producer-stack")
    redis_server = RedisServer(data_dir=workdir / "redis").start()
    with running_emulator(api_key=EMULATOR_API_KEY, latency="fixed:0.3") as emulator:
        env = {
            "REDIS_URL": redis_server.url,
            "WAVESPEED_API_KEY": emulator.api_key,
            "WAVESPEED_BASE_URL": emulator.base_url,
            **FAST_WORKER_SETTINGS,
        }
        worker = WorkerProcess(env, Path(workdir / "worker.log"), concurrency=8).start()
        try:
            yield ProducerStack(redis_server, emulator, worker)
        finally:
            worker.stop()
            redis_server.stop()


@pytest.fixture
def stack(producer_stack: ProducerStack) -> Iterator[ProducerStack]:
    """The module's stack with the emulator's faults cleared and its counts reset."""
    producer_stack.emulator.reset()
    yield producer_stack
    if producer_stack.worker.process is not None:
        assert producer_stack.worker.process.poll() is None, producer_stack.worker.log()


@pytest.fixture
def stack_client(stack: ProducerStack) -> Iterator[JobClient]:
    with JobClient(STACK_SETTINGS, redis_url=stack.redis_url, reread_interval=0.5) as client:
        yield client
