"""Messages lost for good (a worker killed between kombu's BRPOP and its unacked
bookkeeping) are found by the sweeper: overdue jobs are re-sent, late ones time out."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.support.records import put_in_status
from tests.support.stack import SECRET_API_KEY, WorkerStack, worker_stack
from worker.models import JobStatus

T2I = "flux-kontext-max/text-to-image"
EDIT = "flux-kontext-pro"
QUICK_SWEEP = {
    "WAVEQUEUE_VISIBILITY_TIMEOUT": "8",
    "WAVEQUEUE_TASK_TIME_LIMIT": "5",
    "WAVEQUEUE_CONNECT_TIMEOUT": "1",
    "WAVEQUEUE_READ_TIMEOUT": "1.5",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    with worker_stack(tmp_path_factory.mktemp("sweeper"), settings=QUICK_SWEEP) as running:
        yield running


def _submit_directly(stack: WorkerStack, prompt: str) -> str:
    """A prediction that exists on the (emulated) WaveSpeed side."""
    response = requests.post(
        f"{stack.env['WAVESPEED_BASE_URL']}/api/v3/wavespeed-ai/{T2I}",
        json={"prompt": prompt},
        headers={"Authorization": f"Bearer {SECRET_API_KEY}"},
        timeout=5,
    )
    return str(response.json()["data"]["id"])


def _as_if_its_poll_message_was_lost(stack: WorkerStack, job_id: str, prediction_id: str) -> None:
    overdue = time.time() - 60
    put_in_status(
        stack.jobs.store,
        job_id,
        JobStatus.SUBMITTED,
        prediction_id=prediction_id,
        submitted_at=overdue,
        poll_seq=1,
        next_run_at=overdue,
    )


def test_a_lost_poll_message_is_resent(stack: WorkerStack) -> None:
    job_id = stack.jobs.create(T2I, prompt="lost poll")
    _as_if_its_poll_message_was_lost(stack, job_id, _submit_directly(stack, "lost poll"))
    record = stack.jobs.wait([job_id], timeout=30)[0]
    assert record.status == "completed"
    assert stack.jobs.store.client.zscore("wq:next_run", job_id) is None


def test_a_lost_chain_step_resumes_the_rest_of_the_chain(stack: WorkerStack) -> None:
    first = stack.jobs.create(T2I, prompt="chain start")
    second = stack.jobs.create(EDIT, prompt="chain edit", image="https://placeholder.invalid/x.png")
    store = stack.jobs.store
    # Step 2 waits for step 1's output, as the producer writes chain steps.
    body = store.get(second).input
    store.transition(
        second,
        expect={"status": "queued"},
        updates={
            "input": {k: v for k, v in body.items() if k != "image"},
            "awaiting_image": "1",
            "chain_id": "c1",
            "step": 2,
        },
    )
    store.transition(first, expect={"status": "queued"}, updates={"chain_id": "c1", "step": 1})
    store.create_chain("c1", [first, second], metadata={})
    _as_if_its_poll_message_was_lost(stack, first, _submit_directly(stack, "chain start"))

    records = stack.jobs.wait([first, second], timeout=40)
    assert [r.status.value for r in records] == ["completed", "completed"]
    assert records[1].input["image"] == records[0].outputs[0]


def test_a_job_whose_message_never_came_times_out(stack: WorkerStack) -> None:
    job_id = stack.jobs.create(T2I, deadline=1, prompt="never sent")
    record = stack.jobs.wait([job_id], timeout=20)[0]
    assert record.status == "timed_out"
    assert record.error is not None and record.error.code == "deadline_exceeded"


def _counter(stack: WorkerStack, name: str) -> int:
    return stack.jobs.store.counters().get((name, ()), 0)


def test_only_overdue_jobs_are_resent(stack: WorkerStack) -> None:
    resent_before = _counter(stack, "sweeper_resent")
    job_ids = [stack.jobs.enqueue(T2I, prompt=f"on time {i}") for i in range(5)]
    passes_before = _counter(stack, "sweeper_passes")
    assert all(r.status == "completed" for r in stack.jobs.wait(job_ids, timeout=20))
    # Two full passes that began after every job was enqueued have looked at them all.
    deadline = time.monotonic() + 30
    while _counter(stack, "sweeper_passes") < passes_before + 2:
        assert time.monotonic() < deadline, "the sweeper made no passes"
        time.sleep(0.1)
    assert _counter(stack, "sweeper_resent") == resent_before
    log = stack.workers[0].log()
    assert not any(f"job {job_id}: its message is overdue" in log for job_id in job_ids)


def test_a_lost_first_message_is_resent_once_the_queue_is_empty(stack: WorkerStack) -> None:
    job_id = stack.jobs.create(T2I, prompt="first message lost")  # record only, no message
    record = stack.jobs.wait([job_id], timeout=30)[0]
    assert record.status == "completed"
    assert max(stack.input_submissions().values()) == 1
