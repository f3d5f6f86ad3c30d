"""The processes around the workers that an operator's long run has too: the exporter
(scraped every ``SCRAPE_INTERVAL`` seconds, as Prometheus would), Flower, and the
soak's producer (``ops.bench.soak.load``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ops.bench.perf.processes import CELERY, REPO_ROOT, WAVEQUEUE
from ops.localstack.redis_server import free_port
from ops.localstack.stack import FLOWER_CONFIG
from ops.localstack.stopping import terminate_then_kill
from ops.localstack.supervisor import port_open

SCRAPE_INTERVAL = 5.0
HOST = "127.0.0.1"


@dataclass
class Child:
    """One child process, its output in ``log_path``."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for(self, ready: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        terminate_then_kill(self.process, timeout)


def start_exporter(env: Mapping[str, str], log_dir: Path) -> tuple[Child, str]:
    port = free_port(HOST)
    argv = [WAVEQUEUE, "exporter", "--host", HOST, "--port", str(port), "--no-jobs-page"]
    child = Child("exporter", argv, env, log_dir / "exporter.log").start()
    child.wait_for(lambda: port_open(HOST, port))
    return child, f"http://{HOST}:{port}/metrics"


def start_flower(env: Mapping[str, str], log_dir: Path) -> Child:
    port = free_port(HOST)
    argv = [
        CELERY, "-A", "worker.app", "flower", f"--conf={FLOWER_CONFIG}",
        f"--address={HOST}", f"--port={port}", f"--db={log_dir / 'flower.db'}", "--url_prefix=",
    ]  # fmt: skip
    child = Child("flower", argv, env, log_dir / "flower.log").start()
    child.wait_for(lambda: port_open(HOST, port))
    return child


@dataclass
class Scraper:
    """GETs ``url`` every ``SCRAPE_INTERVAL`` seconds on a thread; counts failures."""

    url: str
    scrapes: int = 0
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Scraper:
        threading.Thread(target=self._run, name="soak-scraper", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.wait(SCRAPE_INTERVAL):
                try:
                    session.get(self.url, timeout=10).raise_for_status()
                    self.scrapes += 1
                except requests.RequestException:
                    self.failures += 1


@dataclass
class Producer:
    """The soak's producer child and its progress file."""

    child: Child
    progress_path: Path
    release_path: Path

    @classmethod
    def start(cls, plan: dict[str, Any], work_dir: Path, log_dir: Path) -> Producer:
        progress, release = work_dir / "producer-progress.json", work_dir / "producer-release"
        for stale in (progress, release):
            stale.unlink(missing_ok=True)
        plan = {**plan, "progress_path": str(progress), "release_path": str(release)}
        argv = [sys.executable, "-m", "ops.bench.soak.load", json.dumps(plan)]
        child = Child("producer", argv, {}, log_dir / "producer.log").start()
        return cls(child, progress, release)

    def progress(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = json.loads(self.progress_path.read_text())
        except (FileNotFoundError, ValueError):
            return {"enqueued": 0, "waited": 0}
        return result

    def release(self, timeout: float = 60.0) -> None:
        self.release_path.touch()
        assert self.child.process is not None
        try:
            self.child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.child.stop()


__all__ = ["Child", "Producer", "Scraper", "start_exporter", "start_flower"]
