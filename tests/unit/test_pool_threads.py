"""Every thread of a threads pool starts at once (``worker.pool_threads``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from worker.pool_threads import start_all_threads


def test_all_threads_start_and_the_pool_still_runs_work() -> None:
    executor = ThreadPoolExecutor(max_workers=16)
    try:
        assert len(executor._threads) == 0
        assert start_all_threads(executor, 16) == 16
        # A burst of work later adds no thread: they all exist.
        results = [executor.submit(pow, n, 2) for n in range(100)]
        assert [f.result(timeout=10) for f in results] == [n * n for n in range(100)]
        assert len(executor._threads) == 16
    finally:
        executor.shutdown()


def test_a_pool_already_full_is_left_as_it_is() -> None:
    executor = ThreadPoolExecutor(max_workers=2)
    try:
        start_all_threads(executor, 2)
        assert start_all_threads(executor, 2) == 2
    finally:
        executor.shutdown()
