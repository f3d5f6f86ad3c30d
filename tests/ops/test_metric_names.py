"""Every metric the alerts and the dashboard use is one that is really exported.

The exporter's names come from a real scrape of its collector; Flower's from its
own source (flower/events.py in the virtualenv). Expressions are parsed with a
real PromQL parser, so a syntax error fails here, not in Prometheus.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flower.events
import promql_parser
import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ops.exporter.catalogue import COUNTERS, MONEY_COUNTERS
from ops.exporter.collector import WavequeueCollector
from worker.constants import LATENCY_BUCKETS, POLL_COUNT_BUCKETS
from worker.settings import Settings
from worker.store import JobStore, counter_field

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "wavequeue.json"
RUNBOOK = ROOT / "ops" / "RUNBOOK.md"
#: Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up"}
REQUIRED_ALERTS = {
    "WavequeueQueueBacklogGrowing",
    "WavequeueHighFailureRate",
    "WavequeueNoWorkers",
    "WavequeueJobsStuckPastDeadline",
    "WavequeueHeldMessagesOverdue",
    "WavequeueRemoteRateLimited",
    "WavequeueExporterCannotReadRedis",
}


def flower_metric_names() -> set[str]:
    """Sample names of every metric Flower defines (Counter, Gauge, Histogram calls)."""
    tree = ast.parse(Path(flower.events.__file__).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        kind = getattr(node.func, "id", None)
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        if kind in ("Counter", "PrometheusCounter"):
            names.add(first.value.removesuffix("_total") + "_total")
        elif kind == "Gauge":
            names.add(first.value)
        elif kind == "Histogram":
            names |= {first.value + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def exporter_metric_names(redis_url: str) -> set[str]:
    """Family and sample names of a real scrape, with every counter and a live job."""
    store = JobStore.from_url(redis_url, record_ttl=60)
    for name in COUNTERS:
        store.count(name, model="m", code="1")
    for stored, _ in MONEY_COUNTERS.values():
        store.client.hincrby("wq:counters", counter_field(stored, model="m", tenant="t"), 40_000)
    store.observe("end_to_end_seconds", 3.0, LATENCY_BUCKETS)
    store.observe("polls_per_job", 2, POLL_COUNT_BUCKETS)
    store.client.zadd("wq:deadlines", {"j1": 1.0})
    store.client.hset("wq:job:j1", mapping={"status": "queued", "model": "m"})
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry = CollectorRegistry()
    registry.register(WavequeueCollector(client, Settings(visibility_timeout=600)))
    text = generate_latest(registry).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def selectors(node: Any) -> Iterator[str]:
    """Metric names in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            yield node.name
        return
    for attribute in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        if child is not None:
            yield from selectors(child)
    for arg in getattr(node, "args", None) or []:
        yield from selectors(arg)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


@pytest.fixture
def known(redis_url: str) -> set[str]:
    return exporter_metric_names(redis_url) | flower_metric_names() | PROMETHEUS_OWN


def test_flower_names_are_read_from_its_source() -> None:
    names = flower_metric_names()
    assert {"flower_worker_online", "flower_events_total"} <= names
    assert "flower_task_runtime_seconds_bucket" in names


def test_alerts_use_only_exported_metrics(known: set[str]) -> None:
    for rule in alert_rules():
        used = set(selectors(promql_parser.parse(rule["expr"])))
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']} uses unknown {sorted(used - known)}"


def test_dashboard_uses_only_exported_metrics(known: set[str]) -> None:
    exprs = dashboard_exprs()
    used = {name for expr in exprs for name in selectors(promql_parser.parse(expr))}
    assert used <= known, f"dashboard uses unknown {sorted(used - known)}"
    assert any(name.startswith("flower_") for name in used)  # the workers row


def test_dashboard_covers_queues_throughput_latency_failures_workers_cost_tenants() -> None:
    board = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Queues", "Throughput", "Latency", "Failures", "Workers", "Cost", "Tenants"]
    datasource = yaml.safe_load(
        (ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    panel_sources = {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p}
    target_sources = {
        t["datasource"]["uid"]
        for p in board["panels"]
        for t in p.get("targets", [])
        if "datasource" in t
    }
    assert panel_sources == target_sources == {datasource["uid"]}
    assert datasource["type"] == "prometheus"
    assert all(
        p["datasource"]["type"] == "prometheus" for p in board["panels"] if "datasource" in p
    )
    # Every query panel names its datasource; ids are unique (Grafana keys panels by id).
    queried = [p for p in board["panels"] if p.get("targets")]
    assert all("datasource" in p for p in queried)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    # Provisioning loads the folder compose mounts the dashboards into.
    provider = yaml.safe_load(
        (ROOT / "ops/grafana/provisioning/dashboards/wavequeue.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_workers_panel_and_no_workers_alert_use_heartbeats() -> None:
    """Flower's flower_worker_online stays 1 for a killed or frozen worker: neither the
    page nor the panel may rest on it."""
    rule = next(r for r in alert_rules() if r["alert"] == "WavequeueNoWorkers")
    assert "flower_worker_online" not in rule["expr"]
    assert "wavequeue_workers_alive" in rule["expr"]
    assert not any("flower_worker_online" in expr for expr in dashboard_exprs())
    assert any("wavequeue_workers_alive" in expr for expr in dashboard_exprs())


def test_failure_ratio_panel_is_the_alert_expression() -> None:
    """The panel and the alert count the same endings (timed-out jobs too)."""
    rule = next(r for r in alert_rules() if r["alert"] == "WavequeueHighFailureRate")
    alert = " ".join(rule["expr"].split()).removesuffix(" > 0.1")
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ratio = next(p for p in panels if p["title"] == "Failure ratio")
    assert [t["expr"] for t in ratio["targets"]] == [alert]


def test_alert_rules_are_complete_and_in_the_runbook() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert names >= REQUIRED_ALERTS
    runbook = RUNBOOK.read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["for"]
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["runbook"] == f"ops/RUNBOOK.md#{rule['alert'].lower()}"
        assert f"### {rule['alert']}" in runbook, f"{rule['alert']} missing in the runbook"
