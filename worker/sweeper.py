"""The sweeper: finds jobs whose message is gone and brings them back.

kombu's Redis transport pops a message (BRPOP) before it records it as unacked,
so a worker killed in between loses that message for good; the visibility
timeout cannot bring it back. Every worker runs a sweeper thread; a Redis lock
lets one sweep at a time. Each pass:

1. times out live jobs past their deadline (whatever happened to their message);
2. re-sends ``run_job`` for jobs whose next message is overdue by more than the
   grace period (a chain step with the steps after it). A re-send is harmless if
   the original was only late: every step is a compare-and-set on the record.

Jobs still ``queued`` that no worker ever picked up are not re-sent (a long
backlog would multiply messages); their deadline ends them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.constants import SWEEPER_LOCK_KEY
from worker.errors import JobNotFoundError
from worker.runner import JobRunner
from worker.store import JobSnapshot, JobStore

log = logging.getLogger(__name__)

#: How many jobs one pass looks at per kind (the rest wait for the next pass).
BATCH = 500


@dataclass(frozen=True)
class SweepReport:
    timed_out: int
    resent: int


class Sweeper:
    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        resend: Callable[[JobSnapshot], None],
        *,
        grace: float,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.runner = runner
        self.resend = resend
        self.grace = grace
        self.interval = interval
        self.clock = clock

    def sweep_once(self) -> SweepReport:
        now = self.clock()
        timed_out = sum(
            1 for job_id in self.store.past_deadline(now, BATCH) if self._expire(job_id)
        )
        resent = 0
        for job_id in self.store.overdue(now - self.grace, BATCH):
            try:
                snap = self.store.snapshot(job_id)
            except JobNotFoundError:
                self.store.unmark_due(job_id)
                continue
            if snap.record.is_terminal:
                self.store.unmark_due(job_id)
                continue
            # Not again before another grace period, whatever becomes of this one.
            self.store.mark_due(job_id, now + self.grace)
            log.warning("job %s: its message is overdue; re-sending it", job_id)
            self.resend(snap)
            resent += 1
        return SweepReport(timed_out=timed_out, resent=resent)

    def _expire(self, job_id: str) -> bool:
        try:
            return self.runner.expire(job_id) is not None
        except JobNotFoundError:
            return False

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``interval`` seconds while this worker holds the lock."""
        lock_ms = int(self.interval * 1000)
        while not stop.wait(self.interval):
            try:
                if self.store.client.set(SWEEPER_LOCK_KEY, "1", nx=True, px=lock_ms):
                    report = self.sweep_once()
                    if report.timed_out or report.resent:
                        log.warning("sweeper: %s", report)
            except Exception:  # a sweep must never kill its thread
                log.exception("sweeper pass failed; trying again next interval")
