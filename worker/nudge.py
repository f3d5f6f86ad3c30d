"""Jobs whose next message this worker lost to a broker outage, sent again once Redis is back.

A run that is under way when Redis goes away can lose its job's next message: the
store write fails (celery then acks the failed run), or the job's next poll is
claimed and its countdown message cannot be published (celery rejects the run's own
message). The record is fine; only the message is gone. The sweeper would find the
job after its grace period (minutes); this worker knows at once, so it keeps the job
id here and a thread re-sends it (``Sweeper.bring_back``) as soon as Redis answers.
A re-send of a message that was not lost after all is harmless: every step is a
compare-and-set on the record. If this process dies first, the sweeper still finds
the job.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: How often the thread tries while jobs are waiting to be brought back.
RETRY_INTERVAL = 1.0


class Nudger:
    def __init__(self, bring_back: Callable[[str], object]) -> None:
        self._bring_back = bring_back
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        #: The process whose thread runs ``run`` (a prefork child needs its own).
        self._thread_pid: int | None = None

    def start(self, stop: threading.Event | None = None) -> None:
        """Run in a daemon thread of this process (again after a fork)."""
        with self._lock:
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
        if stop is not None:
            self._stop = stop
        threading.Thread(
            target=self.run, args=(self._stop,), name="wavequeue-nudger", daemon=True
        ).start()

    def add(self, job_id: str) -> None:
        with self._lock:
            self._pending.add(job_id)
        self.start()  # in a prefork child, the first lost job starts its thread
        self._wake.set()

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def flush(self) -> None:
        """Try every pending job once; keep those Redis could not take yet."""
        for job_id in sorted(self.pending()):
            try:
                self._bring_back(job_id)
            except Exception:  # Redis still away (or any other failure): try again later
                log.debug("job %s: not brought back yet", job_id, exc_info=True)
                continue
            # Sent, or nothing to send (ended; a chain step the sweeper's rule will follow).
            with self._lock:
                self._pending.discard(job_id)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._wake.wait(5.0):
                continue
            self.flush()
            if self.pending():
                stop.wait(RETRY_INTERVAL)
            else:
                self._wake.clear()
                if self.pending():  # added between the flush and the clear
                    self._wake.set()
