"""One clock for every host: wall-clock seconds as the Redis server tells them.

Leases, deadlines, poll due times and the shared rate limiter are compared
across machines: a submit lease written by one worker is judged expired by
another, a deadline set by a producer is enforced by a worker's sweeper. With
each host's own clock, a few seconds of skew would expire leases early (a
second POST) or deadlines late. The limiter's Lua already reads Redis ``TIME``;
``RedisClock`` gives Python code the same time without a round trip per call:
it reads ``TIME`` once, then advances with the local monotonic clock (which no
NTP step can move), and reads ``TIME`` again every ``resync_every`` seconds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Protocol

import redis


class Clock(Protocol):
    """Seconds since the epoch; the one notion of "now" the worker's decisions use."""

    def __call__(self) -> float: ...


class RedisClock:
    """Redis ``TIME``, read at most every ``resync_every`` seconds, monotonic in between."""

    def __init__(self, client: redis.Redis, *, resync_every: float = 60.0) -> None:
        self._client = client
        self._resync_every = resync_every
        self._lock = threading.Lock()
        #: (Redis time at the last sync, the local monotonic time it corresponds to)
        self._anchor: tuple[float, float] | None = None

    def __call__(self) -> float:
        anchor = self._anchor
        mono = time.monotonic()
        if anchor is None:
            anchor = self._sync()
        elif mono - anchor[1] >= self._resync_every:
            # Redis unreachable: keep counting from the last reading; the next call tries again.
            with contextlib.suppress(redis.RedisError):
                anchor = self._sync()
        return anchor[0] + (time.monotonic() - anchor[1])

    def _sync(self) -> tuple[float, float]:
        # One thread reads TIME; the others keep counting from the last reading rather than
        # queue behind a read that may be retrying through an outage.
        if not self._lock.acquire(blocking=self._anchor is None):
            assert self._anchor is not None
            return self._anchor
        try:
            before = time.monotonic()
            seconds, micros = self._client.time()
            after = time.monotonic()
            # The answer was read somewhere between before and after: take the middle.
            self._anchor = (seconds + micros / 1e6, (before + after) / 2)
            return self._anchor
        finally:
            self._lock.release()
