"""The collector's conversions, in process, on the session's real redis-server."""

from __future__ import annotations

import math

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ops.exporter.catalogue import exported_names
from ops.exporter.collector import WavequeueCollector
from ops.exporter.snapshot import Histogram
from worker.constants import COUNTERS_KEY, HISTOGRAM_KEY
from worker.store import JobStore, counter_field


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
    }
