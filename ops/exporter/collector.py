"""The Prometheus collector: reads Redis at every scrape, keeps no state of its own.

Reading at scrape time (rather than keeping in-process counters) means any
number of exporters, or a restarted one, report the same numbers: Redis is the
only source of truth, written by the workers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ops.exporter.catalogue import (
    COUNTER_LABELS,
    COUNTERS,
    FAILURE_CODES,
    GAUGES,
    HISTOGRAMS,
    MODELS,
    MONEY_COUNTERS,
    OTHER_CODE,
    PREFIX,
    UNLABELLED_COUNTERS,
)
from ops.exporter.snapshot import Labels, Snapshot, read_snapshot
from worker.budgets import ScopeBudget, budgets_from
from worker.constants import DEFAULT_TENANT, WORKER_SILENT_AFTER
from worker.money import MICROS_PER_USD
from worker.settings import Settings

log = logging.getLogger(__name__)

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
#: A job in these statuses holds a slot of the in-flight cap (or is taking one).
IN_FLIGHT_STATUSES = frozenset({"submitting", "submitted", "processing"})


def _gauge(name: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, GAUGES[name], labels=labels)


class WavequeueCollector(Collector):
    """Turns one ``Snapshot`` per scrape into metric families."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        #: Timings the alerts compare with and the budget caps in the settings (the
        #: workers' own, from the same environment; run-time caps are read in Redis).
        self.settings = settings
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            snapshot = read_snapshot(self.client, self.clock())
        except redis.RedisError as exc:
            # Say what failed, not where: a URL could carry a password.
            log.warning("cannot read Redis: %s", type(exc).__name__)
            snapshot = None
        up = _gauge("redis_up")
        up.add_metric([], 1.0 if snapshot else 0.0)
        yield up
        duration = _gauge("exporter_scrape_duration_seconds")
        duration.add_metric([], time.perf_counter() - started)
        yield duration
        yield from self._timings()
        if snapshot is not None:
            yield from self._workers(snapshot)
            yield from self._broker(snapshot)
            yield from self._jobs(snapshot)
            yield from self._counters(snapshot)
            yield from self._histograms(snapshot)
            yield from self._cost(snapshot)

    def _timings(self) -> Iterator[Metric]:
        for name, value in (
            ("visibility_timeout_seconds", self.settings.visibility_timeout),
            ("unacked_expected_max_age_seconds", self.settings.longest_hold),
            ("sweeper_interval_seconds", self.settings.sweeper_interval),
        ):
            gauge = _gauge(name)
            gauge.add_metric([], value)
            yield gauge

    def _workers(self, snap: Snapshot) -> Iterator[Metric]:
        alive, silent = snap.workers_silent_for(WORKER_SILENT_AFTER)
        for name, value in (("workers_alive", alive), ("workers_silent", silent)):
            gauge = _gauge(name)
            gauge.add_metric([], value)
            yield gauge

    def _broker(self, snap: Snapshot) -> Iterator[Metric]:
        queues = _gauge("queue_messages", ["queue", "priority"])
        for (queue, step), length in sorted(snap.queue_lengths.items()):
            queues.add_metric([queue, str(step)], length)
        yield queues
        unacked = _gauge("unacked_messages")
        unacked.add_metric([], snap.unacked)
        yield unacked
        age = _gauge("unacked_oldest_age_seconds")
        oldest = snap.oldest_unacked_at
        age.add_metric([], max(0.0, snap.taken_at - oldest) if oldest is not None else 0.0)
        yield age

    def _jobs(self, snap: Snapshot) -> Iterator[Metric]:
        live = _gauge("jobs_live", ["status", "model"])
        for (status, model), count in sorted(snap.live_jobs.items()):
            live.add_metric([status, model], count)
        yield live
        overdue = _gauge("jobs_past_deadline")
        overdue.add_metric([], snap.past_deadline)
        yield overdue
        worst = _gauge("jobs_past_deadline_max_seconds")
        earliest = snap.earliest_deadline
        worst.add_metric([], max(0.0, snap.taken_at - earliest) if earliest is not None else 0.0)
        yield worst
        inflight = _gauge("inflight_predictions")
        inflight.add_metric([], snap.inflight)
        yield inflight
        parked = _gauge("jobs_parked")
        parked.add_metric([], snap.parked)
        yield parked
        callbacks = _gauge("callbacks_pending")
        callbacks.add_metric([], snap.callbacks_pending)
        yield callbacks
        deferred = _gauge("polls_deferred")
        deferred.add_metric([], snap.deferred_polls)
        yield deferred
        overdue = _gauge("polls_deferred_max_overdue_seconds")
        first = snap.earliest_deferred_poll
        overdue.add_metric([], max(0.0, snap.taken_at - first) if first is not None else 0.0)
        yield overdue
        oldest = _gauge("jobs_oldest_queued_age_seconds")
        queued_at = snap.index.oldest_queued_at
        oldest.add_metric([], max(0.0, snap.taken_at - queued_at) if queued_at else 0.0)
        yield oldest
        ended = _gauge("jobs_ended_last_hour", ["status"])
        for status, count in sorted(snap.index.ended.items()):
            ended.add_metric([status], count)
        yield ended
        persisting = _gauge("jobs_persisting")
        persisting.add_metric(
            [], sum(n for (status, _), n in snap.live_jobs.items() if status == "persisting")
        )
        yield persisting
        yield from self._tenants(snap)

    def _tenants(self, snap: Snapshot) -> Iterator[Metric]:
        """Per tenant: live jobs by status, jobs in the fair line, jobs in flight. Their
        completions are the counter ``tenant_jobs_ended``.
        HOOK(budgets): per-tenant spend (issue #13 section 1) belongs beside these: the
        budgets branch's spend counters, by tenant, exported here as they land."""
        live = _gauge("tenant_jobs_live", ["tenant", "status"])
        in_flight: dict[str, int] = {}
        for (status, tenant), count in sorted(snap.tenant_live.items()):
            live.add_metric([tenant, status], count)
            if status in IN_FLIGHT_STATUSES:
                in_flight[tenant] = in_flight.get(tenant, 0) + count
        yield live
        flying = _gauge("tenant_in_flight", ["tenant"])
        for tenant, count in sorted(in_flight.items()):
            flying.add_metric([tenant], count)
        yield flying
        waiting = _gauge("tenant_waiting", ["tenant"])
        tenants = {tenant for _, tenant in snap.tenant_live} | set(snap.tenant_waiting)
        for tenant in sorted(tenants):
            waiting.add_metric([tenant], snap.tenant_waiting.get(tenant, 0))
        yield waiting

    def _counters(self, snap: Snapshot) -> Iterator[Metric]:
        by_name: dict[str, dict[Labels, int]] = {name: {} for name in COUNTERS}
        # Tenants are known from their first enqueued job (its live count), before any of
        # their jobs is counted: their series start at 0 too.
        tenants = (
            {DEFAULT_TENANT} | {tenant for _, tenant in snap.tenant_live} | set(snap.tenant_waiting)
        )
        for name in COUNTERS:
            # Known label sets from 0: rate() counts a series' first step only if
            # Prometheus saw it before, at 0.
            by_name[name].update(dict.fromkeys(_known_label_sets(name, tenants), 0))
        money = {stored: exported for exported, (stored, _) in MONEY_COUNTERS.items()}
        money_from_zero = [
            (("model", model), ("tenant", tenant)) for model in MODELS for tenant in sorted(tenants)
        ]
        in_money: dict[str, dict[Labels, int]] = {
            exported: dict.fromkeys(money_from_zero, 0) for exported in MONEY_COUNTERS
        }
        for (name, labels), value in snap.counters.items():
            if name in money:
                totals = in_money[money[name]]
                totals[labels] = totals.get(labels, 0) + value
                continue
            samples = by_name.setdefault(name, {})
            key = _fold(labels)
            samples[key] = samples.get(key, 0) + value
        for exported, micro_samples in in_money.items():
            # Kept in whole micro-dollars (exact sums), exported in US dollars.
            family = CounterMetricFamily(
                PREFIX + exported, MONEY_COUNTERS[exported][1], labels=["model", "tenant"]
            )
            for labels, micros in sorted(micro_samples.items()):
                values = dict(labels)
                family.add_metric(
                    [values.get("model", ""), values.get("tenant", "")], micros / MICROS_PER_USD
                )
            yield family
        for name, samples in by_name.items():
            # One family needs one label set: take the union, "" where a field lacks one.
            label_names = sorted({key for labels in samples for key, _ in labels})
            family = CounterMetricFamily(
                PREFIX + _INVALID.sub("_", name),
                COUNTERS.get(name, f"wavequeue worker counter {name}"),
                labels=label_names,
            )
            for labels, value in sorted(samples.items()):
                values = dict(labels)
                family.add_metric([values.get(key, "") for key in label_names], value)
            yield family

    def _histograms(self, snap: Snapshot) -> Iterator[Metric]:
        for name, (help_text, bounds) in HISTOGRAMS.items():
            histogram = snap.histograms[name]
            buckets: list[Any] = [
                (_bound(bound), count) for bound, count in histogram.cumulative(bounds)
            ]
            family = HistogramMetricFamily(PREFIX + name, help_text, labels=[])
            family.add_metric([], buckets, histogram.sum)
            yield family

    def _cost(self, snap: Snapshot) -> Iterator[Metric]:
        account, tenants = budgets_from(
            self.settings, snap.runtime_caps, snap.spend_today, snap.reserved
        )
        scopes: list[tuple[list[str], ScopeBudget]] = [(["account", ""], account)]
        scopes += [(["tenant", name], scope) for name, scope in tenants.items()]
        used = _gauge("budget_used_usd", ["scope", "tenant"])
        cap = _gauge("budget_cap_usd", ["scope", "tenant"])
        remaining = _gauge("budget_remaining_usd", ["scope", "tenant"])
        for labels, scope in scopes:
            used.add_metric(labels, scope.usage.counted / MICROS_PER_USD)
            if scope.cap.micros is not None:
                cap.add_metric(labels, scope.cap.micros / MICROS_PER_USD)
                remaining.add_metric(labels, (scope.remaining or 0) / MICROS_PER_USD)
        yield used
        yield cap
        yield remaining
        reserved = _gauge("spend_reserved_usd")
        reserved.add_metric([], account.usage.reserved / MICROS_PER_USD)
        yield reserved
        held = _gauge("jobs_held_budget")
        held.add_metric([], snap.held)
        yield held
        micros, checked_at, low = snap.balance
        balance = _gauge("account_balance_usd")
        age = _gauge("account_balance_read_age_seconds")
        if micros is not None and checked_at is not None:
            balance.add_metric([], int(micros) / MICROS_PER_USD)
            age.add_metric([], max(0.0, snap.taken_at - float(checked_at)))
        yield balance
        yield age
        paused = _gauge("account_balance_low")
        paused.add_metric([], 1.0 if low == "1" else 0.0)
        yield paused


def _known_label_sets(name: str, tenants: Iterable[str] = ()) -> list[Labels]:
    """Every combination of known label values of counter ``name`` (``()`` if unlabelled;
    none if a label takes any value); a ``tenant`` label takes the ``tenants`` known."""
    if name in UNLABELLED_COUNTERS:
        return [()]
    labels = dict(COUNTER_LABELS.get(name) or {})
    if "tenant" in labels and labels["tenant"] is None:
        labels["tenant"] = tuple(sorted(tenants))
    if not labels or any(values is None for values in labels.values()):
        return []
    sets: list[Labels] = [()]
    for label in sorted(labels):
        sets = [(*found, (label, value)) for found in sets for value in labels[label] or ()]
    return sets


_KNOWN_CODES = frozenset(FAILURE_CODES)


def _fold(labels: Labels) -> Labels:
    """A code outside ``FAILURE_CODES`` becomes ``other`` (bounded label values)."""
    return tuple(
        (key, OTHER_CODE if key == "code" and value not in _KNOWN_CODES else value)
        for key, value in labels
    )


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
