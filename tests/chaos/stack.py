"""The system under test, as real processes the harness can hurt.

``ChaosStack`` runs a private ``redis-server`` with AOF (in the run's directory, on a
free port), the WaveSpeed emulator as its own process behind a TCP gate
(``tests.chaos.gate``), several ``wavequeue worker`` processes, and a producer
``JobClient``. Everything is reached the way production reaches it: workers through
``REDIS_URL`` and ``WAVESPEED_BASE_URL`` (the gate), the harness through the
emulator's ``/_emulator/*`` endpoints (directly, so they answer during an outage).

The primitives here are single actions (kill one worker, stop Redis, close the
gate); ``faults.py`` decides when to use them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from ops.localstack.redis_server import RedisServer, free_port
from producer import JobClient
from tests.support.stack import EmulatorControl
from tests.support.worker_process import WorkerProcess
from worker.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Test-speed knobs shared by every scenario: only the numbers are smaller than the
#: shipped defaults, the code paths are the production ones. Polls every 0.5-2 s and
#: error backoff of at most 2 s keep a run short; the visibility timeout is set per
#: scenario (see ``scenarios.py``), because it is what the faults are about.
BASE_SETTINGS: Mapping[str, str] = {
    "WAVEQUEUE_POLL_MIN_INTERVAL": "0.5",
    "WAVEQUEUE_POLL_MAX_INTERVAL": "2",
    "WAVEQUEUE_FIRST_POLL_DEFAULT": "1",
    "WAVEQUEUE_RETRY_BASE_DELAY": "0.25",
    "WAVEQUEUE_RETRY_MAX_DELAY": "2",
    # At least twice connect + read timeout (the worker checks): a POST ends in the lease.
    "WAVEQUEUE_TASK_TIME_LIMIT": "15",
    "WAVEQUEUE_CONNECT_TIMEOUT": "2",
    "WAVEQUEUE_READ_TIMEOUT": "4",
    "WAVEQUEUE_RATE_LIMIT_PER_MINUTE": "100000",
    "WAVEQUEUE_MAX_IN_FLIGHT": "10000",
    # Chain steps edit the previous step's output, an emulator URL on 127.0.0.1.
    "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1",
}


def new_api_key() -> str:
    """A distinctive random key: any leak is found by a plain substring search."""
    return f"sk-chaos-{secrets.token_hex(12)}"


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


def _count_lines(path: Path, text: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines() if text in line)


@dataclass
class EmulatorProcess:
    """``python -m emulator`` on a fixed port, stoppable and restartable on that port."""

    port: int
    api_key: str
    log_path: Path
    flags: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EmulatorProcess:
        argv = [sys.executable, "-m", "emulator", "--port", str(self.port), *self.flags]
        # The key goes by environment, not argv (argv is visible to every local user).
        env = {**os.environ, "WAVESPEED_EMULATOR_API_KEY": self.api_key, "PYTHONUNBUFFERED": "1"}
        before = _count_lines(self.log_path, "listening on")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            lambda: _count_lines(self.log_path, "listening on") > before or self._exited(),
            timeout,
            "emulator start",
        )
        if self._exited():
            raise RuntimeError(f"emulator exited at start:\n{self.log_path.read_text()}")
        return self

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class GateProcess:
    """The TCP gate (``tests.chaos.gate``) in its own process; see that module."""

    port: int
    upstream_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GateProcess:
        argv = [sys.executable, "-m", "tests.chaos.gate", str(self.port), str(self.upstream_port)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self._await_line("gate up", 1)
        return self

    def down(self) -> None:
        """Refuse new connections and reset open ones, until ``up()``."""
        self._signal(signal.SIGUSR1, "gate down")

    def up(self) -> None:
        self._signal(signal.SIGUSR2, "gate up")

    def _signal(self, signum: int, line: str) -> None:
        assert self.process is not None
        before = _count_lines(self.log_path, line)
        self.process.send_signal(signum)
        self._await_line(line, before + 1)

    def _await_line(self, line: str, count: int) -> None:
        wait_until(lambda: _count_lines(self.log_path, line) >= count, 15, f"gate: {line!r}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
        self.process = None


@dataclass(frozen=True)
class StackConfig:
    workers: int = 3
    concurrency: int = 8
    #: WAVEQUEUE_* settings on top of ``BASE_SETTINGS`` (the visibility timeout, the
    #: ambiguous-submit policy, the job deadline).
    settings: Mapping[str, str] = field(default_factory=dict)
    latency: str = "uniform:0.5:2"
    image_scale: float = 0.25
    seed: int = 7


@dataclass
class ChaosStack:
    run_dir: Path
    config: StackConfig
    api_key: str = field(default_factory=new_api_key)
    redis: RedisServer = field(init=False)
    emulator: EmulatorProcess = field(init=False)
    gate: GateProcess = field(init=False)
    control: EmulatorControl = field(init=False)
    producer: JobClient = field(init=False)
    #: Every worker process ever started, live or not (their logs are all checked).
    workers: list[WorkerProcess] = field(default_factory=list)
    #: Workers the harness itself killed or stopped (any other exit is a finding).
    ended_by_harness: set[str] = field(default_factory=set)

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> ChaosStack:
        try:
            return self._start()
        except BaseException:
            self.stop()  # whatever did start
            raise

    def _start(self) -> ChaosStack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(data_dir=self.run_dir / "redis", appendonly=True).start()
        flags = [
            "--latency", self.config.latency,
            "--image-scale", str(self.config.image_scale),
            "--seed", str(self.config.seed),
        ]  # fmt: skip
        self.emulator = EmulatorProcess(
            free_port(), self.api_key, self.run_dir / "emulator.log", flags
        ).start()
        self.gate = GateProcess(free_port(), self.emulator.port, self.run_dir / "gate.log").start()
        self.control = EmulatorControl(self.emulator.base_url)
        self.producer = JobClient(Settings.from_env(self.producer_env))
        self.start_workers(self.config.workers)
        return self

    def stop(self) -> None:
        for worker in self.workers:
            self.ended_by_harness.add(worker.name)
            with contextlib.suppress(Exception):
                worker.stop(timeout=20)
        # Each part may be missing when start() failed half-way.
        if hasattr(self, "producer"):
            with contextlib.suppress(Exception):
                self.producer.close()
        for part in ("gate", "emulator", "redis"):
            if hasattr(self, part):
                getattr(self, part).stop()

    # --- environment ----------------------------------------------------------------

    @property
    def settings_env(self) -> dict[str, str]:
        return {**BASE_SETTINGS, **self.config.settings}

    @property
    def worker_env(self) -> dict[str, str]:
        return {
            **self.settings_env,
            "REDIS_URL": self.redis.url,
            "WAVESPEED_API_KEY": self.api_key,
            "WAVESPEED_BASE_URL": self.gate.base_url,
        }

    @property
    def producer_env(self) -> dict[str, str]:
        """What a backend gets: Redis and the job knobs, never the API key."""
        return {**self.settings_env, "REDIS_URL": self.redis.url}

    @property
    def worker_settings(self) -> Settings:
        return Settings.from_env(self.worker_env)

    def redis_client(self, **options: Any) -> Redis:
        return Redis.from_url(self.redis.url, **options)

    # --- workers ----------------------------------------------------------------------

    def start_workers(self, count: int) -> list[WorkerProcess]:
        fresh = [
            WorkerProcess(
                self.worker_env,
                self.run_dir / f"worker{len(self.workers) + index}.log",
                concurrency=self.config.concurrency,
            )
            for index in range(count)
        ]
        self.workers.extend(fresh)
        with ThreadPoolExecutor(max(1, count)) as pool:
            list(pool.map(lambda worker: worker.start(timeout=90), fresh))
        return fresh

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    @staticmethod
    def hostname(worker: WorkerProcess) -> str:
        """The Celery node name (``--hostname name@%h``), for remote control."""
        return f"{worker.name}@{socket.gethostname()}"

    def kill(self, worker: WorkerProcess) -> None:
        self.ended_by_harness.add(worker.name)
        worker.kill()

    def terminate(self, worker: WorkerProcess) -> None:
        """SIGTERM: Celery's warm shutdown."""
        assert worker.process is not None
        self.ended_by_harness.add(worker.name)
        worker.process.terminate()

    def exits_on_their_own(self) -> list[tuple[str, int | None]]:
        """Workers that ended without the harness asking: (log name, exit code)."""
        return [
            (worker.log_path.stem, worker.process.returncode)
            for worker in self.workers
            if worker.process is not None
            and worker.process.poll() is not None
            and worker.name not in self.ended_by_harness
        ]

    def worker_logs(self) -> Iterator[tuple[Path, str]]:
        for worker in self.workers:
            yield worker.log_path, worker.log()

    # --- Redis ------------------------------------------------------------------------

    def stop_redis(self) -> None:
        """A clean shutdown (SIGTERM): with AOF, nothing written so far is lost."""
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis.start()
