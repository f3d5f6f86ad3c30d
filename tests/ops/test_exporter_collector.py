"""The collector's conversions and its cost, in process, on the session's real redis-server."""

from __future__ import annotations

import ast
import itertools
import math
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from emulator.config import TASK_CODE_MESSAGES
from ops.exporter.catalogue import (
    COUNTER_LABELS,
    COUNTERS,
    FAILURE_CODES,
    UNLABELLED_COUNTERS,
    exported_names,
)
from ops.exporter.collector import WavequeueCollector
from ops.exporter.snapshot import Histogram
from tests.support.records import put_in_status
from worker.constants import COUNTERS_KEY, HISTOGRAM_KEY, WORKER_SILENT_AFTER, WORKERS_KEY
from worker.heartbeat import beat, forget
from worker.models import ENDPOINTS, JobRecord, JobStatus
from worker.runner import DEADLINE_EXCEEDED, SUBMIT_OUTCOME_UNKNOWN
from worker.settings import Settings
from worker.store import JobStore, NewJob, counter_field

ROOT = Path(__file__).resolve().parents[2]


def scrape(redis_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry = CollectorRegistry()
    registry.register(WavequeueCollector(client, Settings(visibility_timeout=600)))
    text = generate_latest(registry).decode()
    client.close()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_counters_keep_their_labels_and_unknown_ones_are_exported(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=60)
    store.count("jobs_failed", model="flux-kontext-pro", code="1403")
    store.count("jobs_failed", model="flux-kontext-pro", code="1403")
    store.count("jobs_failed", model="flux-kontext-max", code="submit_outcome_unknown")
    store.count("remote_rate_limited")
    # A counter a later worker version might add, with a label set of its own.
    store.client.hincrby(COUNTERS_KEY, counter_field("webhook-misses", source="x"), 4)
    # A code outside the known list, and a model this version does not know.
    store.count("jobs_failed", model="flux-kontext-pro", code="1499")
    store.count("jobs_failed", model="flux-kontext-pro", code="HTTP 418")
    store.count("jobs_failed", model="flux-kontext-ultra", code="1403")
    found = scrape(redis_url)
    assert sorted(
        (labels["model"], labels["code"], value)
        for labels, value in found["wavequeue_jobs_failed_total"]
        if value
    ) == [
        ("flux-kontext-max", "submit_outcome_unknown", 1.0),
        ("flux-kontext-pro", "1403", 2.0),
        ("flux-kontext-pro", "other", 2.0),
        ("flux-kontext-ultra", "1403", 1.0),
    ]
    assert found["wavequeue_remote_rate_limited_total"] == [({}, 1.0)]
    assert found["wavequeue_webhook_misses_total"] == [({"source": "x"}, 4.0)]


def test_known_label_sets_are_exported_from_0_before_any_job(redis_url: str) -> None:
    """A series that first appears at 1 counts 0 in rate() and increase(): the first 401
    after a key rotation, the first failure of a model. Exported at 0 from the start,
    the first step is an increase Prometheus sees."""
    found = scrape(redis_url)
    zeros = {
        name: {tuple(sorted(labels.items())) for labels, value in samples if value == 0}
        for name, samples in found.items()
    }
    for model in ENDPOINTS:
        assert (("code", "401"), ("model", model)) in zeros["wavequeue_jobs_failed_total"]
        assert (("code", "other"), ("model", model)) in zeros["wavequeue_jobs_failed_total"]
        for outcome in ("completed", "failed", "timed_out", "cancelled"):
            assert (("model", model), ("outcome", outcome)) in zeros["wavequeue_jobs_ended_total"]
    for name, labels_of in COUNTER_LABELS.items():
        if all(values is not None for values in labels_of.values()):
            every = {
                tuple(sorted(combination))
                for combination in itertools.product(
                    *[[(label, v) for v in values or ()] for label, values in labels_of.items()]
                )
            }
            assert zeros[f"wavequeue_{name}_total"] == every, name
    for name in UNLABELLED_COUNTERS:
        assert zeros[f"wavequeue_{name}_total"] == {()}
    # Nothing but the known codes (and other) can appear: the label stays bounded.
    codes = {labels["code"] for labels, _ in found["wavequeue_jobs_failed_total"]}
    assert codes == {*FAILURE_CODES, "other"}


def test_every_counter_has_its_label_sets_declared() -> None:
    assert set(COUNTERS) == set(COUNTER_LABELS) | UNLABELLED_COUNTERS
    assert not set(COUNTER_LABELS) & UNLABELLED_COUNTERS


def test_failure_codes_list_every_code_the_worker_writes() -> None:
    """Every code the worker itself writes (``code="..."`` on an error, the code argument
    of ``_fail``/``end``, as a literal or a module constant) has its own series, so the
    worker's own codes never become other."""
    written: set[str] = {"unknown"}  # settle.end's fallback for an error without a code
    for path in (ROOT / "worker").rglob("*.py"):
        tree = ast.parse(path.read_text())
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name) and isinstance(node.value.value, str)
        }
        for node in ast.walk(tree):
            given: list[ast.expr] = []
            if isinstance(node, ast.keyword) and node.arg == "code":
                given = [node.value]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("_fail", "end"):
                given = node.args[2:3]
            for value in given:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    written.add(value.value)
                elif isinstance(value, ast.Name) and value.id in constants:
                    written.add(constants[value.id])
    # The scan finds literals, constants and _fail's argument.
    assert {"malformed", "tls", "missing_input", SUBMIT_OUTCOME_UNKNOWN} <= written
    written -= {DEADLINE_EXCEEDED}  # a timed-out job, counted in jobs_timed_out
    assert written <= set(FAILURE_CODES)
    assert {str(code) for code in TASK_CODE_MESSAGES} <= set(FAILURE_CODES)


