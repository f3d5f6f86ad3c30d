"""A worker recycles itself at a limit (``worker.recycle``): warm stop, exit 0, and the
jobs it held finish on the fresh worker its supervisor starts, none lost, none
submitted twice.

The threads pool has no ``worker_max_tasks_per_child``; these limits stand in for it.
At the moment of the recycle the worker holds poll countdowns of jobs in flight (the
emulator takes 2 s per prediction and polls come every 0.2-1 s): they go back to their
queue at once, not after the visibility timeout.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.stack import worker_stack
from worker.constants import QUEUES

T2I = "flux-kontext-pro/text-to-image"
JOBS = 12
RECYCLE_AFTER_RUNS = 10


def test_recycle_after_runs_hands_held_jobs_to_the_next_worker(tmp_path: Path) -> None:
    with worker_stack(tmp_path, latency="fixed:2", workers=0) as stack:
        recycling = stack.start_worker(
            concurrency=4, WAVEQUEUE_RECYCLE_AFTER_RUNS=str(RECYCLE_AFTER_RUNS)
        )
        job_ids = [stack.jobs.enqueue(T2I, prompt=f"recycle {n}") for n in range(JOBS)]
        assert recycling.process is not None
        status = recycling.process.wait(timeout=60)  # it stops by itself
        log = recycling.log()
        assert status == 0, log[-3000:]
        assert f"{RECYCLE_AFTER_RUNS} runs done (WAVEQUEUE_RECYCLE_AFTER_RUNS" in log
        assert "Warm shutdown" in log
        client = stack.jobs.store.client
        # Nothing it held waits for the visibility timeout: all back in a queue.
        assert client.hlen("unacked") == 0
        records = stack.jobs.store.get_many(job_ids)
        unfinished = [r.id for r in records if r is not None and not r.status.is_terminal]
        assert unfinished, "the limit came after every job had ended: nothing was held"
        assert sum(client.llen(queue) for queue in QUEUES) > 0

        stack.start_worker(concurrency=4)  # what its supervisor does
        finished = stack.jobs.wait(job_ids, timeout=60)
        assert [r.status.value for r in finished] == ["completed"] * JOBS
        assert sorted(stack.input_submissions().values()) == [1] * JOBS


def test_recycle_above_rss_stops_after_the_run_that_finds_it(tmp_path: Path) -> None:
    with worker_stack(tmp_path, workers=0) as stack:
        # Every worker is above 1 MB: the first run that ends finds the limit reached.
        recycling = stack.start_worker(concurrency=2, WAVEQUEUE_RECYCLE_ABOVE_RSS_MB="1")
        job_id = stack.jobs.enqueue(T2I, prompt="recycle on memory")
        assert recycling.process is not None
        started = time.monotonic()
        assert recycling.process.wait(timeout=60) == 0
        assert "(WAVEQUEUE_RECYCLE_ABOVE_RSS_MB=1)" in recycling.log()
        assert time.monotonic() - started < 60
        stack.start_worker(concurrency=2)
        [record] = stack.jobs.wait([job_id], timeout=60)
        assert record.status.value == "completed"
        assert list(stack.input_submissions().values()) == [1]
