"""The jobs page in a real browser: a private redis-server, the emulator, real worker
processes, the exporter serving the page with a login, and headless Chromium driven over
the DevTools protocol (tests/ops/cdp.py).

The page must show the figures the exporter reports on /metrics, refresh them live,
find jobs by status, draw a job's timeline and images, and its retry button (pressed
with the mouse) must run a failed job again. Its API must refuse a form without the
XSRF token and a request without the login.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ops.localstack.redis_server import free_port
from ops.localstack.supervisor import ProcessService, port_open
from producer import JobClient
from tests.ops.cdp import Browser
from tests.ops.chromium import find_chromium
from tests.ops.conftest import BIN, without_key
from tests.support.emulator import EmulatorHandle
from tests.support.stack import SECRET_API_KEY
from tests.support.worker_process import WorkerProcess
from worker.constants import QUEUE_HIGH, QUEUE_NORMAL
from worker.models import JobStatus

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

USER, PASSWORD = "ops", "jobs-page-test-password"
LOGIN = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed and could not be: `make test` installs it with "
                    "apt-get when run as root")  # fmt: skip
    return binary


@pytest.fixture
def exporter(stack_env: dict[str, str], tmp_path: Path) -> Iterator[ProcessService]:
    port = free_port()
    service = ProcessService(
        name="exporter",
        address=f"http://127.0.0.1:{port}",
        argv=[str(BIN / "wavequeue"), "exporter", "--port", str(port)],
        env={**without_key(stack_env), "WAVEQUEUE_JOBS_BASIC_AUTH": f"{USER}:{PASSWORD}"},
        log_path=tmp_path / "exporter.log",
        ready=lambda _s: port_open("127.0.0.1", port),
    )
    service.start()
    yield service
    service.stop()


def exported(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one /metrics scrape, by name and labels."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def figure(browser: Browser, name: str) -> float:
    return float(browser.evaluate(f"document.getElementById('figure-{name}').dataset.value"))


@pytest.fixture
def workers(stack_env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Workers a test starts (and may stop); whatever still runs is stopped at the end."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def start_worker(env: dict[str, str], log: Path, started: list[WorkerProcess]) -> WorkerProcess:
    worker = WorkerProcess(env, log, concurrency=8)
    started.append(worker)
    return worker.start()


def test_the_jobs_page_shows_the_exporters_figures_and_its_retry_runs_a_job(  # noqa: PLR0917
    stack_env: dict[str, str],
    secret_emulator: EmulatorHandle,
    exporter: ProcessService,
    chromium_binary: str,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    base = exporter.address
    secret_emulator.configure(
        faults={"prediction_failed": {"count": 1, "prompt_contains": "jobs page: boom"}}
    )
    worker = start_worker(stack_env, tmp_path / "worker1.log", workers)
    with JobClient(redis_url=stack_env["REDIS_URL"]) as client:
        done = [client.text_to_image(f"jobs page: a kite {n}", seed=n) for n in range(3)]
        failed_id = client.text_to_image("jobs page: boom", seed=9)
        records = client.wait_all([*done, failed_id], timeout=60)
        assert [r.status for r in records] == [JobStatus.COMPLETED] * 3 + [JobStatus.FAILED]
        worker.stop()
        # No worker now: these wait in their queues, and the figures stand still.
        waiting = [client.text_to_image(f"jobs page: waiting {n}") for n in range(3)]
        waiting += [client.text_to_image(f"jobs page: urgent {n}", priority="high")
                    for n in range(2)]  # fmt: skip

        before = time.time()
        metrics = exported(base)
        with Browser(chromium_binary, tmp_path / "chromium") as browser:
            browser.send_header("Authorization", LOGIN)
            browser.open(f"{base}/jobs")
            opened = time.time()
            # The figures are the exporter's, as it reports them on /metrics.
            queue = "wavequeue_queue_messages"
            assert figure(browser, "queued_high") == total(metrics, queue, queue=QUEUE_HIGH) == 2
            assert figure(browser, "queued_normal") == total(metrics, queue, queue=QUEUE_NORMAL)
            assert figure(browser, "queued_normal") == 3
            live = "wavequeue_jobs_live"
            assert figure(browser, "jobs_queued") == total(metrics, live, status="queued") == 5
            assert figure(browser, "in_flight") == total(
                metrics, "wavequeue_inflight_predictions"
            ) == 0  # fmt: skip
            ended = "wavequeue_jobs_ended_last_hour"
            assert figure(browser, "completed_last_hour") == total(
                metrics, ended, status="completed"
            ) == 3  # fmt: skip
            assert figure(browser, "failed_last_hour") == total(metrics, ended, status="failed")
            assert figure(browser, "failed_last_hour") == 1
            # The oldest job's age grows while we look: the page's reading is the exporter's
            # plus the time between the two readings (ages are read against the exporter's
            # clock, enqueue times against Redis's: a few milliseconds may part them).
            oldest = total(metrics, "wavequeue_jobs_oldest_queued_age_seconds")
            assert oldest - 0.5 <= figure(browser, "oldest_waiting_seconds")
            assert figure(browser, "oldest_waiting_seconds") <= oldest + (opened - before) + 0.5
            listed = browser.evaluate(
                "[...document.querySelectorAll('#job-rows tr')].map(r => r.dataset.jobId)"
            )
            assert set(listed) == {*done, failed_id, *waiting}
            # The latest status change first: times are kept to the millisecond, and jobs
            # queued within the same one follow by id (the index's order).
            queued_at = {job_id: client.get(job_id).created_at for job_id in waiting}
            newest_first = sorted(waiting, key=lambda j: (queued_at[j], j), reverse=True)
            assert listed[:5] == newest_first
            # Cost: what a completed job was billed (Kontext Max, one image), an estimate
            # for a waiting one.
            cost = "document.querySelector('tr[data-job-id=\"{}\"] td:nth-child(7)').textContent"
            assert browser.evaluate(cost.format(done[0])) == "$0.08"
            assert browser.evaluate(cost.format(waiting[0])) == "~$0.08"
            shot = browser.screenshot(tmp_path / "jobs.png")
            assert shot.stat().st_size > 10_000 and shot.read_bytes().startswith(b"\x89PNG")

            # Live: a new job shows up in the figures and the list without a reload.
            late = client.text_to_image("jobs page: late")
            browser.wait_until(
                "document.getElementById('figure-queued_normal').dataset.value === '4'"
            )
            browser.wait_until(f"document.querySelector('tr[data-job-id=\"{late}\"]') !== null")
            # ... and the oldest job's age, refreshed, has grown since the first reading.
            assert figure(browser, "oldest_waiting_seconds") > oldest

            # Search by status.
            browser.open(f"{base}/jobs?status=failed")
            failed_rows = browser.evaluate(
                "[...document.querySelectorAll('#job-rows tr')].map(r => r.dataset.jobId)"
            )
            assert failed_rows == [failed_id]

            # The failed job: its error, timeline and button.
            browser.open(f"{base}/jobs/{failed_id}")
            assert browser.evaluate("document.getElementById('job-status').textContent") == (
                "failed"
            )
            assert "[1403]" in browser.evaluate("document.getElementById('job-error').textContent")
            steps = browser.evaluate(
                "[...document.querySelectorAll('#timeline li')].map(li => li.textContent)"
            )
            whats = [re.sub(r"^\+[\d.]+s ", "", step) for step in steps]
            assert whats[0] == "queued" and whats[-1] == "failed"
            assert "submitted" in whats and "poll 1" in whats
            browser.screenshot(tmp_path / "failed-job.png")

            # Cancel a waiting job with its button: it never reaches WaveSpeed.
            doomed = waiting[0]
            browser.open(f"{base}/jobs/{doomed}")
            browser.click("#cancel")
            assert browser.evaluate("document.getElementById('job-status').textContent") == (
                "cancelled"
            )
            assert client.get(doomed).status is JobStatus.CANCELLED
            assert browser.evaluate("document.getElementById('cancel') === null")

            # Press the button: the failed job runs again, as a new job.
            browser.open(f"{base}/jobs/{failed_id}")
            start_worker(stack_env, tmp_path / "worker2.log", workers)
            browser.click("#retry")
            path = browser.evaluate("window.location.pathname")
            new_id = path.removeprefix("/jobs/")
            assert re.fullmatch(r"[0-9a-f]{32}", new_id) and new_id != failed_id
            assert browser.evaluate("document.getElementById('retry-of').textContent") == (
                failed_id
            )
            assert client.retried_as(failed_id) == new_id
            retried = client.wait(new_id, timeout=60)
            # The cancelled job was never submitted: the jobs queued behind it ran, its own
            # message came first (one normal queue, in order) and was dropped.
            rest = client.wait_all([*waiting[1:], late], timeout=60)
            assert {r.status for r in rest} == {JobStatus.COMPLETED}
            submitted_prompts = {p["input"].get("prompt") for p in secret_emulator.predictions()}
            assert "jobs page: waiting 0" not in submitted_prompts
            assert retried.status is JobStatus.COMPLETED and retried.retry_of == failed_id
            # The page follows the job to its end by itself, then shows the output image.
            browser.wait_until(
                "document.body.dataset.status === 'completed' && "
                "document.querySelector('#outputs img') !== null"
            )
            browser.wait_until("document.querySelector('#outputs img').naturalWidth > 0")
            browser.screenshot(tmp_path / "retried-job.png")
            browser.open(f"{base}/jobs/{failed_id}")
            assert browser.evaluate("document.getElementById('retried-as').textContent") == (new_id)
            page_text = browser.evaluate("document.documentElement.outerHTML")
            assert SECRET_API_KEY not in page_text

    # The API behind the button: a login, and a form from this page only.
    assert requests.get(f"{base}/jobs", timeout=10).status_code == 401
    forged = requests.post(
        f"{base}/jobs/{failed_id}/retry", headers={"Authorization": LOGIN}, timeout=10
    )
    assert forged.status_code == 403
    cross_site = requests.post(
        f"{base}/jobs/{failed_id}/retry",
        headers={"Authorization": LOGIN, "Sec-Fetch-Site": "cross-site"},
        timeout=10,
    )
    assert cross_site.status_code == 403
    assert SECRET_API_KEY not in exporter.log_tail(10_000)
