"""One redis-py client per kombu channel, instead of one per broker call.

kombu's Redis channel builds a new ``redis.Redis`` object (on its shared connection
pool) for every publish, every unacked-record append and every ack
(``Channel.conn_or_acquire`` without a client). Building one costs about as much
CPU as the command it sends: redis-py fills a case-insensitive table of response
callbacks each time. Profiled on a worker, that was 9 % of its CPU.

A ``redis.Redis`` is safe to share between threads (each command borrows a
connection from the pool), so each channel keeps the one it built while its pool
is the same; a channel whose pool is replaced (reconnect, failover) builds a new one.
Applied once, on import of ``worker.celery_config``, to kombu's Redis and Sentinel
channels alike (the Sentinel channel inherits the method).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

_CACHED = "_wavequeue_client"


@contextmanager
def _conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    pool = self.pool
    cached = self.__dict__.get(_CACHED)
    if cached is None or cached.connection_pool is not pool:
        cached = self._create_client()
        self.__dict__[_CACHED] = cached
    yield cached


def install() -> None:
    """Idempotent: replaces ``Channel.conn_or_acquire`` once."""
    if kombu_redis.Channel.conn_or_acquire is not _conn_or_acquire:
        kombu_redis.Channel.conn_or_acquire = _conn_or_acquire  # type: ignore[method-assign]


install()
