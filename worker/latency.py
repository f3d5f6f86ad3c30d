"""Each model's recent inference times, as the poll schedule uses them, cached per process.

The store keeps the last ``LATENCY_SAMPLE_SIZE`` inference times per model (written
by each completion). Reading them on every poll would cost a round trip per run for
a figure that moves slowly, so each worker process reads a model's samples at most
every ``REFRESH_SECONDS`` and keeps the percentiles (``schedule.LatencyProfile``).
"""

from __future__ import annotations

import threading

from worker.clock import Clock
from worker.schedule import LatencyProfile
from worker.store import JobStore

REFRESH_SECONDS = 30.0


class LatencyProfiles:
    def __init__(self, store: JobStore, *, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[float, LatencyProfile | None]] = {}

    def profile(self, model: str) -> LatencyProfile | None:
        now = self._clock()
        cached = self._cached.get(model)
        if cached is not None and now - cached[0] < REFRESH_SECONDS:
            return cached[1]
        profile = LatencyProfile.of(self._store.latency_samples(model))
        with self._lock:
            self._cached[model] = (now, profile)
        return profile
