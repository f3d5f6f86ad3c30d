"""Worker heartbeats in Redis, so that "no worker is alive" is a figure the exporter reads.

Flower's ``flower_worker_online`` stays 1 for a worker that was SIGKILLed or stopped
(SIGSTOP, a frozen VM): it changes only on a ``worker-offline`` event, which such a
worker never sends, or when Flower purges it minutes later. Here each worker writes its
node name into ``WORKERS_KEY`` scored by Redis time every ``WORKER_HEARTBEAT_INTERVAL``
seconds, paced by the consumer's event loop (the loop that fetches messages and fires
countdowns, like Celery's own heartbeat): a worker whose loop stops, whatever the
reason, stops beating. The exporter counts workers that beat within
``WORKER_SILENT_AFTER`` as alive and the others as silent. A warm shutdown removes the
worker at once; a dead one is dropped by the others after ``WORKER_FORGET_AFTER``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import bootsteps

from worker.clock import Clock, RedisClock
from worker.constants import WORKER_FORGET_AFTER, WORKER_HEARTBEAT_INTERVAL, WORKERS_KEY
from worker.redis_connection import redis_client
from worker.settings import Settings

log = logging.getLogger(__name__)


def beat(client: redis.Redis, name: str, now: float) -> None:
    """Record that ``name`` is alive at ``now``; forget workers silent for an hour."""
    pipe = client.pipeline(transaction=False)
    pipe.zadd(WORKERS_KEY, {name: now})
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - WORKER_FORGET_AFTER)
    pipe.execute()


def forget(client: redis.Redis, name: str) -> None:
    """``name`` stopped on purpose: not alive, and not silent either."""
    client.zrem(WORKERS_KEY, name)


class WorkerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: beat on the consumer's timer while it consumes.

    The timer only signals; a thread of this step writes. So a beat still proves the
    event loop runs, and a slow or unreachable Redis never holds the loop up (the write
    waits up to the Redis socket timeouts, on the thread).
    """

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._client: redis.Redis | None = None
        self._due = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer_entry: Any = None
        self._name = ""

    def start(self, parent: Any) -> None:
        self._name = parent.hostname
        if self._thread is None:
            # One attempt per beat: the next beat comes two seconds later anyway.
            self._client = redis_client(Settings.from_env(), retry_window=0)
            self._thread = threading.Thread(
                target=self._write_beats,
                args=(self._client, RedisClock(self._client)),
                name="wavequeue-heartbeat",
                daemon=True,
            )
            self._thread.start()
        self._due.set()
        self._timer_entry = parent.timer.call_repeatedly(WORKER_HEARTBEAT_INTERVAL, self._due.set)

    def stop(self, parent: Any) -> None:
        # A consumer restart (lost connection) stops the beats; they resume at its start.
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        self._stopped.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(10)  # a write in flight must not re-add us after forget()
        if self._client is not None and self._name:
            try:
                forget(self._client, self._name)
            except redis.RedisError as exc:
                log.warning("could not remove this worker from %s (%s)", WORKERS_KEY, exc)

    def _write_beats(self, client: redis.Redis, clock: Clock) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._stopped.is_set():
                return
            try:
                beat(client, self._name, clock())
            except redis.RedisError as exc:
                # The broker connection reports the outage; the next beat tries again.
                log.debug("heartbeat not written (%s)", type(exc).__name__)
