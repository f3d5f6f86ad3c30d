"""What each Grafana panel should show after a workload, from sources the exporter and
Flower do not read: the job records, what the emulator saw on the wire, the workers' own
logs of their runs, Redis read directly, the worker processes the test runs.

``TRUTH`` has one entry per panel query (title, refId); a panel added without one fails
``test_alerts_live``. Every figure is compared within 5%: a rate is the workload's count
divided by the query's window (the whole workload falls inside it), a ratio or a mean is
computed from the records, a quantile from the records' (or runs') values put in the
same buckets and interpolated as ``histogram_quantile`` does (the dashboard cannot be
finer than its buckets; what is checked is that no observation is lost or misplaced).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS

from ops.exporter.catalogue import FAILURE_CODES, OTHER_CODE
from ops.exporter.snapshot import UNACKED_INDEX_KEY, UNACKED_KEY, priority_list
from worker.constants import (
    BALANCE_KEY,
    DEADLINES_KEY,
    IN_FLIGHT_KEY,
    LATENCY_BUCKETS,
    QUEUES,
)
from worker.models import TERMINAL_STATUSES, JobRecord, JobStatus

Labels = tuple[tuple[str, str], ...]
Figures = dict[Labels, float]

TOLERANCE = 0.05

#: Celery's per-run log lines (``--loglevel DEBUG`` keeps them; see worker/run_logs.py).
_RUN = r"Task wavequeue\.run_job\[[^\]]+\]"
_SUCCEEDED = re.compile(_RUN + r" succeeded in ([0-9.e-]+)s")
_FAILED = re.compile(_RUN + r" raised expected: JobFailedError")


@dataclass
class Runs:
    """One worker's runs since an offset in its log."""

    succeeded: list[float] = field(default_factory=list)  # run times (s)
    failed: int = 0

    @classmethod
    def from_log(cls, path: Path, offset: int) -> Runs:
        text = path.read_bytes()[offset:].decode(errors="replace")
        return cls(
            succeeded=[float(m.group(1)) for m in _SUCCEEDED.finditer(text)],
            failed=len(_FAILED.findall(text)),
        )


@dataclass
class Facts:
    """Everything the truth is computed from."""

    records: Sequence[JobRecord]
    #: Every job of the UTC day (the workload's and those run before it): what the daily
    #: budget figures count.
    day_records: Sequence[JobRecord]
    #: The emulator's stats counters during the workload (after minus before).
    submissions_created: int
    polls: int
    http_429: int
    faults_served: Mapping[str, int]
    #: Worker node name -> its runs during the workload.
    runs: Mapping[str, Runs]
    workers_alive: int
    workers_silent: int
    redis: redis.Redis
    #: Flower's runtime histogram bounds (read from its /metrics).
    flower_runtime_buckets: Sequence[float]

    def ended(self) -> list[JobRecord]:
        return [r for r in self.records if r.status in TERMINAL_STATUSES]

    def with_status(self, status: JobStatus) -> list[JobRecord]:
        return [r for r in self.records if r.status is status]


def code_label(record: JobRecord) -> str:
    code = str(record.error.code) if record.error else "unknown"
    return code if code in FAILURE_CODES else OTHER_CODE


def per_second(counts: Mapping[Labels, int], window: float) -> Figures:
    return {labels: value / window for labels, value in counts.items()}


def one(value: float) -> Figures:
    return {(): value}


def by(label: str, values: Iterable[str]) -> Counter[Labels]:
    return Counter(((label, value),) for value in values)


def histogram_quantile(q: float, values: Sequence[float], bounds: Sequence[float]) -> float:
    """Prometheus's ``histogram_quantile`` over ``values`` put in buckets ``bounds``."""
    if not values:
        return math.nan
    edges = sorted(bounds)
    cumulative = [sum(1 for v in values if v <= edge) for edge in edges] + [len(values)]
    rank = q * len(values)
    index = next(i for i, count in enumerate(cumulative) if count >= rank)
    if index == len(edges):  # the +Inf bucket: its lower bound
        return edges[-1]
    start = edges[index - 1] if index else 0.0
    below = cumulative[index - 1] if index else 0
    inside = cumulative[index] - below
    return start + (edges[index] - start) * (rank - below) / inside


def latencies(facts: Facts, kind: str) -> list[float]:
    values = []
    for record in facts.with_status(JobStatus.COMPLETED):
        assert record.completed_at is not None and record.submitted_at is not None
        values.append(
            {
                "end_to_end": record.completed_at - record.created_at,
                "queued_to_submitted": record.submitted_at - record.created_at,
                "submitted_to_completed": record.completed_at - record.submitted_at,
            }[kind]
        )
    return values


