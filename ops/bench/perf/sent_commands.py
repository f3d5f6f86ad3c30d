"""Commands clients send, told apart from the commands scripts run, with ``MONITOR``.

``INFO commandstats`` counts a script's call and every command it runs alike, so its
count per job mixes what crosses the network with the bookkeeping done inside Redis.
``MONITOR`` tags each command with its source: ``[0 lua]`` for a command a script ran,
``[0 <address>]`` for one a client sent (each command of a pipeline or a transaction
counts). MONITOR slows Redis down, so the bench counts this in a run of its own and
reads only the counts from it, never its timings.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from types import TracebackType

import redis

#: What the harness's own probe sends while it waits (its checks and ``INFO``): every
#: name it uses is taken out by count (``RedisProbe.own``), ``INFO`` entirely.
ALWAYS_LEFT_OUT = frozenset({"info", "monitor", "echo"})


class SentCommands:
    """Counts, by command name, what clients send to one Redis while it is open."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._monitor = self._client.monitor()  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()
        self._sent: Counter[str] = Counter()
        self._run_by_scripts = 0
        self._echoed: set[str] = set()
        self._echo_seen = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="bench-monitor", daemon=True)

    def __enter__(self) -> SentCommands:
        self._monitor.__enter__()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        # Closing the connection ends the reader's blocking read.
        self._monitor.__exit__(kind, exc, tb)
        self._thread.join(timeout=10)
        self._client.close()

    def _read(self) -> None:
        connection = self._monitor.connection
        while not self._stopping.is_set():
            try:
                line = connection.read_response()
            except (redis.RedisError, OSError, ValueError):
                return  # closed by __exit__
            name, by_script = parse_monitor_line(line)
            with self._lock:
                if name == "echo":
                    self._echoed.add(str(line))
                    self._echo_seen.notify_all()
                elif by_script:
                    self._run_by_scripts += 1
                elif name:
                    self._sent[name] += 1

    def catch_up(self, timeout: float = 60.0) -> None:
        """Wait until the reader has read every command sent before this call (MONITOR
        streams behind the commands; an ``ECHO`` marks the point)."""
        token = uuid.uuid4().hex
        self._client.echo(token)
        with self._lock:
            if not self._echo_seen.wait_for(
                lambda: any(token in line for line in self._echoed), timeout
            ):
                raise TimeoutError(f"MONITOR did not catch up within {timeout:.0f}s")

    def snapshot(self) -> tuple[Counter[str], int]:
        """Commands sent so far by name, and commands scripts ran."""
        with self._lock:
            return Counter(self._sent), self._run_by_scripts


def parse_monitor_line(line: bytes | str | None) -> tuple[str, bool]:
    """A MONITOR line's command name (lower case) and whether a script ran it:
    ``1700000000.123456 [0 127.0.0.1:5555] "HSET" "k" "f" "v"``."""
    if line is None:
        return "", False
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
    parts = text.split(" ", 3)
    if len(parts) < 4 or not parts[1].startswith("["):
        return "", False  # the OK that starts the stream, or a line we cannot read
    by_script = parts[2] == "lua]"
    name = parts[3].split(" ", 1)[0].strip('"').lower()
    return name, by_script


def sent_between(
    before: tuple[Counter[str], int],
    after: tuple[Counter[str], int],
    own: Counter[str],
) -> tuple[Counter[str], int]:
    """Commands clients other than the harness sent between two snapshots, by name, and
    the commands scripts ran meanwhile. ``own``: what the harness sent in that window."""
    sent = after[0] - before[0]
    sent -= own
    for name in ALWAYS_LEFT_OUT:
        del sent[name]
    return sent, after[1] - before[1]
