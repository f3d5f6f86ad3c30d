"""Every alert fires against a real Prometheus, and every dashboard figure is the truth.

A real ``prometheus`` (Debian's package) scrapes the real exporter and Flower every
second and evaluates ``ops/prometheus/alerts.yml`` every second, while real workers run
jobs against the emulator and the test induces each alert's condition in the processes:

1. a workload with faults: 429s, 503s, failures with codes Prometheus has never seen
   (1403, a code outside the known list, a 401 after a key change, an unknown submit
   outcome) and timeouts, 11 of 81 jobs (14%) -> WavequeueHighFailureRate,
   WavequeueRemoteRateLimited; then every panel's query against the truth (5%);
2. one worker SIGSTOPped while it holds poll countdowns -> WavequeueHeldMessagesOverdue
   (and not WavequeueNoWorkers: the other worker is alive);
3. the other worker SIGKILLed, then a backlog with short deadlines ->
   WavequeueNoWorkers within a minute of the kill, WavequeueQueueBacklogGrowing,
   WavequeueJobsStuckPastDeadline;
4. the exporter's path to Redis cut (a TCP proxy) -> WavequeueExporterCannotReadRedis.

The rules are the shipped ones with one change, so the test takes minutes rather than
an hour: every ``for:`` written in minutes is read as seconds (10m -> 10s, 2m -> 2s).
WavequeueNoWorkers's ``for: 15s`` is kept as is, and no expression is changed; the
stuck-past-deadline threshold is four sweeper intervals, 24 s with the test's 60 s
visibility timeout. The NoWorkers bound: the worker's last beat is at most 2 s old when
it dies, it is silent 10 s after that beat, then ``for: 15s``, plus a 1 s scrape and a
1 s evaluation: about 27 s; the test asserts under 60 s (the issue's "within 1 minute").
With the 15 s intervals of ops/prometheus/prometheus.yml the bound is 55 s (RUNBOOK.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
import yaml

from ops.localstack.supervisor import ProcessService
from producer import JobClient
from tests.ops.conftest import start_exporter, start_flower
from tests.ops.dashboard_truth import TRUTH, Facts, Runs, mismatches, panel_queries
from tests.support.prometheus import PrometheusServer, Target, binary
from tests.support.stack import WorkerStack, worker_stack
from tests.support.tcp_proxy import TcpProxy
from tests.support.worker_process import WorkerProcess
from worker.celery_config import make_app
from worker.models import JobRecord, JobStatus
from worker.settings import Settings

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "wavequeue.json"
FAST = "flux-kontext-max/text-to-image"
SLOW = "flux-kontext-pro/text-to-image"  # 60 s per prediction: its jobs time out
DOOMED = "doomed"
NO_WORKERS_BOUND = 60.0
#: Alerts this test does not induce, and why; every other alert of alerts.yml must fire.
NOT_INDUCED_HERE = {
    # Needs jobs ended by webhook, then 30 minutes of endings by poll only (its windows
    # are 30m and 1d, not its for:); promtool's unit tests cover it.
    "WavequeueWebhooksNotArriving",
}

#: (prompt, model, text_to_image options)
Job = tuple[str, str, Mapping[str, Any]]


def scaled_rules(tmp_path: Path) -> Path:
    """alerts.yml with every ``for:`` in minutes read as seconds; nothing else changed."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["for"] = re.sub(r"^(\d+)m$", r"\1s", rule["for"])
    path = tmp_path / "alerts.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@dataclass
class Live:
    """The running system, and what the test keeps of it."""

    stack: WorkerStack
    client: JobClient
    redis: redis.Redis
    flower: ProcessService
    prometheus: PrometheusServer
    proxy: TcpProxy
    workers: list[WorkerProcess] = field(default_factory=list)

    def flower_metrics(self) -> str:
        return requests.get(f"{self.flower.address}/metrics", timeout=10).text

    def emulator_stats(self) -> dict[str, Any]:
        return self.stack.emulator.stats()

    def run(self, jobs: Sequence[Job], timeout: float = 90) -> list[str]:
        """Enqueue (prompt, model, options) jobs and wait until every one ended."""
        ids = [
            self.client.text_to_image(prompt, model=model, seed=i, **options)
            for i, (prompt, model, options) in enumerate(jobs)
        ]
        self.client.wait_all(ids, timeout=timeout)
        return ids


def start_worker(stack: WorkerStack, name: str) -> WorkerProcess:
    # DEBUG keeps Celery's line per run ("succeeded in 0.01s"): the truth of Flower's panels.
    worker = WorkerProcess(
        stack.env, stack.log_dir / f"{name}.log", concurrency=4, name=name,
        extra_args=("--loglevel", "DEBUG"),
    )  # fmt: skip
    stack.workers.append(worker.start())
    return worker


