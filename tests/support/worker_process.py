"""Real Celery worker processes for integration tests, started through `wavequeue worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

WAVEQUEUE = str(Path(sys.executable).with_name("wavequeue"))


@dataclass
class WorkerProcess:
    """One `wavequeue worker` child process; its output goes to ``log_path``."""

    env: dict[str, str]
    log_path: Path
    concurrency: int = 4
    pool: str = "threads"
    name: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:6]}")
    #: More arguments for `celery worker`, e.g. a setting as ``name=value``.
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        argv = [
            WAVEQUEUE,
            "worker",
            "--pool", self.pool,
            "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h",
            "--without-gossip",
            "--without-mingle",
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log()}")
            if " ready." in self.log():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm stop (SIGTERM), then SIGKILL if it does not go."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL: no cleanup, unacked messages stay unacked."""
        assert self.process is not None
        self.process.kill()
        return self.process.wait()
