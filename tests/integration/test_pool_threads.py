"""A real worker starts its pool's threads when it starts: a burst of jobs later adds
none (``worker.pool_threads``), so a thread count that rises is never the pool warming
up."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.stack import worker_stack

T2I = "flux-kontext-pro/text-to-image"
CONCURRENCY = 8


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_the_pool_threads_exist_before_the_first_job(tmp_path: Path) -> None:
    with worker_stack(tmp_path, latency="fixed:0.5", workers=0) as stack:
        worker = stack.start_worker(concurrency=CONCURRENCY)
        assert worker.process is not None
        warm = stack.jobs.wait([stack.jobs.enqueue(T2I, prompt="first")], timeout=60)
        assert warm[0].status.value == "completed"
        before = threads_of(worker.process.pid)
        assert before > CONCURRENCY
        job_ids = [stack.jobs.enqueue(T2I, prompt=f"burst {n}") for n in range(4 * CONCURRENCY)]
        finished = stack.jobs.wait(job_ids, timeout=120)
        assert [r.status.value for r in finished] == ["completed"] * len(job_ids)
        assert threads_of(worker.process.pid) == before
