"""The processes a benchmark run starts: the emulator, the webhook receiver and fleets
of Celery workers.

Workers are started the way production starts them (``wavequeue worker``, the
README's defaults, only ``--hostname`` added so several can run side by side);
the raw Celery floor runs ``celery worker`` on its own app with the same pool and
concurrency. CPU time and resident memory are read from ``/proc`` for each
worker process and its children (a prefork pool's), so no extra package is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

BIN = Path(sys.executable).parent
WAVEQUEUE = str(BIN / "wavequeue")
CELERY = str(BIN / "celery")
REPO_ROOT = Path(__file__).resolve().parents[3]
LISTENING = re.compile(r"listening on (http://\S+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --- /proc readers ---------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (a prefork pool's children)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(parents.get(current, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes and their descendants, all threads included."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            fields = _stat_fields(pid)
            if fields is not None:
                total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of these processes and their descendants."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            fields = _stat_fields(pid)
            if fields is not None:
                total += int(fields[21]) * PAGE_SIZE  # rss (pages)
    return total


# --- the emulator ------------------------------------------------------------------


@dataclass
class Emulator:
    """``python -m emulator`` as a child process on a free port."""

    api_key: str
    log_path: Path
    image_scale: float
    seed: int = 7
    base_url: str = ""
    process: subprocess.Popen[str] | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def start(self) -> Emulator:
        argv = [
            sys.executable, "-m", "emulator", "--port", "0", "--api-key", self.api_key,
            "--seed", str(self.seed), "--latency", "fixed:0",
            "--image-scale", str(self.image_scale),
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO_ROOT
            )
        assert self.process.stdout is not None
        match = LISTENING.search(self.process.stdout.readline())
        if match is None:
            self.stop()
            raise RuntimeError(f"the emulator did not start; see {self.log_path}")
        self.base_url = match.group(1)
        return self

    def configure(self, **changes: Any) -> None:
        reply = self.session.post(f"{self.base_url}/_emulator/config", json=changes, timeout=30)
        reply.raise_for_status()

    def reseed(self) -> None:
        """Start the latency draws over: the next predictions get the same latencies as
        those after the previous reseed (runs compared with each other see the same)."""
        self.configure(seed=self.seed)

    def reset(self) -> None:
        """Forget every prediction (and the config: set it again)."""
        self.session.post(f"{self.base_url}/_emulator/reset", timeout=60).raise_for_status()

    def stats(self) -> dict[str, Any]:
        reply = self.session.get(f"{self.base_url}/_emulator/stats", timeout=60)
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        return result

    def predictions(self, model: str | None = None) -> dict[str, dict[str, Any]]:
        """Every prediction (of ``model``), by id."""
        params = {"model": model} if model else {}
        reply = self.session.get(
            f"{self.base_url}/_emulator/predictions", params=params, timeout=120
        )
        reply.raise_for_status()
        return {item["id"]: item for item in reply.json()}

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        self.session.close()


# --- the webhook receiver ------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """``wavequeue webhooks`` as a child process on a free port (webhook mode's runs)."""

    env: Mapping[str, str]
    log_path: Path
    base_url: str = ""
    process: subprocess.Popen[str] | None = None

    def start(self) -> WebhookReceiver:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [WAVEQUEUE, "webhooks", "--port", "0"],
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=REPO_ROOT,
            )
        assert self.process.stdout is not None
        match = LISTENING.search(self.process.stdout.readline())
        if match is None:
            self.stop()
            raise RuntimeError(f"wavequeue webhooks did not start; see {self.log_path}")
        self.base_url = match.group(1)
        return self

    def cpu_seconds(self) -> float:
        return cpu_seconds([self.process.pid]) if self.process is not None else 0.0

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


# --- worker fleets -----------------------------------------------------------------


@dataclass
class Fleet:
    """``count`` worker processes started from ``argv`` (``{index}`` filled in)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    count: int
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _log(self, index: int) -> Path:
        return self.log_dir / f"{self.name}-{index}.log"

    def start(self, timeout: float = 120.0) -> Fleet:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.count):
            argv = [part.format(index=index) for part in self.argv]
            with self._log(index).open("ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        argv,
                        env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        cwd=REPO_ROOT,
                    )
                )
        deadline = time.monotonic() + timeout
        while not all(
            " ready." in self._log(i).read_text(errors="replace") for i in range(self.count)
        ):
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} workers did not start; see {self.log_dir}")
            time.sleep(0.1)
        return self

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pids)

    def stop(self, timeout: float = 60.0) -> None:
        """Warm stop (SIGTERM: held messages go back), then SIGKILL for the stragglers."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
        self.processes.clear()


def run_json_child(module: str, payload: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python -m module`` with ``payload`` as JSON on stdin; its stdout is one JSON object."""
    done = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
