"""The exporter against real jobs: a real worker, the emulator over HTTP, a real
redis-server, /metrics scraped over HTTP and parsed with prometheus_client.

The numbers are checked against what the emulator saw on the wire, so the
exporter is right only if the workers counted right and it read them right.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ops.healthcheck import healthy
from ops.localstack.supervisor import ProcessService
from producer import JobClient
from tests.ops.conftest import scrape, start_exporter
from tests.support.emulator import EmulatorHandle
from tests.support.stack import SECRET_API_KEY
from tests.support.worker_process import WorkerProcess
from worker.constants import LATENCY_BUCKETS
from worker.models import JobStatus

pytestmark = pytest.mark.timeout(120)

FAILING_PROMPT = "doomed"


@pytest.fixture
def exporter(stack_env: dict[str, str], tmp_path: Path) -> Iterator[ProcessService]:
    service = start_exporter(stack_env, tmp_path)
    yield service
    service.stop()


@pytest.fixture
def client(stack_env: dict[str, str]) -> Iterator[JobClient]:
    with JobClient(redis_url=stack_env["REDIS_URL"]) as jobs:
        yield jobs


def samples(exporter: ProcessService) -> list[Sample]:
    text = scrape(exporter.address)
    assert SECRET_API_KEY not in text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(found: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in found
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def wait_status(client: JobClient, job_id: str, statuses: set[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.get(job_id).status.value not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} never reached {statuses}"
        time.sleep(0.05)


def test_counters_and_histograms_match_the_emulator(
    worker: WorkerProcess,
    secret_emulator: EmulatorHandle,
    exporter: ProcessService,
    client: JobClient,
) -> None:
    secret_emulator.configure(
        faults={"prediction_failed": {"code": 1403, "prompt_contains": FAILING_PROMPT}}
    )
    good = [client.text_to_image(f"a lantern, take {i}", seed=i) for i in range(5)]
    bad = [client.text_to_image(f"{FAILING_PROMPT} lantern {i}", seed=i) for i in range(2)]
    records = client.wait_all(good + bad, timeout=60)
    assert [r.status for r in records] == [JobStatus.COMPLETED] * 5 + [JobStatus.FAILED] * 2

    stats = secret_emulator.stats()
    found = samples(exporter)
    model = "flux-kontext-max/text-to-image"
    assert total(found, "wavequeue_redis_up") == 1
    assert total(found, "wavequeue_submissions_total") == stats["submissions"]["total"] == 7
    assert total(found, "wavequeue_submissions_total", model=model) == 7
    assert total(found, "wavequeue_polls_total") == stats["polls"]["total"]
    assert total(found, "wavequeue_jobs_completed_total") == stats["predictions"]["completed"]
    assert total(found, "wavequeue_jobs_completed_total", model=model) == 5
    assert total(found, "wavequeue_jobs_failed_total", code="1403", model=model) == 2
    assert total(found, "wavequeue_jobs_failed_total") == stats["predictions"]["failed"] == 2
    assert total(found, "wavequeue_jobs_ended_total", outcome="completed", model=model) == 5
    assert total(found, "wavequeue_jobs_ended_total", outcome="failed", model=model) == 2
    assert total(found, "wavequeue_jobs_ended_total") == 7

    # Histograms: one observation per completed job, buckets cumulative up to +Inf.
    assert total(found, "wavequeue_end_to_end_seconds_count") == 5
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in found
        if s.name == "wavequeue_end_to_end_seconds_bucket"
    )
    assert [b for b, _ in buckets] == [*LATENCY_BUCKETS, math.inf]
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1][1] == 5
    assert total(found, "wavequeue_polls_per_job_count") == 5
    polls_of_completed = sum(r.polls for r in records[:5])
    assert total(found, "wavequeue_polls_per_job_sum") == polls_of_completed
    # Nothing is left in flight once every job ended.
    assert total(found, "wavequeue_jobs_live") == 0
    assert total(found, "wavequeue_inflight_predictions") == 0


def test_queues_held_countdowns_and_live_jobs(
    worker: WorkerProcess,
    secret_emulator: EmulatorHandle,
    exporter: ProcessService,
    client: JobClient,
) -> None:
    # A slow prediction: its poll countdown sits unacked in the worker meanwhile.
    secret_emulator.configure(latency="fixed:30")
    slow = client.text_to_image("a slow lantern", seed=1)
    wait_status(client, slow, {"submitted", "processing"})
    found = samples(exporter)
    assert total(found, "wavequeue_unacked_messages") >= 1
    assert total(found, "wavequeue_inflight_predictions") == 1
    assert total(found, "wavequeue_jobs_live") == 1
    assert total(found, "wavequeue_jobs_past_deadline") == 0

    # With no worker, new jobs wait in the queue lists; a warm stop hands the
    # held countdown back to its queue too.
    worker.stop()
    for i in range(2):
        client.text_to_image(f"a queued lantern {i}", seed=i)
    client.text_to_image("an urgent lantern", seed=9, priority="high")
    client.text_to_image("a late lantern", seed=3, deadline=0.01)
    time.sleep(0.05)
    found = samples(exporter)
    assert total(found, "wavequeue_queue_messages", queue="wavequeue.high") == 1
    assert total(found, "wavequeue_queue_messages", queue="wavequeue.normal") == 4
    assert total(found, "wavequeue_unacked_messages") == 0
    assert total(found, "wavequeue_jobs_live", status="queued") == 4
    assert total(found, "wavequeue_jobs_live") == 5
    assert total(found, "wavequeue_jobs_past_deadline") == 1
    assert total(found, "wavequeue_jobs_past_deadline_max_seconds") > 0


def test_redis_down_is_reported_not_an_error(stack_env: dict[str, str], tmp_path: Path) -> None:
    env = {**stack_env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    service = start_exporter(env, tmp_path)
    try:
        found = samples(service)
        assert total(found, "wavequeue_redis_up") == 0
        # The container's healthcheck: an exporter that cannot read Redis is unhealthy
        # (it answered HTTP, which the check used to take as healthy).
        assert not healthy(["wavequeue", "exporter", "--port", port_of_url(service.address)])
    finally:
        service.stop()


def test_an_exporter_that_reads_redis_is_healthy(exporter: ProcessService) -> None:
    assert healthy(["wavequeue", "exporter", "--port", port_of_url(exporter.address)])


def port_of_url(url: str) -> str:
    return str(urlsplit(url).port)