def queue_lengths(client: redis.Redis) -> Counter[Labels]:
    found: Counter[Labels] = Counter()
    for queue in QUEUES:
        for step in PRIORITY_STEPS:
            found[(("queue", queue),)] += int(client.llen(priority_list(queue, step)))
    return found


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def oldest_unacked_age(client: redis.Redis) -> float:
    oldest = client.zrange(UNACKED_INDEX_KEY, 0, 0, withscores=True)
    return max(0.0, redis_now(client) - float(oldest[0][1])) if oldest else 0.0


def live_by_status(facts: Facts) -> Figures:
    live = Counter(r.status.value for r in facts.records if r.status not in TERMINAL_STATUSES)
    return {(("status", status),): float(n) for status, n in live.items()}


def failures_by_code(facts: Facts) -> Figures:
    failed = by("code", (code_label(r) for r in facts.with_status(JobStatus.FAILED)))
    return per_second(failed, 300)


def failure_ratio(facts: Facts) -> Figures:
    ended = [r for r in facts.ended() if r.status is not JobStatus.CANCELLED]
    bad = [r for r in ended if r.status in (JobStatus.FAILED, JobStatus.TIMED_OUT)]
    return one(len(bad) / len(ended))


def mean_polls(facts: Facts) -> Figures:
    completed = facts.with_status(JobStatus.COMPLETED)
    return one(sum(r.polls for r in completed) / len(completed))


def remote_failure(record: JobRecord) -> bool:
    """Failed because WaveSpeed failed the prediction (a task code): a prediction's end."""
    code = str(record.error.code) if record.error else ""
    return record.status is JobStatus.FAILED and code.isdigit() and int(code) >= 1000


def polls_by_path(facts: Facts) -> Figures:
    """Jobs a prediction's end finished, all learnt by a poll (no webhooks here)."""
    ended = [r for r in facts.records if r.status is JobStatus.COMPLETED or remote_failure(r)]
    return {
        (("path", "poll"),): sum(r.polls for r in ended) / len(ended),
        (("path", "webhook"),): math.nan,  # 0/0: no job ended by a webhook
    }


def quantile_of(kind: str, q: float) -> Callable[[Facts], Figures]:
    return lambda facts: one(histogram_quantile(q, latencies(facts, kind), LATENCY_BUCKETS))


def runs_per_worker(facts: Facts) -> Figures:
    counts: dict[Labels, int] = {
        (("worker", name),): len(runs.succeeded) + runs.failed for name, runs in facts.runs.items()
    }
    return per_second(counts, 300)


def failed_runs_per_worker(facts: Facts) -> Figures:
    counts: dict[Labels, int] = {
        (("worker", name),): runs.failed for name, runs in facts.runs.items()
    }
    return per_second(counts, 300)


def run_time_p95(facts: Facts) -> Figures:
    times = [t for runs in facts.runs.values() for t in runs.succeeded]
    return one(histogram_quantile(0.95, times, facts.flower_runtime_buckets))


MICROS = 1_000_000
#: Statuses of a job holding a submission slot (the exporter's in-flight count).
HOLDING_A_SLOT = frozenset({JobStatus.SUBMITTING, JobStatus.SUBMITTED, JobStatus.PROCESSING})


def _sum_by_tenant(
    facts: Facts,
    keep: Callable[[JobRecord], bool],
    value: Callable[[JobRecord], float],
    *,
    whole_day: bool = False,
) -> dict[str, float]:
    totals: dict[str, float] = {}
    for r in facts.day_records if whole_day else facts.records:
        if keep(r):
            totals[r.tenant] = totals.get(r.tenant, 0.0) + value(r)
    return totals


def billed(facts: Facts, *, whole_day: bool = False) -> dict[str, float]:
    """US dollars billed (completed jobs' final cost), by tenant."""
    return _sum_by_tenant(
        facts,
        lambda r: bool(r.cost_micros),
        lambda r: (r.cost_micros or 0) / MICROS,
        whole_day=whole_day,
    )


def unconfirmed(facts: Facts, *, whole_day: bool = False) -> dict[str, float]:
    """Estimates of jobs that ended while their prediction might still be billed."""
    return _sum_by_tenant(
        facts,
        lambda r: r.cost_unconfirmed,
        lambda r: (r.estimated_cost_micros or 0) / MICROS,
        whole_day=whole_day,
    )


