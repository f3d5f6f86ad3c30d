"""Start child processes in order, watch them, stop them in reverse order.

Children run in their own process groups, so a Ctrl-C in the terminal reaches
only the supervisor, which then stops the worker (warm shutdown) before the
things it depends on, and Redis last. Each child writes to its own log file; a
child that dies is reported with the end of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ops.localstack.interrupts import deferred_interrupts
from ops.localstack.redis_server import RedisServer

Say = Callable[[str], None]


class StackError(Exception):
    """A child could not start, or stopped on its own."""


class Service(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str:
        """Where it listens, as printed for the user."""

    def start(self) -> None: ...
    def returncode(self) -> int | None: ...
    def stop(self) -> None: ...
    def log_tail(self, lines: int = 20) -> str: ...


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def tail(path: Path, lines: int) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ProcessService:
    """One command-line child; ready when ``ready()`` says so."""

    name: str
    address: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    ready: Callable[[ProcessService], bool]
    start_timeout: float = 60.0
    stop_timeout: float = 30.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log, deferred_interrupts():
            self.process = subprocess.Popen(
                list(self.argv),
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while not self.ready(self):
            code = self.returncode()
            if code is not None:
                raise StackError(f"{self.name} exited at start (code {code}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(f"{self.name} not ready in {self.start_timeout:g}s")
            time.sleep(0.1)

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            # Whatever it spawned (a prefork pool) goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    def log_contains(self, text: str) -> bool:
        return self.log_path.exists() and text in self.log_path.read_text(errors="replace")


@dataclass
class EmbeddedRedis:
    """The private redis-server (AOF on), as a supervised service."""

    server: RedisServer
    name: str = "redis"

    @property
    def address(self) -> str:
        return f"{self.server.url} (embedded redis-server, AOF in {self.server.data_dir})"

    def start(self) -> None:
        with deferred_interrupts():  # redis-server answers within milliseconds
            self.server.start()

    def returncode(self) -> int | None:
        process = self.server.process
        return None if process is None else process.poll()

    def stop(self) -> None:
        self.server.stop()

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.server.data_dir / "redis.log", lines)


class Supervisor:
    """Owns a list of started services."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.services: list[Service] = []

    def start(self, service: Service) -> None:
        # Owned before it starts: an interrupt during its start still stops it.
        self.services.append(service)
        service.start()
        self.say(f"  {service.name:<9} {service.address}")

    def dead(self) -> Service | None:
        """The first service that exited on its own, if any."""
        return next((s for s in self.services if s.returncode() is not None), None)

    def watch(self, interval: float = 0.5) -> None:
        """Run until interrupted (KeyboardInterrupt); raise StackError when a child dies."""
        while True:
            gone = self.dead()
            if gone is not None:
                raise StackError(
                    f"{gone.name} exited (code {gone.returncode()}); last lines of its log:\n"
                    f"{gone.log_tail()}"
                )
            time.sleep(interval)

    def stop_all(self) -> None:
        for service in reversed(self.services):
            self.say(f"  stopping {service.name}")
            service.stop()
        self.services.clear()
