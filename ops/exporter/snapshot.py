"""One read of everything the exporter reports, in one pipelined round trip.

Kept apart from the Prometheus types so the reading can be tested (and reasoned
about) on its own: what Redis holds, not how it is exposed.

A scrape costs the same number of Redis commands however many jobs are in flight:
live jobs are the counts the store's scripts keep in ``LIVE_KEY`` (one HGETALL, one
field per status and model), and the deadline figures are a ZCOUNT and the first
entry of ``DEADLINES_KEY``. No job record is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from ops.exporter.catalogue import HISTOGRAMS
from worker.constants import (
    CALLBACKS_KEY,
    COUNTERS_KEY,
    DEADLINES_KEY,
    DUE_POLLS_KEY,
    HISTOGRAM_KEY,
    IN_FLIGHT_KEY,
    LIVE_KEY,
    TENANT_LIVE_KEY,
    WORKER_QUEUES,
)
from worker.fairness import DEPTH_KEY, LINE_KEY
from worker.store import parse_counter_field

#: kombu's names for the hash and zset of delivered, not yet acked messages.
UNACKED_KEY = Channel.unacked_key
UNACKED_INDEX_KEY = Channel.unacked_index_key

Labels = tuple[tuple[str, str], ...]


def priority_list(queue: str, step: int) -> str:
    """The Redis list kombu uses for ``queue`` at priority ``step`` (0 is the plain name)."""
    return f"{queue}{Channel.sep}{step}" if step else queue


@dataclass(frozen=True)
class Histogram:
    """Non-cumulative bucket counts by upper bound, as the workers store them."""

    buckets: dict[float, int]
    sum: float
    count: int

    @classmethod
    def parse(cls, raw: dict[str, str]) -> Histogram:
        buckets = {
            float(name.removeprefix("le=")): int(value)
            for name, value in raw.items()
            if name.startswith("le=")
        }
        return cls(buckets, float(raw.get("sum", 0.0)), int(raw.get("count", 0)))

    def cumulative(self, bounds: Iterable[float]) -> list[tuple[float, int]]:
        """Prometheus buckets: count of observations <= each bound, ending with +Inf.

        ``bounds`` are the configured ones, so every bucket is exported even while
        empty; a bound seen in Redis but no longer configured is kept too.
        """
        every = sorted({*bounds, *self.buckets} - {math.inf})
        running = 0
        result = []
        for bound in every:
            running += self.buckets.get(bound, 0)
            result.append((bound, running))
        # The workers bump a bucket and the count in two commands; a scrape between
        # them must not make +Inf smaller than the last bucket.
        result.append((math.inf, max(self.count, running + self.buckets.get(math.inf, 0))))
        return result


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    #: (queue, priority step) -> messages waiting in that list.
    queue_lengths: dict[tuple[str, int], int]
    unacked: int
    #: Delivery time (epoch seconds) of the oldest unacked message, if any.
    oldest_unacked_at: float | None
    #: (status, model) -> live jobs, as the store counts them (0 once all have moved on).
    live_jobs: dict[tuple[str, str], int]
    #: Live jobs whose deadline has passed.
    past_deadline: int
    #: The earliest deadline of a live job (epoch seconds), if any job is live.
    earliest_deadline: float | None
    inflight: int
    #: Jobs waiting in the fair line for a submission slot (rate or in-flight cap).
    parked: int
    #: Callbacks owed (the outbox): not yet delivered, nor given up on.
    callbacks_pending: int
    #: Jobs whose next poll waits in Redis (deferred), and when the earliest is due.
    deferred_polls: int
    earliest_deferred_poll: float | None
    counters: dict[tuple[str, Labels], int]
    histograms: dict[str, Histogram] = field(default_factory=dict)
    #: (status, tenant) -> live jobs (``TENANT_LIVE_KEY``).
    tenant_live: dict[tuple[str, str], int] = field(default_factory=dict)
    #: tenant -> jobs of that tenant in the fair line (``fairness.DEPTH_KEY``).
    tenant_waiting: dict[str, int] = field(default_factory=dict)


def read_snapshot(
    client: redis.Redis, now: float, queues: Sequence[str] = WORKER_QUEUES
) -> Snapshot:
    """Everything in one pipeline: O(1) commands in the number of live jobs."""
    lists = [(queue, step) for queue in queues for step in PRIORITY_STEPS]
    pipe = client.pipeline(transaction=False)
    for queue, step in lists:
        pipe.llen(priority_list(queue, step))
    pipe.hlen(UNACKED_KEY)
    pipe.zrange(UNACKED_INDEX_KEY, 0, 0, withscores=True)
    pipe.zcount(DEADLINES_KEY, "-inf", f"({now!r}")
    pipe.zrange(DEADLINES_KEY, 0, 0, withscores=True)
    pipe.zcount(IN_FLIGHT_KEY, now, "+inf")  # expired slots belong to crashed workers
    pipe.zcard(LINE_KEY)  # jobs waiting in the fair line for a submission slot
    pipe.zcard(DUE_POLLS_KEY)
    pipe.zrange(DUE_POLLS_KEY, 0, 0, withscores=True)
    pipe.zcard(CALLBACKS_KEY)
    pipe.hgetall(LIVE_KEY)
    pipe.hgetall(COUNTERS_KEY)
    pipe.hgetall(TENANT_LIVE_KEY)
    pipe.hgetall(DEPTH_KEY)
    for name in HISTOGRAMS:
        pipe.hgetall(HISTOGRAM_KEY.format(name=name))
    replies = pipe.execute()

    lengths = dict(zip(lists, replies[: len(lists)], strict=True))
    (unacked, oldest, past_deadline, earliest, inflight, parked, deferred, first_deferred,
     callbacks) = replies[len(lists) : len(lists) + 9]  # fmt: skip
    live, counters, tenant_live, tenant_waiting, *hists = replies[len(lists) + 9 :]
    return Snapshot(
        taken_at=now,
        queue_lengths={key: int(value) for key, value in lengths.items()},
        unacked=int(unacked),
        oldest_unacked_at=float(oldest[0][1]) if oldest else None,
        live_jobs=_live_jobs(live),
        past_deadline=int(past_deadline),
        earliest_deadline=float(earliest[0][1]) if earliest else None,
        inflight=int(inflight),
        parked=int(parked),
        callbacks_pending=int(callbacks),
        deferred_polls=int(deferred),
        earliest_deferred_poll=float(first_deferred[0][1]) if first_deferred else None,
        counters={parse_counter_field(_text(name)): int(value) for name, value in counters.items()},
        histograms={
            name: Histogram.parse({_text(k): _text(v) for k, v in raw.items()})
            for name, raw in zip(HISTOGRAMS, hists, strict=True)
        },
        tenant_live=_live_jobs(tenant_live),
        tenant_waiting={_text(name): int(value) for name, value in tenant_waiting.items()},
    )


def _live_jobs(raw: dict[bytes | str, bytes | str]) -> dict[tuple[str, str], int]:
    """``LIVE_KEY``'s ``<status>|<model>`` fields as (status, model) -> count."""
    counts: dict[tuple[str, str], int] = {}
    for name, value in raw.items():
        status, _, model = _text(name).partition("|")
        counts[(status, model or "unknown")] = int(value)
    return counts


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