def string_arguments(paths: list[Path], callee: str) -> set[str]:
    """String literals passed to calls of ``callee`` (a name or a method) in ``paths``."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name == callee:
                found |= {
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                }
    return found


def test_label_lists_name_every_value_the_workers_write() -> None:
    """Known label values are exported from 0; a value missing from a list would start
    at its first count. The webhook reasons are literals in the receiver."""
    webhooks = list((ROOT / "worker" / "webhooks").glob("*.py"))
    rejected = string_arguments(webhooks, "_rejected") | string_arguments(
        webhooks, "SignatureError"
    )
    ignored = string_arguments(webhooks, "_ignored")
    assert rejected and ignored
    assert rejected == set(COUNTER_LABELS["webhooks_rejected"]["reason"] or ())
    assert ignored == set(COUNTER_LABELS["webhooks_ignored"]["reason"] or ())


def test_timings_and_worker_heartbeats(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    beat(client, "alive@a", now - 1)
    beat(client, "alive@b", now - WORKER_SILENT_AFTER + 2)
    beat(client, "killed@c", now - WORKER_SILENT_AFTER - 5)
    beat(client, "stopped@d", now - 3)
    forget(client, "stopped@d")  # a warm stop: neither alive nor silent
    registry = CollectorRegistry()
    settings = Settings(visibility_timeout=600, task_time_limit=120, poll_max_interval=30)
    registry.register(WavequeueCollector(client, settings))
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if not sample.labels
    }
    assert found["wavequeue_workers_alive"] == 2
    assert found["wavequeue_workers_silent"] == 1
    assert found["wavequeue_visibility_timeout_seconds"] == 600
    assert found["wavequeue_unacked_expected_max_age_seconds"] == 60 + 120  # retry max 60 s
    assert found["wavequeue_sweeper_interval_seconds"] == 30
    # A beat an hour old is forgotten by the next beat of any worker.
    beat(client, "alive@a", now + 3601 + WORKER_SILENT_AFTER)
    assert client.zrange(WORKERS_KEY, 0, -1) == ["alive@a"]
    client.close()


def test_histograms_become_cumulative_with_every_bucket(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=60)
    for value in (0.5, 3.0, 3.0, 45.0, 5000.0):
        store.observe("end_to_end_seconds", value, (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0))
    found = scrape(redis_url)
    buckets = {
        labels["le"]: value for labels, value in found["wavequeue_end_to_end_seconds_bucket"]
    }
    assert buckets["1.0"] == 1
    assert buckets["2.5"] == 1
    assert buckets["5.0"] == 3
    assert buckets["30.0"] == 3
    assert buckets["60.0"] == 4
    assert buckets["1800.0"] == 4  # 5000 s is above every configured bound
    assert buckets["+Inf"] == 5
    assert found["wavequeue_end_to_end_seconds_count"] == [({}, 5.0)]
    assert found["wavequeue_end_to_end_seconds_sum"] == [({}, 5051.5)]


def test_a_scrape_between_bucket_and_count_stays_monotonic() -> None:
    # The worker bumped the bucket, not yet the count: +Inf must not drop below it.
    histogram = Histogram.parse({"le=1.0": "3", "le=inf": "1", "sum": "2", "count": "3"})
    assert histogram.cumulative([1.0, 2.0]) == [(1.0, 3), (2.0, 3), (math.inf, 4)]


def test_unlabelled_families_are_exported_with_no_data(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=60)
    for name in ("submissions", "polls", "jobs_completed", "jobs_timed_out"):
        store.count(name, model="m")
    store.client.delete(HISTOGRAM_KEY.format(name="polls_per_job"))
    found = scrape(redis_url)
    # jobs_live carries labels that only data gives it (status, model); counters are
    # exported from 0 for every known label set.
    missing = {name for name in exported_names() if name not in found}
    # A backend's HTTP status takes any value: its counter starts at its first count.
    # Tenant counters start at 0 for every tenant the store has seen (here only the
    # default tenant); per-tenant gauges need data; caps only once set; the balance once
    # the sweeper has read it.
    assert missing == {
        "wavequeue_jobs_live",
        "wavequeue_callback_attempts_failed_total",
        "wavequeue_tenant_jobs_live",
        "wavequeue_tenant_waiting",
        "wavequeue_tenant_in_flight",
        "wavequeue_budget_cap_usd",
        "wavequeue_budget_remaining_usd",
        "wavequeue_account_balance_usd",
        "wavequeue_account_balance_read_age_seconds",
    }


def _live_jobs(store: JobStore, count: int, *, deadline_in: float) -> list[str]:
    """``count`` queued jobs written in one round trip, as a batch enqueue does."""
    now = time.time()
    records = [
        JobRecord(
            id=uuid.uuid4().hex,
            model="flux-kontext-max/text-to-image",
            input={"prompt": f"lantern {i}"},
            status=JobStatus.QUEUED,
            created_at=now,
            deadline_at=now + deadline_in,
        )
        for i in range(count)
    ]
    return [job_id for job_id, _ in store.create_jobs([NewJob(r) for r in records])]


def _commands_of_one_scrape(redis_url: str) -> tuple[dict[str, int], dict[str, list[Any]]]:
    """Redis's own count of the commands one scrape ran (INFO commandstats), by command."""
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    admin.config_resetstat()
    found = scrape(redis_url)
    stats = admin.info("commandstats")
    admin.close()
    calls = {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    }
    return calls, found


