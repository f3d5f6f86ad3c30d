"""Start every thread of the threads pool when the worker starts, not on demand.

``ThreadPoolExecutor`` (Celery's threads pool) adds a thread only when a task arrives
and none is idle, so a worker's thread count creeps up to its concurrency over hours,
each new high of concurrent runs adding one. That looks like a leak on every chart of
threads (and of the resident memory their stacks take), and it is not one. Starting
them all at once makes a worker's threads a constant from its first minute (``make
soak`` judges threads flat after warm-up; README "Memory over long runs").

Each thread is made busy with a wait on one barrier: a submit finds no idle thread
and adds one, until all ``limit`` exist; then the barrier lets them all go. The same
meeting warms the Redis connection pool: each thread takes a connection and holds it
until every thread has one, so the pool opens as many as the threads can ever use at
once now, not one more at each new high of concurrent runs for hours (open files
that creep up look like a leak too).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import redis

log = logging.getLogger(__name__)

#: Longest wait for the pool's threads to meet (a worker that cannot start threads this
#: fast has other problems; the pool then simply grows on demand, as before).
MEET_TIMEOUT = 10.0


def start_all_threads(
    executor: ThreadPoolExecutor, limit: int, redis_pool: redis.ConnectionPool | None = None
) -> int:
    """Make ``executor`` start ``limit`` threads now (and ``redis_pool`` open a
    connection for each); returns how many threads it has."""
    missing = limit - len(executor._threads)
    if missing <= 0:
        return len(executor._threads)
    started, holding = threading.Barrier(limit), threading.Barrier(limit)

    def meet() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            started.wait(MEET_TIMEOUT)
            if redis_pool is not None:
                _hold_a_connection(redis_pool, holding)

    for _ in range(limit):
        executor.submit(meet)
    return len(executor._threads)


def _hold_a_connection(pool: redis.ConnectionPool, holding: threading.Barrier) -> None:
    try:
        connection = pool.get_connection()
    except redis.RedisError as exc:  # Redis away at start: the pool grows on demand
        log.debug("redis pool not warmed (%s)", exc)
        holding.abort()
        return
    try:
        holding.wait(MEET_TIMEOUT)
    finally:
        pool.release(connection)


def start_pool_threads(pool: object, redis_pool: redis.ConnectionPool | None = None) -> None:
    """For Celery's threads pool (anything else is left alone)."""
    executor = getattr(pool, "executor", None)
    limit = getattr(pool, "limit", None)
    if isinstance(executor, ThreadPoolExecutor) and isinstance(limit, int) and limit > 0:
        started = start_all_threads(executor, limit, redis_pool)
        log.debug("threads pool: %d threads started", started)
