"""One read of everything the exporter reports, in two pipelined round trips.

Kept apart from the Prometheus types so the reading can be tested (and reasoned
about) on its own: what Redis holds, not how it is exposed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from ops.exporter.catalogue import HISTOGRAMS
from worker.constants import (
    COUNTERS_KEY,
    DEADLINES_KEY,
    HISTOGRAM_KEY,
    IN_FLIGHT_KEY,
    JOB_KEY,
    QUEUES,
)
from worker.store import parse_counter_field

#: kombu's names for the hash and zset of delivered, not yet acked messages.
UNACKED_KEY = Channel.unacked_key
UNACKED_INDEX_KEY = Channel.unacked_index_key
#: Live job records read per pipeline, so a huge backlog never builds one giant reply.
_JOB_BATCH = 1000

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
    #: (status, model) -> live jobs.
    live_jobs: Counter[tuple[str, str]]
    #: Deadlines (epoch seconds) of live jobs already past them.
    overdue_deadlines: list[float]
    inflight: int
    counters: dict[tuple[str, Labels], int]
    histograms: dict[str, Histogram] = field(default_factory=dict)


def read_snapshot(client: redis.Redis, now: float, queues: Sequence[str] = QUEUES) -> Snapshot:
    """Everything in one pipeline, then the live job records in batches."""
    lists = [(queue, step) for queue in queues for step in PRIORITY_STEPS]
    pipe = client.pipeline(transaction=False)
    for queue, step in lists:
        pipe.llen(priority_list(queue, step))
    pipe.hlen(UNACKED_KEY)
    pipe.zrange(UNACKED_INDEX_KEY, 0, 0, withscores=True)
    pipe.zrange(DEADLINES_KEY, 0, -1, withscores=True)
    pipe.zcount(IN_FLIGHT_KEY, now, "+inf")  # expired slots belong to crashed workers
    pipe.hgetall(COUNTERS_KEY)
    for name in HISTOGRAMS:
        pipe.hgetall(HISTOGRAM_KEY.format(name=name))
    replies = pipe.execute()

    lengths = dict(zip(lists, replies[: len(lists)], strict=True))
    unacked, oldest, deadlines, inflight, counters, *hists = replies[len(lists) :]
    return Snapshot(
        taken_at=now,
        queue_lengths={key: int(value) for key, value in lengths.items()},
        unacked=int(unacked),
        oldest_unacked_at=float(oldest[0][1]) if oldest else None,
        live_jobs=_live_jobs(client, [_text(job_id) for job_id, _ in deadlines]),
        overdue_deadlines=[float(score) for _, score in deadlines if float(score) < now],
        inflight=int(inflight),
        counters={parse_counter_field(_text(name)): int(value) for name, value in counters.items()},
        histograms={
            name: Histogram.parse({_text(k): _text(v) for k, v in raw.items()})
            for name, raw in zip(HISTOGRAMS, hists, strict=True)
        },
    )


def _live_jobs(client: redis.Redis, job_ids: list[str]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for start in range(0, len(job_ids), _JOB_BATCH):
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids[start : start + _JOB_BATCH]:
            pipe.hmget(JOB_KEY.format(job_id=job_id), ["status", "model"])
        for status, model in pipe.execute():
            # A deadline entry without its record: someone deleted the hash by hand.
            counts[(_text(status) or "missing", _text(model) or "unknown")] += 1
    return counts


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