def test_a_scrape_costs_the_same_commands_however_many_jobs_are_live(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=60)
    few = _live_jobs(store, 3, deadline_in=600)
    put_in_status(store, few[0], "processing")
    calls_with_few, found = _commands_of_one_scrape(redis_url)
    assert sum(value for _, value in found["wavequeue_jobs_live"]) == 3

    many = _live_jobs(store, 3000, deadline_in=600)
    late = _live_jobs(store, 2, deadline_in=-30)  # already past their deadline
    for job_id in many[:50]:
        put_in_status(store, job_id, "submitted")
    calls_with_many, found = _commands_of_one_scrape(redis_url)

    assert calls_with_many == calls_with_few
    # Beside the fixed reads, the list index's figures (oldest waiting, ended in the last
    # hour): one SMEMBERS and five commands per model and tenant that has had jobs (one).
    assert sum(calls_with_many.values()) < 40 + 1 + 5
    live = {(labels["status"], n) for labels, n in found["wavequeue_jobs_live"] if n}
    assert live == {("queued", 3 + 3000 + 2 - 1 - 50), ("processing", 1), ("submitted", 50)}
    assert found["wavequeue_jobs_past_deadline"] == [({}, 2.0)]
    assert found["wavequeue_jobs_past_deadline_max_seconds"][0][1] >= 30
    # Jobs that end leave the figures: a status with no job left is exported as 0.
    put_in_status(store, few[0], "completed")
    for job_id in late:
        put_in_status(store, job_id, "timed_out")
    _, found = _commands_of_one_scrape(redis_url)
    assert ({"status": "processing", "model": "flux-kontext-max/text-to-image"}, 0.0) in found[
        "wavequeue_jobs_live"
    ]
    assert found["wavequeue_jobs_past_deadline"] == [({}, 0.0)]
    assert found["wavequeue_jobs_past_deadline_max_seconds"] == [({}, 0.0)]


