"""Redis with a password (``requirepass``): everything works, and the password shows nowhere.

A distinctive password, so a leak is found by a plain substring search in: the
worker's, Flower's and the exporter's logs, the CLI's output, exception messages, and
every Flower page and API answer that shows the broker, the workers (with their
configuration) or the tasks. A wrong password, or a Redis that is down, is one line
that names the Redis without the password, and exit code 4 from the CLI.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ops.localstack.redis_server import free_port
from producer import JobClient
from tests.ops.conftest import (
    BIN,
    FLOWER_PASSWORD,
    FLOWER_USER,
    scrape,
    start_exporter,
    start_flower,
    without_key,
)
from tests.support.emulator import EmulatorHandle
from tests.support.redis_topologies import RedisProcess, password_redis
from tests.support.stack import FAST_SETTINGS, SECRET_API_KEY
from tests.support.worker_process import WorkerProcess
from worker.errors import BrokerUnavailableError
from worker.models import JobStatus
from worker.settings import Settings

pytestmark = pytest.mark.timeout(180)

PASSWORD = "rp-wavequeue-4c1d9e8b"
WRONG = "wrong-pw-77aa01"
AUTH = (FLOWER_USER, FLOWER_PASSWORD)
EXIT_UNAVAILABLE = 4


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[RedisProcess]:
    with password_redis(tmp_path, PASSWORD) as server:
        yield server


def url(port: int, password: str = PASSWORD) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "wavequeue"), *args],
        env=without_key(env), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def flower_sees(address: str, worker: WorkerProcess, timeout: float = 30) -> None:
    """Flower has had an event from the worker (so its pages list it)."""
    deadline = time.monotonic() + timeout
    # Flower's /metrics asks for its login, as every page does (ops/flower/guard.py).
    login = (FLOWER_USER, FLOWER_PASSWORD)
    while (
        f'worker="{worker.name}@'
        not in requests.get(f"{address}/metrics", auth=login, timeout=10).text
    ):
        assert time.monotonic() < deadline, "Flower never heard from the worker"
        time.sleep(0.2)


def test_everything_works_and_the_password_shows_nowhere(
    guarded: RedisProcess, secret_emulator: EmulatorHandle, tmp_path: Path
) -> None:
    env = {
        "REDIS_URL": url(guarded.port),
        "WAVESPEED_BASE_URL": secret_emulator.base_url,
        "WAVESPEED_API_KEY": SECRET_API_KEY,
        **FAST_SETTINGS,
    }
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=4).start()
    flower = start_flower(env, tmp_path, FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}")
    exporter = start_exporter(env, tmp_path)
    try:
        flower_sees(flower.address, worker)
        with JobClient(Settings.from_env(env)) as client:
            record = client.wait(client.text_to_image("a guarded lighthouse", seed=2), timeout=60)
        assert record.status is JobStatus.COMPLETED

        generated = cli(env, "generate", "a guarded fox", "--wait")
        assert generated.returncode == 0, generated.stderr
        status = cli(env, "status", generated.stdout.split()[1], "--json")
        assert status.returncode == 0, status.stderr

        metrics = scrape(exporter.address)
        assert "wavequeue_redis_up 1.0" in metrics
        pages = {
            path: requests.get(f"{flower.address}{path}", auth=AUTH, timeout=30)
            for path in (
                "/broker",
                "/workers",
                f"/worker/{worker.name}@{worker_host(worker)}",
                "/tasks",
                "/api/workers?refresh=1",
                "/api/tasks",
                "/api/queues/length",
                "/metrics",
            )
        }
        assert {path: r.status_code for path, r in pages.items()} == dict.fromkeys(pages, 200)
        # The worker page shows the worker's configuration, broker and backend URLs included.
        assert "broker_url" in pages["/api/workers?refresh=1"].text
        texts = {
            "worker log": worker.log(),
            "flower log": flower.log_tail(10_000),
            "exporter log": exporter.log_tail(10_000),
            "cli": generated.stdout + generated.stderr + status.stdout + status.stderr,
            "metrics": metrics,
            **{f"flower {path}": response.text for path, response in pages.items()},
        }
    finally:
        exporter.stop()
        flower.stop()
        worker.stop()
    leaks = sorted(where for where, text in texts.items() if PASSWORD in text)
    assert leaks == []
    # The places that do show the broker show it masked.
    assert f":**@127.0.0.1:{guarded.port}" in texts["worker log"]
    assert f":**@127.0.0.1:{guarded.port}" in texts["flower log"]


def worker_host(worker: WorkerProcess) -> str:
    """The host part Celery put in the worker's node name (``name@host``)."""
    marker = f"{worker.name}@"
    line = next(line for line in worker.log().splitlines() if marker in line)
    return line.split(marker, 1)[1].split()[0].rstrip(":")


def test_a_wrong_password_is_one_clear_line(guarded: RedisProcess) -> None:
    env = {"REDIS_URL": url(guarded.port, WRONG)}
    done = cli(env, "status", "any-job")
    assert done.returncode == EXIT_UNAVAILABLE
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refused the credentials" in lines[0]
    assert f"127.0.0.1:{guarded.port}" in lines[0]
    assert WRONG not in done.stderr + done.stdout

    with JobClient(Settings.from_env(env)) as client, pytest.raises(BrokerUnavailableError) as e:
        client.text_to_image("never enqueued")
    assert WRONG not in str(e.value)
    assert "check the password in REDIS_URL" in str(e.value)


def test_redis_down_is_exit_4_within_the_retry_window_and_names_no_password() -> None:
    env = {"REDIS_URL": url(free_port()), "WAVEQUEUE_REDIS_RETRY_WINDOW": "1"}
    done = cli(env, "generate", "nobody listens")
    assert done.returncode == EXIT_UNAVAILABLE
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "after retrying for 1s" in lines[0]
    assert PASSWORD not in done.stderr + done.stdout
