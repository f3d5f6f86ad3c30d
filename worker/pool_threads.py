"""Start every thread of the threads pool when the worker starts, not on demand.

``ThreadPoolExecutor`` (Celery's threads pool) adds a thread only when a task arrives
and none is idle, so a worker's thread count creeps up to its concurrency over hours,
each new high of concurrent runs adding one. That looks like a leak on every chart of
threads (and of the resident memory their stacks take), and it is not one. Starting
them all at once makes a worker's threads a constant from its first minute (``make
soak`` judges threads flat after warm-up; README "Memory over long runs").

Each thread is made busy with a wait on one barrier: a submit finds no idle thread
and adds one, until all ``limit`` exist; then the barrier lets them all go.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

#: Longest wait for the pool's threads to meet (a worker that cannot start threads this
#: fast has other problems; the pool then simply grows on demand, as before).
MEET_TIMEOUT = 10.0


def start_all_threads(executor: ThreadPoolExecutor, limit: int) -> int:
    """Make ``executor`` start ``limit`` threads now; returns how many it has."""
    missing = limit - len(executor._threads)
    if missing <= 0:
        return len(executor._threads)
    barrier = threading.Barrier(limit)

    def meet() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(MEET_TIMEOUT)

    for _ in range(limit):
        executor.submit(meet)
    return len(executor._threads)


def start_pool_threads(pool: object) -> None:
    """For Celery's threads pool (anything else is left alone)."""
    executor = getattr(pool, "executor", None)
    limit = getattr(pool, "limit", None)
    if isinstance(executor, ThreadPoolExecutor) and isinstance(limit, int) and limit > 0:
        started = start_all_threads(executor, limit)
        log.debug("threads pool: %d threads started", started)
