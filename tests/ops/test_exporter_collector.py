"""The collector's conversions and its cost, in process, on the session's real redis-server."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ops.exporter.catalogue import exported_names
from ops.exporter.collector import WavequeueCollector
from ops.exporter.snapshot import Histogram
from tests.support.records import put_in_status
from worker.constants import COUNTERS_KEY, HISTOGRAM_KEY
from worker.models import JobRecord, JobStatus
from worker.store import JobStore, NewJob, counter_field


def scrape(redis_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry = CollectorRegistry()
    registry.register(WavequeueCollector(client, visibility_timeout=600))
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
    found = scrape(redis_url)
    assert sorted(
        (labels["model"], labels["code"], value)
        for labels, value in found["wavequeue_jobs_failed_total"]
    ) == [
        ("flux-kontext-max", "submit_outcome_unknown", 1.0),
        ("flux-kontext-pro", "1403", 2.0),
    ]
    assert found["wavequeue_remote_rate_limited_total"] == [({}, 1.0)]
    assert found["wavequeue_webhook_misses_total"] == [({"source": "x"}, 4.0)]


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
    # Counters and jobs_live carry labels that only data gives them (model, status).
    missing = {name for name in exported_names() if name not in found}
    assert missing == {
        "wavequeue_jobs_live",
        "wavequeue_jobs_failed_total",
        "wavequeue_submit_outcome_unknown_total",
        "wavequeue_resubmissions_total",
        "wavequeue_error_retries_total",
        "wavequeue_orphaned_predictions_total",
        "wavequeue_inline_uploads_total",
        "wavequeue_jobs_ended_by_total",
        "wavequeue_polls_before_end_total",
        "wavequeue_webhooks_rejected_total",
        "wavequeue_webhooks_ignored_total",
        "wavequeue_orphans_adopted_total",
        "wavequeue_jobs_cancelled_total",
        "wavequeue_callbacks_delivered_total",
        "wavequeue_callbacks_failed_total",
        "wavequeue_callback_attempts_failed_total",
        "wavequeue_tenant_jobs_live",
        "wavequeue_tenant_waiting",
        "wavequeue_tenant_in_flight",
        "wavequeue_tenant_jobs_ended_total",
        "wavequeue_tenant_admitted_total",
        "wavequeue_outputs_kept_total",
        "wavequeue_outputs_not_kept_total",
        "wavequeue_persist_failures_total",
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
    assert sum(calls_with_many.values()) < 40
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
