"""One read of everything the exporter reports, in two pipelined round trips.

Kept apart from the Prometheus types so the reading can be tested (and reasoned
about) on its own: what Redis holds, not how it is exposed.

A scrape costs the same number of Redis commands however many jobs are in flight:
live jobs are the counts the store's scripts keep in ``LIVE_KEY`` (one HGETALL, one
field per status and model), and the deadline figures are a ZCOUNT and the first
entry of ``DEADLINES_KEY``. The oldest waiting job and the jobs ended in the last hour
come from the list index (``worker.job_listing.index_figures``): one command per
(status, model, tenant) set of queued or ended jobs. No job record is read. Worker
heartbeats are one entry per worker (``WORKERS_KEY``), judged against Redis's own
``TIME`` read in the same round trip, the clock the workers beat with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from ops.exporter.catalogue import HISTOGRAMS
from worker.constants import (
    BALANCE_KEY,
    BUDGETS_KEY,
    CALLBACKS_KEY,
    COUNTERS_KEY,
    DEADLINES_KEY,
    DUE_POLLS_KEY,
    HELD_KEY,
    HISTOGRAM_KEY,
    IN_FLIGHT_KEY,
    LIVE_KEY,
    RESERVED_KEY,
    SPEND_KEY,
    TENANT_LIVE_KEY,
    WORKER_QUEUES,
    WORKERS_KEY,
)
from worker.fairness import DEPTH_KEY, LINE_KEY
from worker.job_listing import IndexFigures, index_figures
from worker.store import parse_counter_field, utc_day

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
    #: The list index's figures: oldest waiting job, jobs ended in the last hour.
    index: IndexFigures = field(default_factory=lambda: IndexFigures(None, {}))
    #: (status, tenant) -> live jobs (``TENANT_LIVE_KEY``).
    tenant_live: dict[tuple[str, str], int] = field(default_factory=dict)
    #: tenant -> jobs of that tenant in the fair line (``fairness.DEPTH_KEY``).
    tenant_waiting: dict[str, int] = field(default_factory=dict)
    #: Today's (UTC) spend hash, the reservations, the run-time caps (raw fields).
    spend_today: dict[str, str] = field(default_factory=dict)
    reserved: dict[str, str] = field(default_factory=dict)
    runtime_caps: dict[str, str] = field(default_factory=dict)
    #: Jobs held for a daily budget.
    held: int = 0
    #: The sweeper's last balance reading: micro-dollars, when (epoch s), "1" while low.
    balance: tuple[str | None, str | None, str | None] = (None, None, None)
    #: Redis ``TIME`` when the snapshot was read (the workers' heartbeat clock).
    redis_time: float = 0.0
    #: Worker node name -> its last heartbeat (Redis time).
    worker_beats: dict[str, float] = field(default_factory=dict)

    def workers_silent_for(self, seconds: float) -> tuple[int, int]:
        """(alive, silent): workers whose last beat is at most / more than ``seconds`` old."""
        alive = sum(1 for beat in self.worker_beats.values() if self.redis_time - beat <= seconds)
        return alive, len(self.worker_beats) - alive


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
    pipe.time()
    pipe.zrange(WORKERS_KEY, 0, -1, withscores=True)
    pipe.hgetall(TENANT_LIVE_KEY)
    pipe.hgetall(DEPTH_KEY)
    for name in HISTOGRAMS:
        pipe.hgetall(HISTOGRAM_KEY.format(name=name))
    pipe.hgetall(SPEND_KEY.format(day=utc_day(now)))
    pipe.hgetall(RESERVED_KEY)
    pipe.hgetall(BUDGETS_KEY)
    pipe.zcard(HELD_KEY)
    pipe.hmget(BALANCE_KEY, ["micros", "checked_at", "low"])
    replies = pipe.execute()
    *replies, spend, reserved, caps, held, balance = replies

    lengths = dict(zip(lists, replies[: len(lists)], strict=True))
    (
        unacked, oldest, past_deadline, earliest, inflight, parked, deferred, first_deferred,
        callbacks, live, counters, (seconds, micros), beats, tenant_live, tenant_waiting, *hists,
    ) = replies[len(lists) :]  # fmt: skip
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
        index=index_figures(client, now),
        tenant_live=_live_jobs(tenant_live),
        tenant_waiting={_text(name): int(value) for name, value in tenant_waiting.items()},
        spend_today=_texts(spend),
        reserved=_texts(reserved),
        runtime_caps=_texts(caps),
        held=int(held),
        balance=(
            _text(balance[0]) if balance[0] is not None else None,
            _text(balance[1]) if balance[1] is not None else None,
            _text(balance[2]) if balance[2] is not None else None,
        ),
        redis_time=int(seconds) + int(micros) / 1e6,
        worker_beats={_text(name): float(score) for name, score in beats},
    )


def _texts(raw: dict[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


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