def reserved(facts: Facts) -> dict[str, float]:
    """Estimates of live jobs claimed for submission (their reservation), by tenant."""
    return _sum_by_tenant(
        facts,
        lambda r: r.status not in TERMINAL_STATUSES and bool(r.estimated_cost_micros),
        lambda r: (r.estimated_cost_micros or 0) / MICROS,
    )


def budget_used(facts: Facts) -> dict[str, float]:
    """What the daily caps count, by tenant: billed, possibly billed, reserved."""
    used: dict[str, float] = {}
    for part in (
        billed(facts, whole_day=True),
        unconfirmed(facts, whole_day=True),
        reserved(facts),
    ):
        for tenant, value in part.items():
            used[tenant] = used.get(tenant, 0.0) + value
    return used


def by_tenant(values: Mapping[str, float]) -> Figures:
    return {(("tenant", tenant),): value for tenant, value in values.items() if value}


def hourly(values: Mapping[str, float], window: float = 300) -> dict[str, float]:
    """A total over the rate window as $/h (``rate(...[5m]) * 3600``)."""
    return {tenant: value / window * 3600 for tenant, value in values.items()}


def balance(facts: Facts) -> Figures:
    micros = facts.redis.hget(BALANCE_KEY, "micros")
    return one(int(micros) / MICROS) if micros is not None else {}


