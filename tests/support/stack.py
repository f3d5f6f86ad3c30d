"""A whole worker stack for integration tests: private redis-server, the emulator
over HTTP, and real `wavequeue worker` processes, with test-speed knobs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from emulator.app import EmulatorServer
from emulator.config import EmulatorConfig, LatencySpec
from ops.localstack.redis_server import RedisServer
from tests.support.jobs import Enqueuer
from tests.support.worker_process import WorkerProcess
from worker.settings import Settings

#: A distinctive key, so a leak anywhere is found by a plain substring search.
SECRET_API_KEY = "sk-wavequeue-test-9f3c1e7d"

#: Fast, but still the production code paths: only the numbers are smaller.
FAST_SETTINGS = {
    "WAVEQUEUE_POLL_MIN_INTERVAL": "0.2",
    "WAVEQUEUE_POLL_MAX_INTERVAL": "1",
    "WAVEQUEUE_FIRST_POLL_DEFAULT": "0.3",
    "WAVEQUEUE_RETRY_BASE_DELAY": "0.05",
    "WAVEQUEUE_RETRY_MAX_DELAY": "0.5",
    "WAVEQUEUE_VISIBILITY_TIMEOUT": "30",
    "WAVEQUEUE_TASK_TIME_LIMIT": "10",
    "WAVEQUEUE_CONNECT_TIMEOUT": "2",
    "WAVEQUEUE_READ_TIMEOUT": "3",
    "WAVEQUEUE_RATE_LIMIT_PER_MINUTE": "100000",
    "WAVEQUEUE_MAX_IN_FLIGHT": "10000",
    # The emulator serves its outputs (and uploads) on 127.0.0.1; chain steps and edits
    # send them on, and the worker applies the URL rule with its own setting.
    "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1",
}


class EmulatorControl:
    """The emulator's introspection endpoints, over HTTP like any other client."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def stats(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.base_url}/_emulator/stats", timeout=5).json())

    def predictions(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.base_url}/_emulator/predictions", timeout=5).json())

    def configure(self, **changes: Any) -> None:
        response = requests.post(f"{self.base_url}/_emulator/config", json=changes, timeout=5)
        response.raise_for_status()

    def reset(self) -> None:
        requests.post(f"{self.base_url}/_emulator/reset", timeout=5).raise_for_status()


@dataclass
class WorkerStack:
    redis: RedisServer
    emulator: EmulatorControl
    env: dict[str, str]
    jobs: Enqueuer
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, concurrency: int = 4, **env: str) -> WorkerProcess:
        log_path = self.log_dir / f"worker{len(self.workers)}.log"
        worker = WorkerProcess({**self.env, **env}, log_path, concurrency=concurrency)
        self.workers.append(worker.start())
        return worker

    def worker_logs(self) -> str:
        return "\n".join(worker.log() for worker in self.workers)

    def input_submissions(self) -> dict[str, int]:
        """How many submit POSTs the emulator received per distinct input."""
        return dict(self.emulator.stats()["submissions"]["per_input"])

    def wait_for_status(self, job_ids: list[str], statuses: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.jobs.store.get_many(job_ids)
            if all(r is not None and r.status.value in statuses for r in records):
                return
            time.sleep(0.05)
        raise TimeoutError(f"jobs did not reach {statuses} in {timeout}s")


@contextlib.contextmanager
def worker_stack(
    tmp_path: Path,
    *,
    latency: str = "fixed:0.3",
    settings: dict[str, str] | None = None,
    workers: int = 1,
    concurrency: int = 4,
    redis_server: RedisServer | None = None,
    emulator_config: dict[str, Any] | None = None,
) -> Iterator[WorkerStack]:
    """``redis_server``: a running server the caller owns (e.g. ``private_redis``, to restart
    it mid-test); by default the stack starts and stops one of its own.
    ``emulator_config``: more of the emulator's config keys (``faults``, ``balance``...)."""
    owns_redis = redis_server is None
    if redis_server is None:
        redis_server = RedisServer(data_dir=tmp_path / "redis").start()
    emulator = EmulatorServer(
        EmulatorConfig(
            api_key=SECRET_API_KEY, latency=LatencySpec.parse(latency), image_scale=0.1, seed=7
        ).updated(emulator_config or {})
    ).start()
    env = {
        "REDIS_URL": redis_server.url,
        "WAVESPEED_API_KEY": SECRET_API_KEY,
        "WAVESPEED_BASE_URL": emulator.base_url,
        # The emulator serves its outputs on 127.0.0.1, and tests edit them.
        "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1",
        **FAST_SETTINGS,
        **(settings or {}),
    }
    stack = WorkerStack(
        redis=redis_server,
        emulator=EmulatorControl(emulator.base_url),
        env=env,
        jobs=Enqueuer(Settings.from_env(env)),
        log_dir=tmp_path,
    )
    try:
        for _ in range(workers):
            stack.start_worker(concurrency=concurrency)
        yield stack
    finally:
        for worker in stack.workers:
            worker.stop()
        stack.jobs.close()
        emulator.stop()
        if owns_redis:
            redis_server.stop()
