"""A progress bar for the demo's batch, fed by ``JobClient.wait_all(on_progress=...)``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from worker.models import JobRecord, JobStatus

WIDTH = 30


class ProgressBar:
    """``[#########.....] 12/20 completed, 0 failed, 6s``; redrawn in place on a
    terminal, printed on change (at most once a second) otherwise."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.stream: TextIO = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._last: tuple[int, int] | None = None
        self._last_at = 0.0

    def update(self, finished: list[JobRecord]) -> None:
        completed = sum(record.status is JobStatus.COMPLETED for record in finished)
        counts = (completed, len(finished) - completed)
        now = time.monotonic()
        if self.live:
            self.stream.write("\r" + self.render(counts, now - self.started))
        elif counts != self._last and (now - self._last_at >= 1 or sum(counts) == self.total):
            self.stream.write(self.render(counts, now - self.started) + "\n")
            self._last, self._last_at = counts, now
        self.stream.flush()

    def finish(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

    def render(self, counts: tuple[int, int], elapsed: float) -> str:
        completed, failed = counts
        filled = round(WIDTH * (completed + failed) / self.total) if self.total else WIDTH
        bar = "#" * filled + "." * (WIDTH - filled)
        return (
            f"{self.label} [{bar}] {completed + failed}/{self.total} done: "
            f"{completed} completed, {failed} failed, {elapsed:.0f}s"
        )
