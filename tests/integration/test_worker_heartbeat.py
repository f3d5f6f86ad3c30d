"""Worker heartbeats (``worker/heartbeat.py``) from real worker processes, as the exporter
counts them: alive while the worker's event loop runs; silent once it is stopped
(SIGSTOP) or killed (SIGKILL), within ``WORKER_SILENT_AFTER``; gone at once after a warm
stop. Flower's ``flower_worker_online`` says 1 in all three cases until it purges the
worker, which is why WavequeueNoWorkers pages on these instead.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ops.exporter.snapshot import read_snapshot
from tests.support.stack import FAST_SETTINGS
from tests.support.worker_process import WorkerProcess
from worker.constants import WORKER_SILENT_AFTER, WORKERS_KEY

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


def start_worker(redis_url: str, tmp_path: Path, name: str) -> WorkerProcess:
    env = {
        "REDIS_URL": redis_url,
        "WAVESPEED_API_KEY": "k",
        "WAVESPEED_BASE_URL": "http://127.0.0.1:9",
        **FAST_SETTINGS,
    }
    return WorkerProcess(env, tmp_path / f"{name}.log", concurrency=2, name=name).start()


def alive_and_silent(client: redis.Redis) -> tuple[int, int]:
    return read_snapshot(client, time.time()).workers_silent_for(WORKER_SILENT_AFTER)


def wait_for(client: redis.Redis, expected: tuple[int, int], timeout: float) -> float:
    """Wait until (alive, silent) is ``expected``; returns the seconds it took."""
    started = time.monotonic()
    while (found := alive_and_silent(client)) != expected:
        assert time.monotonic() - started < timeout, f"(alive, silent) stayed {found}"
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_stopped_or_killed_worker_goes_silent_and_a_warm_stop_leaves(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    first = start_worker(redis_url, tmp_path, "hb1")
    second = start_worker(redis_url, tmp_path, "hb2")
    assert first.process is not None and second.process is not None
    wait_for(client, (2, 0), timeout=10)
    host = socket.gethostname()
    assert set(client.zrange(WORKERS_KEY, 0, -1)) == {f"hb1@{host}", f"hb2@{host}"}

    # Stopped (as a frozen host or a debugger would): silent once its beats are too old.
    os.kill(first.process.pid, signal.SIGSTOP)
    try:
        took = wait_for(client, (1, 1), timeout=WORKER_SILENT_AFTER + 20)
        assert took >= WORKER_SILENT_AFTER - 3  # its last beat was at most 2 s old
        os.kill(first.process.pid, signal.SIGCONT)
        wait_for(client, (2, 0), timeout=10)  # beating again
    finally:
        os.kill(first.process.pid, signal.SIGCONT)

    # A warm stop removes the worker at once, before it could go silent.
    assert second.stop() == 0
    wait_for(client, (1, 0), timeout=5)
    assert client.zrange(WORKERS_KEY, 0, -1) == [f"hb1@{host}"]

    # Killed: nothing runs to remove it, so it goes silent, and no worker is alive.
    first.kill()
    wait_for(client, (0, 1), timeout=WORKER_SILENT_AFTER + 20)
