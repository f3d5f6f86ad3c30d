"""Real parts for the ops tests: a private redis-server (the session one, flushed),
an emulator over HTTP with a distinctive API key, real worker processes, and
helpers to start Flower and the exporter as the stack does."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ops.localstack.redis_server import free_port
from ops.localstack.supervisor import ProcessService, port_open
from tests.support.emulator import EmulatorHandle, running_emulator
from tests.support.stack import FAST_SETTINGS, SECRET_API_KEY
from tests.support.worker_process import WorkerProcess

BIN = Path(sys.executable).parent
FLOWER_CONFIG = Path(__file__).resolve().parents[2] / "ops" / "flower" / "flowerconfig.py"
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-test-password"


@pytest.fixture
def secret_emulator() -> Iterator[EmulatorHandle]:
    """An emulator that accepts only ``SECRET_API_KEY``: a distinctive string, so a
    leak anywhere (a page, a log, Redis) shows up in a plain substring search."""
    with running_emulator(api_key=SECRET_API_KEY, latency="fixed:0.3", image_scale=0.1) as handle:
        yield handle


@pytest.fixture
def stack_env(redis_url: str, secret_emulator: EmulatorHandle) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "WAVESPEED_BASE_URL": secret_emulator.base_url,
        "WAVESPEED_API_KEY": SECRET_API_KEY,
        **FAST_SETTINGS,
    }


@pytest.fixture
def worker(stack_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stack_env, tmp_path / "worker.log", concurrency=8).start()
    yield process
    process.stop()


def without_key(env: dict[str, str]) -> dict[str, str]:
    """Flower and the exporter never get the API key (as in the stack and compose)."""
    base = {k: v for k, v in os.environ.items() if k != "WAVESPEED_API_KEY"}
    return {**base, **{k: v for k, v in env.items() if k != "WAVESPEED_API_KEY"}}


def start_flower(
    env: dict[str, str], tmp_path: Path, *extra: str, **flower_env: str
) -> ProcessService:
    port = free_port()
    argv = [
        str(BIN / "celery"), "-A", "worker.app", "flower", f"--conf={FLOWER_CONFIG}",
        f"--port={port}", f"--db={tmp_path / 'flower' / 'flower.db'}", *extra,
    ]  # fmt: skip
    service = ProcessService(
        name="flower",
        address=f"http://127.0.0.1:{port}",
        argv=argv,
        env={**without_key(env), **flower_env},
        log_path=tmp_path / "flower.log",
        ready=lambda _s: port_open("127.0.0.1", port),
    )
    service.start()
    return service


def start_exporter(env: dict[str, str], tmp_path: Path) -> ProcessService:
    port = free_port()
    service = ProcessService(
        name="exporter",
        address=f"http://127.0.0.1:{port}/metrics",
        argv=[str(BIN / "wavequeue"), "exporter", "--port", str(port)],
        env=without_key(env),
        log_path=tmp_path / "exporter.log",
        ready=lambda _s: port_open("127.0.0.1", port),
    )
    service.start()
    return service


def scrape(url: str) -> str:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.text
