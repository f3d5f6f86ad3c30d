"""The sweeper: finds jobs whose message is gone and brings them back.

kombu's Redis transport pops a message (BRPOP) before it records it as unacked,
so a worker killed in between loses that message for good; the visibility
timeout cannot bring it back. Every worker runs a sweeper thread; a Redis lock
lets one sweep at a time. Each pass:

1. times out live jobs past their deadline (whatever happened to their message);
2. re-sends ``run_job`` for jobs whose next message is overdue by more than the
   grace period (a chain step with the steps after it). A re-send is harmless if
   the original was only late: every step is a compare-and-set on the record.

A job still ``queued`` is indexed from its creation, but re-sent only when its
queue is empty (its message should have been taken long ago) — during a backlog
it simply waits, so a long queue never multiplies messages. A chain step waiting
for the step before is re-sent (with that step's output) only once that step has
completed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.constants import QUEUES, SWEEPER_LOCK_KEY
from worker.errors import JobNotFoundError
from worker.models import JobRecord, JobStatus
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
        resend: Callable[[JobSnapshot, dict[str, Any]], None],
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
        overdue = self.store.overdue(now - self.grace, BATCH)
        if not overdue:
            return SweepReport(timed_out=timed_out, resent=0)
        # Looked at now: none again before another grace period, whatever we decide.
        self.store.mark_due_many(overdue, now)
        backlogged = self._backlogged_queues()
        resent = 0
        for job_id in overdue:
            try:
                snap = self.store.snapshot(job_id)
            except JobNotFoundError:
                self.store.unmark_due(job_id)
                continue
            if snap.record.is_terminal:
                self.store.unmark_due(job_id)
                continue
            first_kwargs = self._resend_kwargs(snap, now, backlogged)
            if first_kwargs is None:
                continue
            log.warning("job %s: its message is overdue; re-sending it", job_id)
            self.resend(snap, first_kwargs)
            resent += 1
        return SweepReport(timed_out=timed_out, resent=resent)

    def _backlogged_queues(self) -> set[str]:
        """Queues with messages waiting, read once per pass (one round trip)."""
        pipe = self.store.client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
        return {queue for queue, length in zip(QUEUES, pipe.execute(), strict=True) if length}

    def _resend_kwargs(
        self, snap: JobSnapshot, now: float, backlogged: set[str]
    ) -> dict[str, Any] | None:
        """What the re-sent message needs, or None when the job should wait longer."""
        record = snap.record
        if record.status is not JobStatus.QUEUED:
            return {"poll_seq": int(snap.number("poll_seq"))}
        if snap.field("awaiting_image") == "1":
            return self._waiting_step_kwargs(record, now)
        if record.priority.queue in backlogged:
            return None  # a backlog: its message is most likely still waiting in line
        return {}

    def _waiting_step_kwargs(self, record: JobRecord, now: float) -> dict[str, Any] | None:
        """A chain step waiting for the step before: re-send it only once that step
        completed more than a grace period ago (its own message was then lost)."""
        previous = self._previous_step(record)
        if previous is None or previous.status is not JobStatus.COMPLETED or not previous.outputs:
            return None
        if (previous.completed_at or now) > now - self.grace:
            return None
        return {"previous_output": previous.outputs[0]}

    def _previous_step(self, record: JobRecord) -> JobRecord | None:
        if not record.chain_id or not record.step or record.step < 2:
            return None
        try:
            chain = self.store.get_chain(record.chain_id)
            return self.store.get(chain.step_job_ids[record.step - 2])
        except JobNotFoundError:
            return None

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