def test_spend_is_exported_in_dollars_and_budgets_per_scope(redis_url: str) -> None:
    """Money kept in micro-dollars comes out in US dollars; each capped scope (the account,
    a tenant with a cap in the settings or set at run time) gets its cap, use and room."""
    from worker.budgets import Budgets
    from worker.settings import Settings

    store = JobStore.from_url(redis_url, record_ttl=60)
    labels = {"model": "flux-kontext-pro", "tenant": "acme"}
    store.client.hincrby(COUNTERS_KEY, counter_field("spend_micros", **labels), 120_000)
    store.client.hincrby(COUNTERS_KEY, counter_field("images_billed", **labels), 3)
    day = time.strftime("%Y-%m-%d", time.gmtime(store.clock()))
    store.client.hset(
        f"wq:spend:{day}", mapping={"billed": 120_000, "billed|acme": 120_000, "jobs": 3}
    )
    store.client.hset("wq:spend:reserved", mapping={"total": 80_000, "beta": 80_000})
    settings = Settings(daily_budget_micros=10_000_000, tenant_budgets_micros={"acme": 500_000})
    Budgets(store.client, settings).set_cap("beta", 1_000_000)
    store.client.zadd("wq:budget:held", {"j1": 1.0, "j2": 2.0})
    store.client.hset("wq:balance", mapping={"micros": 156_780_000, "checked_at": 1.0, "low": "1"})

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry = CollectorRegistry()
    registry.register(WavequeueCollector(client, settings))
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    client.close()

    def counted(name: str) -> list[tuple[dict[str, str], float]]:
        return [(sample_labels, value) for sample_labels, value in found[name] if value]

    assert counted("wavequeue_spend_usd_total") == [(labels, 0.12)]
    assert counted("wavequeue_images_billed_total") == [(labels, 3.0)]
    # The default tenant's series are there from 0, for rate() to count a first step.
    zero = {"model": "flux-kontext-pro", "tenant": "default"}
    assert (zero, 0.0) in found["wavequeue_spend_usd_total"]
    assert (zero, 0.0) in found["wavequeue_spend_unconfirmed_usd_total"]
    caps = {(d["scope"], d["tenant"]): v for d, v in found["wavequeue_budget_cap_usd"]}
    assert caps == {("account", ""): 10.0, ("tenant", "acme"): 0.5, ("tenant", "beta"): 1.0}
    left = {(d["scope"], d["tenant"]): v for d, v in found["wavequeue_budget_remaining_usd"]}
    assert left == {("account", ""): 9.8, ("tenant", "acme"): 0.38, ("tenant", "beta"): 0.92}
    assert found["wavequeue_spend_reserved_usd"] == [({}, 0.08)]
    assert found["wavequeue_jobs_held_budget"] == [({}, 2.0)]
    assert found["wavequeue_account_balance_usd"] == [({}, 156.78)]
    assert found["wavequeue_account_balance_low"] == [({}, 1.0)]
