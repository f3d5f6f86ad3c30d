"""Flower in a real browser: a private redis-server, the emulator, a real worker,
Flower with basic auth behind a URL prefix, and headless Chromium.

Checks that the project's task and queues are on the tasks page, and that the
API key is nowhere: not on the page, not in Flower's JSON API (tasks, workers
with their config), since task arguments are job ids only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ops.localstack.supervisor import ProcessService
from producer import JobClient
from tests.ops.chromium import Chromium, find_chromium
from tests.ops.conftest import FLOWER_PASSWORD, FLOWER_USER, start_flower
from tests.support.stack import SECRET_API_KEY
from tests.support.worker_process import WorkerProcess
from worker.constants import QUEUE_HIGH, QUEUE_NORMAL, RUN_JOB_TASK
from worker.models import JobStatus
from worker.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

PREFIX = "flower"
AUTH = (FLOWER_USER, FLOWER_PASSWORD)


@pytest.fixture
def chromium(tmp_path: Path) -> Chromium:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed and could not be: `make test` installs it with "
                    "apt-get when run as root")  # fmt: skip
    return Chromium(binary, tmp_path / "chromium")


@pytest.fixture
def flower(stack_env: dict[str, str], tmp_path: Path) -> Iterator[ProcessService]:
    service = start_flower(
        stack_env,
        tmp_path,
        FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        FLOWER_URL_PREFIX=f"/{PREFIX}/",
    )
    yield service
    service.stop()


def wait_for_events(base: str, worker: WorkerProcess, timeout: float = 30) -> None:
    """Flower sees tasks only through events: wait until its event receiver is live
    (it has a heartbeat from the worker) and it has turned the worker's task events on,
    or tasks run meanwhile would be missed."""
    deadline = time.monotonic() + timeout
    online = f'flower_worker_online{{worker="{worker.name}@'
    while online not in requests.get(f"{base}/metrics", auth=AUTH, timeout=10).text:
        assert time.monotonic() < deadline, "Flower never got an event from the worker"
        time.sleep(0.2)
    # Task events are off by default: Flower turns them on (enable_events every 5 s).
    while "Events of group {task} enabled by remote" not in worker.log():
        assert time.monotonic() < deadline, "Flower never turned the worker's task events on"
        time.sleep(0.2)


def wait_for_flower_tasks(
    base: str, job_ids: list[str], timeout: float = 30
) -> list[dict[str, Any]]:
    """Flower's view of the jobs' tasks once it has seen every job's last run succeed
    (each run is a task of its own; the last one returns the output URL)."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(f"{base}/api/tasks", auth=AUTH, timeout=10)
        response.raise_for_status()
        tasks = list(response.json().values())
        done = {
            job_id
            for t in tasks
            if t["state"] == "SUCCESS" and t.get("result") not in (None, "None")
            for job_id in job_ids
            if t.get("args") == job_id
        }
        if len(done) == len(job_ids):
            return tasks
        states = sorted((str(t.get("args")), t["state"]) for t in tasks)
        assert time.monotonic() < deadline, f"Flower saw {len(done)} of {len(job_ids)}: {states}"
        time.sleep(0.3)


def test_flower_shows_the_project_tasks_and_never_the_key(
    worker: WorkerProcess,
    flower: ProcessService,
    stack_env: dict[str, str],
    chromium: Chromium,
    tmp_path: Path,
) -> None:
    base = f"{flower.address}/{PREFIX}"
    wait_for_events(base, worker)
    # The queue of a task reaches Flower only in a task-sent event, which a producer
    # publishes only when asked (README, "Monitor it").
    producer_settings = Settings(redis_url=stack_env["REDIS_URL"], producer_sent_events=True)
    with JobClient(producer_settings) as client:
        job_ids = [client.text_to_image(f"a lighthouse, take {i}", seed=i) for i in range(3)]
        job_ids.append(client.text_to_image("an urgent lighthouse", seed=9, priority="high"))
        records = client.wait_all(job_ids, timeout=60)
    assert {r.status for r in records} == {JobStatus.COMPLETED}

    assert requests.get(f"{base}/tasks", timeout=10).status_code == 401
    tasks = wait_for_flower_tasks(base, job_ids)
    # Readable runs (issue #12): args the job id, kwargs the model and which run it is;
    # each job shows its submit and its polls. The name stays the task's own (Flower labels
    # its Prometheus series by it: one series, not one per poll number).
    assert {t["name"] for t in tasks} == {RUN_JOB_TASK}
    model = "flux-kontext-max/text-to-image"
    for job_id in job_ids:
        runs = sorted(t["kwargs"] for t in tasks if t["args"] == job_id)
        assert runs[0] == f"{model} poll 1", runs
        assert runs[-1] == f"{model} submit", runs
        assert all(re.fullmatch(rf"{model} (submit|poll \d+)", run) for run in runs), runs
    # The first run of each job (sent by the producer); later runs are sent by the worker,
    # which publishes task-sent events only with WAVEQUEUE_TASK_EVENTS.
    assert {t["routing_key"] for t in tasks if t["routing_key"]} == {QUEUE_NORMAL, QUEUE_HIGH}
    # Task arguments are ids only: Flower shows the labels (worker.messages.run_label).
    for task in tasks:
        assert re.fullmatch(r"[0-9a-f]{32}", task["args"]), task["args"]
    api_text = requests.get(f"{base}/api/tasks", auth=AUTH, timeout=10).text
    workers_text = requests.get(
        f"{base}/api/workers", params={"refresh": 1}, auth=AUTH, timeout=30
    ).text
    assert worker.name in workers_text
    for text in (api_text, workers_text):
        assert SECRET_API_KEY not in text

    page = f"http://{FLOWER_USER}:{FLOWER_PASSWORD}@{base.removeprefix('http://')}"
    dom = chromium.dom(f"{page}/tasks")
    assert RUN_JOB_TASK in dom
    assert "flux-kontext-max/text-to-image submit" in dom
    assert "flux-kontext-max/text-to-image poll 1" in dom
    # The job id, model and run are the first columns (ops/flower/guard.py).
    headers = re.findall(r'<th data-column="(\w+)"', dom)
    assert headers[:4] == ["name", "args", "kwargs", "state"], headers
    assert QUEUE_NORMAL in dom
    assert QUEUE_HIGH in dom
    assert all(job_id in dom for job_id in job_ids)
    assert SECRET_API_KEY not in dom
    broker = chromium.dom(f"{page}/broker")
    assert QUEUE_NORMAL in broker
    assert QUEUE_HIGH in broker
    assert SECRET_API_KEY not in broker

    shot = chromium.screenshot(f"{page}/tasks", tmp_path / "flower_tasks.png")
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert SECRET_API_KEY not in flower.log_tail(10_000)
