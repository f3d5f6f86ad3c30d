"""``wavequeue up`` as a user runs it: a subprocess in its own folder, real children.

It must print where everything listens, run a job end to end (the worker gets
the emulator's own key, never the user's), stop everything on SIGTERM, and stop
everything when one child dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from ops.healthcheck import healthy
from ops.localstack.redis_server import free_port
from ops.localstack.supervisor import port_open
from producer import JobClient
from tests.support.stack import FAST_SETTINGS, SECRET_API_KEY
from worker.models import JobStatus

pytestmark = pytest.mark.timeout(150)
WAVEQUEUE = str(Path(sys.executable).with_name("wavequeue"))


@dataclass
class Up:
    process: subprocess.Popen[str]
    ports: dict[str, int]
    data_dir: Path
    output: list[str]

    def read_until(self, text: str, timeout: float = 90) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output):
            assert time.monotonic() < deadline, "".join(self.output)
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise AssertionError(f"wavequeue up exited:\n{''.join(self.output)}")
            self.output.append(line)

    def finish(self, timeout: float = 60) -> str:
        out, _ = self.process.communicate(timeout=timeout)
        self.output.append(out)
        return "".join(self.output)


def stack_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WAVESPEED_"))}
    # The user's real key is in the environment: it must never reach the emulator.
    # The webhook-mode safety-net poll at 10 s, beyond the emulator's ~3 s latency: the
    # job completes by its webhook with no poll.
    return {
        **env,
        **FAST_SETTINGS,
        "WAVEQUEUE_WEBHOOK_POLL_FACTOR": "1000",
        "WAVEQUEUE_WEBHOOK_POLL_MAX": "10",
        "WAVESPEED_API_KEY": SECRET_API_KEY,
        **extra,
    }


@contextmanager
def wavequeue_up(tmp_path: Path, **env: str) -> Iterator[Up]:
    ports = {name: free_port() for name in ("redis", "emulator", "webhooks", "flower", "exporter")}
    data_dir = tmp_path / "data"
    argv = [WAVEQUEUE, "up", "--data-dir", str(data_dir), "--concurrency", "4"]
    for name, port in ports.items():
        argv += [f"--{name}-port", str(port)]
    process = subprocess.Popen(
        argv, cwd=tmp_path, env=stack_env(**env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    up = Up(process, ports, data_dir, [])
    try:
        yield up
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)


def pid_listening_as(*tokens: str) -> int:
    """The pid of the process whose command line has every token (found in /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if all(token in argv for token in tokens):
            return int(entry.name)
    raise LookupError(tokens)


def pids_with_env(entry_text: str) -> list[int]:
    """Processes whose environment holds ``entry_text`` (e.g. the stack's REDIS_URL)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if entry_text in environ.split("\0"):
                found.append(int(entry.name))
    return found


def test_up_runs_a_job_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with wavequeue_up(tmp_path) as up:
        up.read_until("Ready.")
        text = "".join(up.output)
        ports = up.ports
        redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
        assert f"redis     {redis_url} (embedded redis-server, AOF in" in text
        assert f"emulator  http://127.0.0.1:{ports['emulator']}" in text
        assert f"webhooks  http://127.0.0.1:{ports['webhooks']} (WaveSpeed callbacks" in text
        assert f"flower    http://127.0.0.1:{ports['flower']}/" in text
        assert f"exporter  http://127.0.0.1:{ports['exporter']}/metrics" in text
        assert (up.data_dir / "stack.env").read_text() == (
            f"REDIS_URL={redis_url}\nWAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS=1\n"
        )

        with JobClient(redis_url=redis_url) as client:
            job_id = client.text_to_image("a lighthouse", seed=1)
            record = client.wait(job_id, timeout=60)
            assert record.status is JobStatus.COMPLETED
            # The emulator called the stack's receiver: no poll was needed.
            assert record.polls == 0

        # The image's HEALTHCHECK logic, pointed at the stack's processes.
        for argv in (
            ["wavequeue", "exporter", "--port", str(ports["exporter"])],
            ["wavequeue", "emulator", "--port", str(ports["emulator"])],
            ["wavequeue", "webhooks", "--port", str(ports["webhooks"])],
            ["celery", "-A", "worker.app", "flower", f"--port={ports['flower']}"],
        ):
            assert healthy(argv), argv
        worker_check = subprocess.run(
            [sys.executable, "-m", "ops.healthcheck", "wavequeue", "worker", "--hostname",
             "stack@%h"],
            env={**stack_env(), "REDIS_URL": redis_url}, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert worker_check.returncode == 0, worker_check.stdout + worker_check.stderr

        client_redis = redis.Redis.from_url(redis_url)
        for key in client_redis.scan_iter():
            assert SECRET_API_KEY.encode() not in (client_redis.dump(key) or b"")
        client_redis.close()

        up.process.send_signal(signal.SIGTERM)
        text = up.finish()
        assert up.process.returncode == 0, text
    for name in ("exporter", "flower", "worker", "webhooks", "emulator", "redis"):
        assert f"stopping {name}" in text
    assert text.rstrip().endswith("wavequeue up: stopped")
    assert not any(port_open("127.0.0.1", port) for port in ports.values())
    assert (up.data_dir / "redis" / "appendonlydir").is_dir()
    for log in (up.data_dir / "logs").iterdir():
        assert SECRET_API_KEY not in log.read_text(), log.name


def test_a_dying_child_stops_the_stack(tmp_path: Path, redis_url: str) -> None:
    # A REDIS_URL that answers is used as it is: no embedded redis-server.
    with wavequeue_up(tmp_path, REDIS_URL=redis_url) as up:
        up.read_until("Ready.")
        assert "(REDIS_URL, already running)" in "".join(up.output)
        os.kill(pid_listening_as("emulator", str(up.ports["emulator"])), signal.SIGKILL)
        text = up.finish()
    assert up.process.returncode == 1, text
    assert "wavequeue up: emulator exited (code -9)" in text
    assert "stopping worker" in text
    assert not any(port_open("127.0.0.1", up.ports[name]) for name in ("flower", "exporter"))


def test_sigterm_while_starting_leaves_nothing_behind(tmp_path: Path) -> None:
    with wavequeue_up(tmp_path) as up:
        up.read_until("  emulator ")  # the worker is starting now
        up.process.send_signal(signal.SIGTERM)
        text = up.finish()
    assert up.process.returncode == 0, text
    # Whether or not the worker had been spawned yet, nothing outlives the stack.
    assert "stopping emulator" in text and "stopping redis" in text
    assert not any(port_open("127.0.0.1", port) for port in up.ports.values())
    assert pids_with_env(f"REDIS_URL=redis://127.0.0.1:{up.ports['redis']}/0") == []


def test_a_remote_wavespeed_needs_a_key(tmp_path: Path) -> None:
    env = stack_env(WAVESPEED_BASE_URL="https://api.wavespeed.ai")
    del env["WAVESPEED_API_KEY"]
    done = subprocess.run(
        [WAVEQUEUE, "up", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 78
    assert "WAVESPEED_API_KEY is not set" in done.stderr
    assert not (tmp_path / "data" / "redis").exists()  # nothing was started
