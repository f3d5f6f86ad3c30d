"""When a worker recycles itself (``worker.recycle``): the limits, and one stop only."""

from __future__ import annotations

import threading

from worker.recycle import MB, RecycleLimits, Recycler


def test_no_limit_never_recycles() -> None:
    limits = RecycleLimits()
    assert not limits.enabled
    assert limits.reached(10**9, lambda: 10**12) is None


def test_run_limit_is_reached_at_its_count() -> None:
    limits = RecycleLimits(after_runs=3)
    assert limits.reached(2, lambda: 0) is None
    assert "3 runs done" in (limits.reached(3, lambda: 0) or "")


def test_memory_limit_reads_resident_memory() -> None:
    limits = RecycleLimits(above_rss_mb=200)
    assert limits.reached(1, lambda: 200 * MB) is None
    assert "resident memory 201.0 MB" in (limits.reached(1, lambda: 201 * MB) or "")


def test_many_threads_ending_runs_ask_for_one_stop() -> None:
    stops: list[int] = []
    recycler = Recycler(RecycleLimits(after_runs=50), rss=lambda: 0, stop=lambda: stops.append(1))

    def end_runs() -> None:
        for _ in range(40):
            recycler.run_ended()

    threads = [threading.Thread(target=end_runs) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stops == [1]
