"""Workers that die, stop, or start misconfigured; the opt-in resubmit policy."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.stack import worker_stack
from tests.support.worker_process import WAVEQUEUE
from worker.constants import QUEUE_NORMAL

T2I = "flux-kontext-max/text-to-image"

#: Short visibility timeout so a killed worker's messages come back within seconds:
#: longest countdown (1 s) + task time limit (5 s) < 8 s.
QUICK_RECOVERY = {
    "WAVEQUEUE_VISIBILITY_TIMEOUT": "8",
    "WAVEQUEUE_TASK_TIME_LIMIT": "5",
    "WAVEQUEUE_CONNECT_TIMEOUT": "1",
    "WAVEQUEUE_READ_TIMEOUT": "1.5",
}


def test_sigkilled_worker_jobs_finish_on_another_worker(tmp_path: Path) -> None:
    with worker_stack(tmp_path, latency="fixed:4", settings=QUICK_RECOVERY) as stack:
        job_ids = [stack.jobs.enqueue(T2I, prompt=f"survivor {i}") for i in range(20)]
        # Every job submitted and waiting on a countdown held by this worker: kill it.
        stack.wait_for_status(job_ids, {"submitted", "processing"}, timeout=30)
        stack.workers[0].kill()
        stack.start_worker()
        records = stack.jobs.wait(job_ids, timeout=60)
        assert [r.status.value for r in records] == ["completed"] * 20
        assert max(stack.input_submissions().values()) == 1
        assert len(stack.input_submissions()) == 20


def test_sigkill_mid_submit_never_submits_twice(tmp_path: Path) -> None:
    """Killed between sending the POST and storing the prediction id: the job's outcome is
    unknown, and under the default policy it ends submit_outcome_unknown once its lease
    runs out; the input is never sent twice."""
    with worker_stack(tmp_path, latency="fixed:1", settings=QUICK_RECOVERY) as stack:
        # Only this job's POST is slow: the kill lands while it is in flight.
        stack.emulator.configure(
            faults={"submit_slow": {"delay": 3, "prompt_contains": "mid-submit victim"}}
        )
        victim = stack.jobs.enqueue(T2I, prompt="mid-submit victim")
        others = [stack.jobs.enqueue(T2I, prompt=f"mid-submit bystander {i}") for i in range(5)]
        stack.wait_for_status([victim], {"submitting"}, timeout=20)
        _wait_until(lambda: sum(stack.input_submissions().values()) >= 1, timeout=20)
        stack.workers[0].kill()  # the victim's POST has reached the emulator, no answer yet
        stack.start_worker()

        record = stack.jobs.wait([victim], timeout=60)[0]
        assert record.status.value == "failed"
        assert record.error is not None and record.error.code == "submit_outcome_unknown"
        assert "an earlier submit attempt did not finish" in record.error.message
        assert "not re-sent" in record.error.message
        for other in stack.jobs.wait(others, timeout=60):
            assert other.status.value in {"completed", "failed"}
            if other.status.value == "failed":
                assert other.error is not None
                assert other.error.code == "submit_outcome_unknown"
        # The emulator created the victim's prediction after the kill; nobody sent it again.
        assert max(stack.input_submissions().values()) == 1
        victims = [
            p for p in stack.emulator.predictions() if p["input"]["prompt"] == "mid-submit victim"
        ]
        assert len(victims) == 1


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_warm_stop_hands_held_countdowns_back(tmp_path: Path) -> None:
    with worker_stack(tmp_path, latency="fixed:6") as stack:
        job_id = stack.jobs.enqueue(T2I, prompt="held countdown")
        stack.wait_for_status([job_id], {"submitted", "processing"}, timeout=20)
        client = stack.jobs.store.client
        # The poll countdown is held, delivered and unacked, by the worker.
        _wait_until(lambda: client.hlen("unacked") == 1 and client.llen(QUEUE_NORMAL) == 0, 20)
        assert stack.workers[0].stop(timeout=30) == 0
        assert client.llen(QUEUE_NORMAL) == 1, "the held poll was not returned to the queue"
        assert client.hlen("unacked") == 0
        stack.start_worker()
        record = stack.jobs.wait([job_id], timeout=30)[0]
        assert record.status.value == "completed"
        assert list(stack.input_submissions().values()) == [1]


@pytest.mark.parametrize(
    ("kind", "expected_posts"),
    [("submit_drop_after_create", 2), ("submit_drop_before_create", 2), ("submit_500", 2)],
)
def test_resubmit_policy_completes_ambiguous_submits(
    tmp_path: Path, kind: str, expected_posts: int
) -> None:
    with worker_stack(tmp_path, settings={"WAVEQUEUE_AMBIGUOUS_SUBMIT": "resubmit"}) as stack:
        stack.emulator.configure(faults={kind: {"count": 1}})
        job_id = stack.jobs.enqueue(T2I, prompt=f"resubmit {kind}")
        record = stack.jobs.wait([job_id], timeout=30)[0]
        assert record.status.value == "completed", record.error
        assert record.attempts == 2
        # Opt-in means accepting this: the input may reach WaveSpeed twice.
        assert list(stack.input_submissions().values()) == [expected_posts]


def _start_worker_without_key(redis_url: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAVESPEED", "WAVEQUEUE"))}
    env["REDIS_URL"] = redis_url
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_worker_refuses_to_start_without_api_key(redis_url: str) -> None:
    result = _start_worker_without_key(redis_url, [WAVEQUEUE, "worker"])
    assert result.returncode == 78
    assert result.stderr.strip() == (
        "wavequeue worker: WAVESPEED_API_KEY is not set: the worker cannot call WaveSpeed"
    )


def test_plain_celery_worker_refuses_too(redis_url: str) -> None:
    celery = str(Path(WAVEQUEUE).with_name("celery"))
    result = _start_worker_without_key(redis_url, [celery, "-A", "worker.app", "worker"])
    assert result.returncode != 0
    assert "WAVESPEED_API_KEY is not set" in result.stderr


def test_worker_refuses_a_visibility_timeout_below_its_countdowns(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "WAVESPEED_API_KEY": "k"}
    env["WAVEQUEUE_VISIBILITY_TIMEOUT"] = "30"  # < 60 s max retry delay + 120 s time limit
    result = subprocess.run(
        [WAVEQUEUE, "worker"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 78
    assert "WAVEQUEUE_VISIBILITY_TIMEOUT" in result.stderr
