"""Worker heartbeats in Redis, so that "no worker is alive" is a figure the exporter reads.

Flower's ``flower_worker_online`` stays 1 for a worker that was SIGKILLed or stopped
(SIGSTOP, a frozen VM): it changes only on a ``worker-offline`` event, which such a
worker never sends, or when Flower purges it minutes later. Here each worker writes its
node name into ``WORKERS_KEY`` scored by Redis time every ``WORKER_HEARTBEAT_INTERVAL``
seconds, from the consumer's event loop (the loop that fetches messages and fires
countdowns, like Celery's own heartbeat): a worker whose loop stops, whatever the
reason, stops beating. The exporter counts workers that beat within
``WORKER_SILENT_AFTER`` as alive and the others as silent. A warm shutdown removes the
worker at once; a dead one is dropped by the others after ``WORKER_FORGET_AFTER``.
"""

from __future__ import annotations

import logging
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
    """Consumer bootstep: beat on the consumer's timer while it consumes."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._client: redis.Redis | None = None
        self._clock: Clock | None = None
        self._timer_entry: Any = None
        self._name = ""

    def start(self, parent: Any) -> None:
        if self._client is None:
            # One attempt per beat: a beat that retried through a Redis outage would hold
            # up the event loop, and the next beat comes two seconds later anyway.
            self._client = redis_client(Settings.from_env(), retry_window=0)
            self._clock = RedisClock(self._client)
        self._name = parent.hostname
        self._beat()
        self._timer_entry = parent.timer.call_repeatedly(WORKER_HEARTBEAT_INTERVAL, self._beat)

    def stop(self, parent: Any) -> None:
        # A consumer restart (lost connection) stops the beats; they resume at its start.
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        if self._client is not None and self._name:
            try:
                forget(self._client, self._name)
            except redis.RedisError as exc:
                log.warning("could not remove this worker from %s (%s)", WORKERS_KEY, exc)

    def _beat(self) -> None:
        assert self._client is not None and self._clock is not None
        try:
            beat(self._client, self._name, self._clock())
        except redis.RedisError as exc:
            # The broker connection reports the outage; the next beat tries again.
            log.debug("heartbeat not written (%s)", type(exc).__name__)
