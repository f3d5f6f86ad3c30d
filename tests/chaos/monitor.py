"""What happened when: the faults (a timeline) and every job's movement (a monitor).

The monitor reads, once a second, a small signature of every live job's record
(status, polls, poll sequence, submit attempts, error retries, prediction id); any
change means a worker did something with that job. From these change times and the
fault timeline come the recovery figures (first job moving again after a fault, all
done) and the "moves again within N s" rule. A sample that fails (Redis down) is
skipped: the monitor never stops on an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.constants import JOB_KEY

SIGNATURE_FIELDS = ("status", "polls", "poll_seq", "attempts", "error_retries", "prediction_id")
TERMINAL = frozenset({"completed", "failed", "timed_out", "cancelled"})
IN_FLIGHT = frozenset({"submitting", "submitted", "processing"})


@dataclass
class FaultEvent:
    kind: str
    label: str
    start: float
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: Job id -> status, for jobs submitting/submitted/processing when the fault began.
    in_flight_at_start: dict[str, str] = field(default_factory=dict)
    #: Jobs not terminal when the fault ended (the ones that had to recover).
    live_at_end: set[str] = field(default_factory=set)


@dataclass
class Timeline:
    events: list[FaultEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_kind(self, *kinds: str) -> list[FaultEvent]:
        with self.lock:
            return [event for event in self.events if event.kind in kinds]


@dataclass
class JobTrace:
    signature: tuple[str, ...] | None = None
    status: str = "?"
    #: When a change of the signature was first seen (the first sample counts).
    moves: list[float] = field(default_factory=list)

    def first_move_after(self, moment: float) -> float | None:
        return next((t for t in self.moves if t > moment), None)


@dataclass
class ProgressMonitor:
    client: redis.Redis
    job_ids: Callable[[], Iterable[str]]
    timeline: Timeline
    interval: float = 1.0
    traces: dict[str, JobTrace] = field(default_factory=dict)
    failed_samples: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> ProgressMonitor:
        self.thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(30)

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.sample()
            except redis.RedisError:
                self.failed_samples += 1

    def sample(self) -> None:
        with self.lock:
            watched = [
                job_id
                for job_id in self.job_ids()
                if self.traces.setdefault(job_id, JobTrace()).status not in TERMINAL
            ]
        pipe = self.client.pipeline(transaction=False)
        for job_id in watched:
            pipe.hmget(JOB_KEY.format(job_id=job_id), list(SIGNATURE_FIELDS))
        rows = pipe.execute()
        now = time.time()
        with self.lock:
            for job_id, row in zip(watched, rows, strict=True):
                signature = tuple(_text(value) for value in row)
                trace = self.traces[job_id]
                if signature != trace.signature:
                    trace.signature = signature
                    trace.status = signature[0] or "missing"
                    trace.moves.append(now)

    def statuses(self) -> dict[str, str]:
        """Every known job's status as last seen."""
        with self.lock:
            return {job_id: trace.status for job_id, trace in self.traces.items()}

    # --- faults -------------------------------------------------------------------------

    def begin(self, kind: str, label: str, **detail: Any) -> FaultEvent:
        """Start a fault event; records which jobs were in flight (read now, not from the
        last sample, so a fault that follows an enqueue burst sees those jobs)."""
        self.sample_quietly()
        statuses = self.statuses()
        event = FaultEvent(
            kind,
            label,
            time.time(),
            detail=dict(detail),
            in_flight_at_start={j: s for j, s in statuses.items() if s in IN_FLIGHT},
        )
        with self.timeline.lock:
            self.timeline.events.append(event)
        return event

    def end(self, event: FaultEvent, **detail: Any) -> None:
        event.end = time.time()
        event.detail.update(detail)
        self.sample_quietly()
        event.live_at_end = {j for j, s in self.statuses().items() if s not in TERMINAL}

    def sample_quietly(self) -> None:
        try:
            self.sample()
        except redis.RedisError:
            self.failed_samples += 1

    def first_move_after(self, job_ids: Iterable[str], moment: float) -> float | None:
        with self.lock:
            moves = [self.traces[j].first_move_after(moment) for j in job_ids if j in self.traces]
        found = [t for t in moves if t is not None]
        return min(found) if found else None

    def trace(self, job_id: str) -> JobTrace:
        with self.lock:
            return self.traces.get(job_id, JobTrace())


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