def wait_for_task_events(flower: ProcessService, workers: list[WorkerProcess]) -> None:
    """Flower sees runs only once it has turned each worker's task events on."""
    deadline = time.monotonic() + 60
    for worker in workers:
        while "Events of group {task} enabled by remote" not in worker.log():
            assert time.monotonic() < deadline, f"Flower never enabled events on {worker.name}"
            time.sleep(0.2)


def flower_series(text: str, event: str) -> set[str]:
    """Workers that have a ``flower_events_total`` series for ``event``."""
    pattern = re.compile(rf'flower_events_total\{{[^}}]*type="{event}"[^}}]*worker="([^"]+)"')
    alt = re.compile(rf'flower_events_total\{{[^}}]*worker="([^"]+)"[^}}]*type="{event}"')
    return set(pattern.findall(text)) | set(alt.findall(text))


def flower_counts(text: str) -> dict[str, tuple[int, int]]:
    """Worker -> (task-succeeded, task-failed) as Flower counts them."""
    found: dict[str, list[int]] = {}
    for line in text.splitlines():
        if not line.startswith("flower_events_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        value = int(float(line.rsplit(" ", 1)[1]))
        slot = {"task-succeeded": 0, "task-failed": 1}.get(labels.get("type", ""))
        if slot is not None:
            found.setdefault(labels["worker"], [0, 0])[slot] += value
    return {worker: (pair[0], pair[1]) for worker, pair in found.items()}


def flower_buckets(text: str) -> list[float]:
    """The bounds of Flower's task runtime histogram, as its /metrics lists them."""
    bounds = re.findall(r'flower_task_runtime_seconds_bucket\{[^}]*le="([^"]+)"', text)
    return sorted({float(le) for le in bounds if le != "+Inf"})


def log_runs(worker: WorkerProcess, offset: int = 0) -> Runs:
    return Runs.from_log(worker.log_path, offset)


def wait_for_flower_to_catch_up(live: Live) -> None:
    """Flower has counted every run the workers logged (task events were on before the
    first run, so Flower's counts and the logs must agree)."""
    deadline = time.monotonic() + 60
    while True:
        counts = flower_counts(live.flower_metrics())
        logged = {
            f"{w.name}@{os.uname().nodename}": (len(r.succeeded), r.failed)
            for w in live.workers
            for r in [log_runs(w)]
        }
        if all(counts.get(name) == value for name, value in logged.items()):
            return
        assert time.monotonic() < deadline, f"Flower counted {counts}, the logs {logged}"
        time.sleep(0.5)


def warm_up(live: Live) -> list[str]:
    """Give every Flower series a first value before Prometheus starts: Flower creates a
    worker's series at its first event, and rate() cannot count a series' first step
    (Flower's own exporter, not ours, so the test works around it rather than fixing it)."""
    names = {f"{w.name}@{os.uname().nodename}" for w in live.workers}
    live.stack.emulator.configure(
        faults={"prediction_failed": {"code": 1403, "prompt_contains": DOOMED}}
    )
    ids: list[str] = []
    for round_ in range(10):
        ids += live.run(
            [(f"warm lantern {round_} {i}", FAST, {}) for i in range(6)]
            + [(f"{DOOMED} warm {round_} {i}", FAST, {}) for i in range(4)]
        )
        wait_for_flower_to_catch_up(live)
        text = live.flower_metrics()
        if names <= flower_series(text, "task-succeeded") & flower_series(text, "task-failed"):
            live.stack.emulator.configure(faults=None)
            return ids
    raise AssertionError("warm-up never gave both workers a succeeded and a failed run")


def workload(live: Live) -> list[str]:
    """81 jobs, 11 of them failing or timing out, with 25 429s and 3 503s on the way."""
    emulator = live.stack.emulator
    ids: list[str] = []
    # 429s that pause nobody (Retry-After: 0) and 503s: retried, the jobs complete.
    emulator.configure(
        faults={
            "submit_429": {"count": 25, "retry_after": 0},
            "submit_503": {"count": 3},
        }
    )
    ids += live.run([(f"lantern {i}", FAST, {}) for i in range(30)])
    # Failures with codes Prometheus never saw a job fail with: a known one, then one
    # outside the known list (exported as "other").
    for code, count in ((1403, 4), (1499, 2)):
        emulator.configure(faults={"prediction_failed": {"code": code, "prompt_contains": DOOMED}})
        ids += live.run(
            [(f"{DOOMED} {code} {i}", FAST, {}) for i in range(count)]
            + [(f"lantern {code} {i}", FAST, {}) for i in range(15)]
        )
    # A submit whose answer is lost after the prediction was created: outcome unknown.
    emulator.configure(
        faults={"submit_drop_after_create": {"count": 1, "prompt_contains": "dropped"}}
    )
    ids += live.run([("dropped lantern", FAST, {})])
    emulator.configure(faults=None)
    # Jobs that cannot finish by their deadline.
    ids += live.run([(f"slow lantern {i}", SLOW, {"deadline": 3}) for i in range(3)])
    # The key revoked under a worker: one 401, the signal RUNBOOK.md's key rotation watches.
    emulator.configure(faults={"submit_401": {"count": 1, "prompt_contains": "revoked"}})
    ids += live.run([("a lantern for a revoked key", FAST, {})])
    emulator.configure(faults=None)
    ids += live.run([(f"last lantern {i}", FAST, {}) for i in range(10)])
    return ids


def check_panels(live: Live, facts: Facts) -> None:
    """Every panel query, asked of Prometheus now, against its truth (5%); retried for a
    while, since gauges reach the exporter and Prometheus a scrape later."""
    board = json.loads(DASHBOARD.read_text())
    queries = panel_queries(board)
    assert {(title, ref) for title, ref, _ in queries} == set(TRUTH), "panels without a truth"
    deadline = time.monotonic() + 30
    while True:
        problems = []
        for title, ref, expr in queries:
            wrong = mismatches(live.prometheus.values(expr), TRUTH[(title, ref)](facts))
            problems += [f"{title} [{ref}] {expr}: {w}" for w in wrong]
        if not problems:
            for title, ref, expr in queries:  # shown with -s, or with a later failure
                print(f"{title} [{ref}]: panel {live.prometheus.values(expr)}")
            return
        if time.monotonic() > deadline:
            raise AssertionError("dashboard figures off the truth:\n" + "\n".join(problems))
        time.sleep(1)


def held_by(worker: WorkerProcess, settings: Settings) -> int:
    """Countdown messages ``worker`` holds (its reply to ``inspect scheduled``)."""
    app = make_app(settings)
    try:
        replies = app.control.inspect(destination=[f"{worker.name}@{os.uname().nodename}"],
                                      timeout=2).scheduled() or {}  # fmt: skip
    finally:
        app.close()
    return sum(len(held) for held in replies.values())


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    binary("prometheus")  # skip early, saying why, without the package
    # Latencies spread over several histogram buckets, so the quantile panels mean something.
    # A 60 s visibility timeout: a hung worker's held countdowns are overdue from 11 s (the
    # longest countdown, 1 s, plus the task time limit, 10 s) until a live worker takes
    # them back at 60 s, a window the alert has to fire in.
    settings = {"WAVEQUEUE_VISIBILITY_TIMEOUT": "60"}
    with worker_stack(tmp_path, workers=0, latency="uniform:0.3:4", settings=settings) as stack:
        stack.emulator.configure(model_latency={SLOW: "fixed:60"})
        proxy = TcpProxy("127.0.0.1", int(urlsplit(stack.redis.url).port or 0))
        exporter_env = {**stack.env, "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        exporter = start_exporter(exporter_env, tmp_path)
        flower = start_flower(stack.env, tmp_path)
        prometheus = PrometheusServer(
            tmp_path / "prometheus",
            targets=[
                Target("wavequeue-exporter", host_port(exporter.address)),
                Target("flower", host_port(flower.address)),
            ],
            rule_files=[scaled_rules(tmp_path)],
        )
        client = JobClient(redis_url=stack.env["REDIS_URL"])
        connection = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
        state = Live(stack, client, connection, flower, prometheus, proxy)
        try:
            state.workers = [start_worker(stack, "alpha"), start_worker(stack, "beta")]
            yield state
        finally:
            for worker in state.workers:
                if worker.process is not None and worker.process.poll() is None:
                    os.kill(worker.process.pid, signal.SIGCONT)
                    worker.kill()
            prometheus.stop()
            flower.stop()
            exporter.stop()
            proxy.cut()
            client.close()
            connection.close()


def test_every_alert_fires_and_every_panel_tells_the_truth(live: Live) -> None:
    prometheus = live.prometheus
    fired: set[str] = set()

    def fire(name: str, timeout: float) -> float:
        """Wait until alert ``name`` fires; returns when (monotonic)."""
        seen = prometheus.wait_for_alert(name, timeout=timeout)
        fired.add(name)
        return seen

    alpha, beta = live.workers
    wait_for_task_events(live.flower, live.workers)
    warm_ids = warm_up(live)

    # Prometheus from here: every series the workload moves already has a sample.
    prometheus.start()
    prometheus.wait_until('up{job="wavequeue-exporter"} == 1 and on() up{job="flower"} == 1',
                          timeout=60, what="both targets scraped")  # fmt: skip
    prometheus.wait_until(
        "count(wavequeue_jobs_ended_total) > 0 and on() count(flower_events_total) > 0",
        timeout=30,
    )
    offsets = {w.name: w.log_path.stat().st_size for w in live.workers}
    before = live.emulator_stats()

    # 1. The workload with faults.
    ids = workload(live)
    after = live.emulator_stats()
    wait_for_flower_to_catch_up(live)
    records: list[JobRecord] = live.client.get_many(ids)
    statuses = [r.status for r in records]
    assert statuses.count(JobStatus.FAILED) == 8 and statuses.count(JobStatus.TIMED_OUT) == 3
    # Enough samples that rate()'s extrapolation stays well inside the 5%.
    prometheus.wait_until('count_over_time(up{job="flower"}[5m]) >= 60', timeout=120)
    node = os.uname().nodename
    facts = Facts(
        records=records,
        # Today's budget figures count the warm-up's jobs too (it ran before Prometheus).
        day_records=records + live.client.get_many(warm_ids),
        submissions_created=after["predictions"]["created"] - before["predictions"]["created"],
        polls=after["polls"]["total"] - before["polls"]["total"],
        http_429=after["http_429"] - before["http_429"],
        faults_served={
            kind: after["faults"].get(kind, 0) - before["faults"].get(kind, 0)
            for kind in after["faults"]
        },
        runs={f"{w.name}@{node}": log_runs(w, offsets[w.name]) for w in live.workers},
        workers_alive=2,
        workers_silent=0,
        redis=live.redis,
        flower_runtime_buckets=flower_buckets(live.flower_metrics()),
    )
    assert facts.http_429 == 25 and facts.faults_served["submit_503"] == 3
    check_panels(live, facts)
    fire("WavequeueHighFailureRate", timeout=60)
    fire("WavequeueRemoteRateLimited", timeout=60)
    # Nothing else is wrong yet, and no other alert says so.
    quiet = {
        "WavequeueNoWorkers", "WavequeueHeldMessagesOverdue", "WavequeueQueueBacklogGrowing",
        "WavequeueJobsStuckPastDeadline", "WavequeueExporterCannotReadRedis",
        "WavequeueWebhooksNotArriving",
    }  # fmt: skip
    assert {name: prometheus.alert_state(name) for name in quiet} == dict.fromkeys(
        quiet, "inactive"
    )

    # 2. One worker hangs while it holds poll countdowns.
    live.stack.emulator.configure(latency="fixed:60")
    settings = Settings.from_env(live.stack.env)
    for i in range(8):
        live.client.text_to_image(f"a long lantern {i}", model=FAST)
    deadline = time.monotonic() + 60
    while held_by(alpha, settings) == 0:
        assert time.monotonic() < deadline, "alpha never held a poll countdown"
        time.sleep(0.2)
    assert alpha.process is not None and beta.process is not None
    os.kill(alpha.process.pid, signal.SIGSTOP)
    fire("WavequeueHeldMessagesOverdue", timeout=60)
    assert prometheus.alert_state("WavequeueNoWorkers") == "inactive"  # beta is alive
    # Flower still shows the stopped worker online: why NoWorkers does not page on it.
    online = f'max(flower_worker_online{{worker="{alpha.name}@{node}"}})'
    assert prometheus.values(online) == {(): 1.0}

    # 3. The last worker dies; a backlog with short deadlines waits for nobody.
    beta.kill()
    killed = time.monotonic()
    for i in range(120):
        live.client.text_to_image(f"queued lantern {i}", model=FAST, deadline=2)
    paged = fire("WavequeueNoWorkers", timeout=NO_WORKERS_BOUND + 30)
    no_workers_after = paged - killed
    assert no_workers_after < NO_WORKERS_BOUND, f"NoWorkers fired {no_workers_after:.0f}s after"
    fire("WavequeueQueueBacklogGrowing", timeout=60)
    fire("WavequeueJobsStuckPastDeadline", timeout=60)

    # 4. The exporter loses its path to Redis (Redis itself runs on).
    assert prometheus.alert_state("WavequeueExporterCannotReadRedis") == "inactive"
    live.proxy.cut()
    fire("WavequeueExporterCannotReadRedis", timeout=60)
    rules = yaml.safe_load(RULES.read_text())["groups"]
    every = {rule["alert"] for group in rules for rule in group["rules"]}
    assert fired == every - NOT_INDUCED_HERE
    print(f"NoWorkers fired {no_workers_after:.1f}s after the last worker was killed")
