"""A worker that stops itself at a limit, so its supervisor starts a fresh one.

Celery's ``worker_max_tasks_per_child`` replaces pool children, so it exists for the
prefork pool only; the threads pool (wavequeue's default) runs every task in the
worker process itself and has nothing to replace. When memory grows in a dependency
that cannot be fixed here, ``WAVEQUEUE_RECYCLE_AFTER_RUNS`` and
``WAVEQUEUE_RECYCLE_ABOVE_RSS_MB`` bound it: after the run that reaches a limit, the
worker sends itself SIGTERM, which is Celery's warm shutdown, the very path an
operator's stop takes. The consumer stops taking messages, runs in hand finish, and
closing the channel hands back to their queues the messages it held unacked
(prefetched ones and poll countdowns waiting in its timer), so none waits for the
visibility timeout. ``wavequeue worker`` then exits 0 and a supervisor that restarts
it (docker compose ``restart: unless-stopped``, systemd ``Restart=always``) starts a
fresh process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


def own_rss_bytes() -> int:
    """This process's resident memory, from ``/proc`` (one small read)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_SIZE


def warm_stop_self() -> None:
    """Celery's warm shutdown, started as an operator's SIGTERM starts it."""
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class RecycleLimits:
    after_runs: int | None = None
    above_rss_mb: float | None = None

    @property
    def enabled(self) -> bool:
        return self.after_runs is not None or self.above_rss_mb is not None

    def reached(self, runs: int, rss: Callable[[], int]) -> str | None:
        """Why the worker should recycle after ``runs`` runs, or None."""
        if self.after_runs is not None and runs >= self.after_runs:
            return f"{runs} runs done (WAVEQUEUE_RECYCLE_AFTER_RUNS={self.after_runs})"
        if self.above_rss_mb is not None:
            resident = rss() / MB
            if resident > self.above_rss_mb:
                return (
                    f"resident memory {resident:.1f} MB "
                    f"(WAVEQUEUE_RECYCLE_ABOVE_RSS_MB={self.above_rss_mb:g})"
                )
        return None


class Recycler:
    """Counts runs; asks for one warm stop when a limit is reached."""

    def __init__(
        self,
        limits: RecycleLimits,
        *,
        rss: Callable[[], int] = own_rss_bytes,
        stop: Callable[[], None] = warm_stop_self,
    ) -> None:
        self._limits = limits
        self._rss = rss
        self._stop = stop
        self._lock = threading.Lock()  # runs end on every pool thread
        self._runs = 0
        self._stopping = False

    def run_ended(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._runs += 1
            reason = self._limits.reached(self._runs, self._rss)
            if reason is None:
                return
            self._stopping = True
        log.warning("recycling this worker: %s; warm stop, its supervisor starts anew", reason)
        self._stop()
