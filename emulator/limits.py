"""Account limits, per API key as WaveSpeed applies them per account.

* ``RateLimiter``: images per minute over a sliding 60 s window; over it, the
  submit answers 429 with ``Retry-After``.
* ``ConcurrencyGate``: at most N predictions processing per key; the rest wait
  in FIFO order (and stay ``created``) until a slot frees, as WaveSpeed queues
  over-concurrency tasks server-side instead of refusing them.

Both are used from the IOLoop thread only.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque

RATE_WINDOW_SECONDS = 60.0


class RateLimiter:
    def __init__(self) -> None:
        self._taken: dict[str, deque[tuple[float, int]]] = {}

    def try_take(self, owner: str, images: int, limit: int, now: float) -> int | None:
        """Record ``images`` for ``owner`` and return None, or the seconds to wait (>= 1)."""
        taken = self._taken.setdefault(owner, deque())
        while taken and taken[0][0] <= now - RATE_WINDOW_SECONDS:
            taken.popleft()
        in_window = sum(count for _, count in taken)
        if in_window + images <= limit:
            taken.append((now, images))
            return None
        if images > limit or not taken:
            return math.ceil(RATE_WINDOW_SECONDS)
        # Wait until enough of the oldest entries leave the window.
        freed, wait = 0, RATE_WINDOW_SECONDS
        for stamp, count in taken:
            freed += count
            wait = stamp + RATE_WINDOW_SECONDS - now
            if in_window - freed + images <= limit:
                break
        return max(1, math.ceil(wait))

    def clear(self) -> None:
        self._taken.clear()


class ConcurrencyGate:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._active: Counter[str] = Counter()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def _has_room(self, owner: str) -> bool:
        return self.limit is None or self._active[owner] < self.limit

    def would_wait(self, owner: str) -> bool:
        return not self._has_room(owner) or bool(self._waiting.get(owner))

    async def acquire(self, owner: str) -> None:
        if not self.would_wait(owner):
            self._active[owner] += 1
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.release(owner)  # a slot was handed over just as we were cancelled
            else:
                self._waiting[owner].remove(slot)
            raise

    def release(self, owner: str) -> None:
        """Free a slot: hand it to the next waiter of the same key, if any."""
        waiting = self._waiting.get(owner)
        while waiting:
            slot = waiting.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes on; the active count stays
                return
        self._active[owner] -= 1

    def set_limit(self, limit: int | None) -> None:
        """Change the limit; a higher one lets waiters start at once."""
        self.limit = limit
        for owner, waiting in self._waiting.items():
            while waiting and self._has_room(owner):
                slot = waiting.popleft()
                if not slot.done():
                    self._active[owner] += 1
                    slot.set_result(None)