#: (panel title, refId) -> the truth of that query after the workload.
TRUTH: dict[tuple[str, str], Callable[[Facts], Figures]] = {
    # Queues: read from Redis itself (and the records), now.
    ("Waiting messages", "A"): lambda f: one(sum(queue_lengths(f.redis).values())),
    ("Held countdowns (unacked)", "A"): lambda f: one(int(f.redis.hlen(UNACKED_KEY))),
    ("Live jobs", "A"): lambda f: one(sum(r.status not in TERMINAL_STATUSES for r in f.records)),
    ("In-flight predictions", "A"): lambda f: one(int(f.redis.zcard(IN_FLIGHT_KEY))),
    ("Jobs past deadline", "A"): lambda f: one(
        int(f.redis.zcount(DEADLINES_KEY, "-inf", f"({redis_now(f.redis)!r}"))
    ),
    ("Oldest unacked (s)", "A"): lambda f: one(oldest_unacked_age(f.redis)),
    ("Queue length by queue", "A"): lambda f: dict(queue_lengths(f.redis)),
    ("Queue length by queue", "B"): lambda f: one(int(f.redis.hlen(UNACKED_KEY))),
    ("Live jobs by status", "A"): live_by_status,
    # Throughput: the records and the emulator's own counts.
    ("Jobs completed /s by model", "A"): lambda f: per_second(
        by("model", (r.model for r in f.with_status(JobStatus.COMPLETED))), 300
    ),
    ("Submissions and polls /s", "A"): lambda f: one(
        (f.submissions_created - f.faults_served.get("submit_drop_after_create", 0)) / 300
    ),
    ("Submissions and polls /s", "B"): lambda f: one(f.polls / 300),
    ("Polls per completed job (mean)", "A"): mean_polls,
    ("Polls per job by completion path (webhook, poll)", "A"): polls_by_path,
    # No job asks for webhooks in this workload.
    ("Webhooks /s", "A"): lambda f: one(0.0),
    ("Webhooks /s", "B"): lambda f: one(0.0),
    ("Webhooks /s", "C"): lambda f: one(0.0),
    ("Webhooks /s", "D"): lambda f: {},
    # Latency: the records' timestamps.
    ("End to end (p50, p95)", "A"): quantile_of("end_to_end", 0.5),
    ("End to end (p50, p95)", "B"): quantile_of("end_to_end", 0.95),
    ("Queued to submitted (p50, p95)", "A"): quantile_of("queued_to_submitted", 0.5),
    ("Queued to submitted (p50, p95)", "B"): quantile_of("queued_to_submitted", 0.95),
    ("Submitted to completed (p50, p95)", "A"): quantile_of("submitted_to_completed", 0.5),
    ("Submitted to completed (p50, p95)", "B"): quantile_of("submitted_to_completed", 0.95),
    # Failures: the records, and the faults the emulator served.
    ("Failures /s by code", "A"): failures_by_code,
    ("Failures /s by code", "B"): lambda f: one(len(f.with_status(JobStatus.TIMED_OUT)) / 300),
    ("Failure ratio", "A"): failure_ratio,
    ("Retries, 429s and unknown submits /s", "A"): lambda f: one(
        sum(f.faults_served.get(kind, 0) for kind in ("submit_500", "submit_502", "submit_503"))
        / 300
    ),
    ("Retries, 429s and unknown submits /s", "B"): lambda f: one(f.http_429 / 300),
    # No limit the limiter enforces is reachable, and a 429 without Retry-After: 0 pauses.
    ("Retries, 429s and unknown submits /s", "C"): lambda f: one(0.0),
    ("Retries, 429s and unknown submits /s", "D"): lambda f: one(
        sum(1 for r in f.with_status(JobStatus.FAILED) if code_label(r) == "submit_outcome_unknown")
        / 300
    ),
    # Workers: the processes the test runs, and their own logs of each run.
    ("Workers alive", "A"): lambda f: one(f.workers_alive),
    ("Workers silent", "A"): lambda f: one(f.workers_silent),
    ("Tasks executing by worker", "A"): lambda f: {(("worker", name),): 0.0 for name in f.runs},
    ("Task runs /s by worker", "A"): runs_per_worker,
    ("Task runs /s by worker", "B"): failed_runs_per_worker,
    ("Task run time p95", "A"): run_time_p95,
    # Cost: the records' costs (no cap is set, no job keeps its outputs, one tenant).
    ("Account budget used today", "A"): lambda f: one(sum(budget_used(f).values())),
    ("Account budget left today", "A"): lambda f: {},  # no cap: no figure
    ("Reserved by jobs in flight", "A"): lambda f: one(sum(reserved(f).values())),
    ("Jobs held for a budget", "A"): lambda f: one(0.0),
    ("Account balance", "A"): balance,
    ("Paused: low balance", "A"): lambda f: one(0.0),
    ("Spend $/h by tenant", "A"): lambda f: by_tenant(hourly(billed(f))),
    ("Spend $/h by tenant", "B"): lambda f: by_tenant(hourly(unconfirmed(f))),
    ("Daily budget used and cap by tenant", "A"): lambda f: by_tenant(budget_used(f)),
    ("Daily budget used and cap by tenant", "B"): lambda f: {},  # no tenant cap
    ("Images billed /s by model", "A"): lambda f: per_second(
        by("model", (r.model for r in f.records if r.cost_micros for _ in r.outputs)), 300
    ),
    # Tenants.
    ("Waiting in the fair line by tenant", "A"): lambda f: {},
    ("In flight by tenant", "A"): lambda f: by_tenant(
        _sum_by_tenant(f, lambda r: r.status in HOLDING_A_SLOT, lambda r: 1.0)
    ),
    ("Submission slots granted /s by tenant", "A"): lambda f: by_tenant(
        _sum_by_tenant(f, lambda r: r.attempts > 0, lambda r: r.attempts / 300)
    ),
    ("Completions /s by tenant", "A"): lambda f: by_tenant(
        _sum_by_tenant(f, lambda r: r.status is JobStatus.COMPLETED, lambda r: 1 / 300)
    ),
    ("Completions /s by tenant", "B"): lambda f: by_tenant(
        _sum_by_tenant(
            f,
            lambda r: r.status in TERMINAL_STATUSES and r.status is not JobStatus.COMPLETED,
            lambda r: 1 / 300,
        )
    ),
    ("Spend by tenant, last hour ($/h)", "A"): lambda f: by_tenant(billed(f)),
    ("Keeping outputs", "A"): lambda f: one(0.0),
    ("Keeping outputs", "B"): lambda f: one(0.0),
    ("Keeping outputs", "C"): lambda f: one(0.0),
    ("Keeping outputs", "D"): lambda f: one(0.0),
}


def close_enough(figure: float, truth: float) -> bool:
    if math.isnan(truth) or math.isnan(figure):
        return math.isnan(truth) and math.isnan(figure)
    if truth == 0:
        return figure == 0
    return abs(figure - truth) <= TOLERANCE * abs(truth)


def mismatches(figures: Figures, truth: Figures) -> list[str]:
    """Every series where the panel and the truth differ by more than 5% (absent = 0)."""
    problems = []
    for labels in sorted(set(figures) | set(truth)):
        figure, expected = figures.get(labels, 0.0), truth.get(labels, 0.0)
        if not close_enough(figure, expected):
            problems.append(f"{dict(labels)}: panel {figure:.6g}, truth {expected:.6g}")
    return problems


def panel_queries(board: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(title, refId, expr) of every query of every panel."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
