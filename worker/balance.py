"""Low balance: submission pauses fleet-wide while the WaveSpeed account runs dry.

With ``WAVEQUEUE_LOW_BALANCE`` set, the sweeper (one worker at a time) reads the
account balance every ``WAVEQUEUE_BALANCE_CHECK_INTERVAL`` seconds. Below the
threshold it pauses every worker's submits the way a 429 does (the shared
limiter's pause, ``LOW_BALANCE_REASON`` as its reason), for a little longer than
the time to the next reading, so the pause never lapses between two readings while
the balance stays low; a metric and one log line say why. Once a reading is back at
or above the threshold, the pause is ended at once (``AccountLimiter.resume``: only
a pause whose reason is the low balance; a 429's runs its course). Jobs already at
WaveSpeed are not touched: their polls go on, and they are billed as usual.

The last reading is kept in ``BALANCE_KEY`` (``micros``, ``checked_at``, ``low``) for
the exporter and ``wavequeue budget``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from worker.constants import BALANCE_KEY, COUNTERS_KEY
from worker.errors import WaveSpeedError
from worker.money import dollars
from worker.ratelimit import MAX_PAUSE_SECONDS, AccountLimiter
from worker.store import counter_field

log = logging.getLogger(__name__)

#: The pause reason (and the prefix ``resume`` matches).
LOW_BALANCE_REASON = "low balance"


class BalanceAPI(Protocol):
    def balance(self) -> int: ...


@dataclass(frozen=True)
class BalanceReading:
    micros: int | None
    checked_at: float | None
    low: bool


class BalanceWatch:
    """Reads the balance when due and pauses or resumes submission (see the module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        limiter: AccountLimiter,
        api: BalanceAPI,
        *,
        threshold_micros: int | None,
        interval: float,
        clock: Callable[[], float],
        sweep_interval: float,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.api = api
        self.threshold = threshold_micros
        self.interval = interval
        self.clock = clock
        #: The pause outlasts the next reading by a sweep (the sweeper reads when due, at
        #: its own passes), so it never lapses between readings while the balance is low.
        self.pause_seconds = min(MAX_PAUSE_SECONDS, interval + 2 * sweep_interval)

    def check(self) -> BalanceReading | None:
        """Read the balance if a reading is due (any worker's: the time is in Redis), and
        act on it. None when off or not due, or when WaveSpeed did not answer (the pause,
        if any, then lapses on its own unless a later reading renews it)."""
        if self.threshold is None:
            return None
        now = self.clock()
        last = self.client.hget(BALANCE_KEY, "checked_at")
        if last is not None and now - float(last) < self.interval:
            return None
        try:
            micros = self.api.balance()
        except WaveSpeedError as exc:
            log.warning("could not read the WaveSpeed balance: %s", exc.message)
            self.client.hset(BALANCE_KEY, "checked_at", repr(now))
            return None
        was_low = self.client.hget(BALANCE_KEY, "low") == "1"
        low = micros < self.threshold
        self.client.hset(
            BALANCE_KEY,
            mapping={"micros": str(micros), "checked_at": repr(now), "low": "1" if low else "0"},
        )
        if low:
            reason = (
                f"{LOW_BALANCE_REASON}: {dollars(micros)} is below WAVEQUEUE_LOW_BALANCE "
                f"{dollars(self.threshold)}"
            )
            self.limiter.pause(self.pause_seconds, reason)
            if not was_low:
                self.client.hincrby(COUNTERS_KEY, counter_field("low_balance_pauses"), 1)
                log.warning("submission paused fleet-wide: %s (top the account up)", reason)
        elif was_low or self.limiter.pause_state().reason.startswith(LOW_BALANCE_REASON):
            self.limiter.resume(LOW_BALANCE_REASON)
            log.warning(
                "balance %s is back at or above WAVEQUEUE_LOW_BALANCE %s: submission resumes",
                dollars(micros),
                dollars(self.threshold),
            )
        return BalanceReading(micros, now, low)


def last_reading(client: redis.Redis) -> BalanceReading:
    """The sweeper's last reading (``micros`` None: never read)."""
    micros, checked_at, low = client.hmget(BALANCE_KEY, ["micros", "checked_at", "low"])
    return BalanceReading(
        int(micros) if micros is not None else None,
        float(checked_at) if checked_at is not None else None,
        low in {"1", b"1"},
    )
