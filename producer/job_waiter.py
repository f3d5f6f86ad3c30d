"""What ``JobClient.wait_all`` looks at: only the jobs announced, everything now and then.

A look at everything reads the hot state of the jobs still pending (``get_states``: no
request bodies) and the full record only of those that ended. A look at announced jobs
reads just their records: the announcement is published in the step that makes a
record terminal, so those are final (one that is not, a stray message, stays pending).
Each record is read in full once, when its job ends: waiting on N jobs costs O(N).

``on_progress`` gets the records finished so far; it is called on the first look, then
when more have finished but at most every ``PROGRESS_INTERVAL`` seconds (so a stream of
endings costs O(N) calls, not one per job, each with the whole list), and once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from producer.errors import JobNotFoundError
from producer.waiting import Check
from worker.models import JobRecord
from worker.store import JobStore

#: Seconds between two ``on_progress`` calls at most (the first and last are immediate).
PROGRESS_INTERVAL = 0.25

Progress = Callable[[list[JobRecord]], None]


class JobsWaiter:
    """The state of one ``wait_all``: pending ids, finished records, progress calls."""

    def __init__(
        self, store: JobStore, job_ids: Sequence[str], on_progress: Progress | None = None
    ) -> None:
        self.store = store
        self.ids = list(job_ids)
        self.pending = set(self.ids)
        self.finished: dict[str, JobRecord] = {}
        self.on_progress = on_progress
        self._progress_at: float | None = None  # when on_progress was last called
        self._progress_owed = False

    def look(self, announced: set[str] | None) -> Check[list[JobRecord]]:
        if announced is None:
            ended = self._ended_among(list(self.pending))
        else:
            ended = [job_id for job_id in announced if job_id in self.pending]
        if ended:
            for record in self._records(ended):
                if record.is_terminal:
                    self.finished[record.id] = record
                    self.pending.discard(record.id)
            self._progress_owed = True
        if not self.pending:
            self._report(force=True)
            return Check([self.finished[job_id] for job_id in self.ids], set())
        return Check(None, self.pending, self._report())

    def _ended_among(self, job_ids: list[str]) -> list[str]:
        states = self.store.get_states(job_ids)
        ended = []
        for job_id, state in zip(job_ids, states, strict=True):
            if state is None:
                raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
            if state.is_terminal:
                ended.append(job_id)
        return ended

    def _records(self, job_ids: list[str]) -> list[JobRecord]:
        records = self.store.get_many(job_ids)
        for job_id, record in zip(job_ids, records, strict=True):
            if record is None:
                raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
        return [record for record in records if record is not None]

    def _report(self, *, force: bool = False) -> float | None:
        """Call ``on_progress`` if it is owed and due; return when the next call is due
        (None: nothing owed)."""
        if self.on_progress is None:
            return None
        now = time.monotonic()
        first = self._progress_at is None
        if not (first or force or self._progress_owed):
            return None
        due = now if self._progress_at is None else self._progress_at + PROGRESS_INTERVAL
        if first or force or now >= due:
            self._progress_at = now
            self._progress_owed = False
            self.on_progress(list(self.finished.values()))
            return None
        return due
