"""Cancel and deadlines through real worker processes and the emulator over HTTP: the
emulator's own counts say what was submitted; the queues and the workers' held messages
draining say every message (duplicates included) has run."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from producer import JobClient, TextToImage
from producer.cli import main
from tests.integration.test_callbacks import CALLBACK_SETTINGS, SECRET
from tests.support.callback_receiver import CallbackReceiver
from tests.support.stack import WorkerStack, worker_stack
from worker.constants import QUEUE_NORMAL, RUN_JOB_TASK, WORKER_QUEUES
from worker.settings import Settings
from worker.store import counter_field

T2I = "flux-kontext-max/text-to-image"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    with worker_stack(tmp_path_factory.mktemp("cancel"), settings=CALLBACK_SETTINGS) as running:
        yield running


@pytest.fixture
def client(stack: WorkerStack) -> Iterator[JobClient]:
    stack.emulator.reset()
    stack.emulator.configure(latency="fixed:0.3", faults={})
    with JobClient(Settings.from_env(stack.env)) as jobs:
        yield jobs


def drained(stack: WorkerStack, timeout: float = 60) -> None:
    """Every message sent so far has run and been acked: the queues are empty and the
    workers hold nothing (a countdown message is held, unacked, until it runs)."""
    redis = stack.jobs.store.client
    deadline = time.monotonic() + timeout
    while any(redis.llen(queue) for queue in WORKER_QUEUES) or redis.hlen("unacked"):
        assert time.monotonic() < deadline, "messages still waiting or held"
        time.sleep(0.05)


def submissions(stack: WorkerStack) -> int:
    return int(stack.emulator.stats()["submissions"]["total"])


def counter(stack: WorkerStack, name: str, **labels: str) -> int:
    value = stack.jobs.store.client.hget("wq:counters", counter_field(name, **labels))
    return int(value or 0)


def send_copies(stack: WorkerStack, job_id: str, poll_seqs: tuple[int, ...]) -> None:
    for poll_seq in poll_seqs:
        stack.jobs.app.send_task(
            RUN_JOB_TASK, kwargs={"job_id": job_id, "poll_seq": poll_seq}, queue=QUEUE_NORMAL
        )


def test_a_job_cancelled_before_it_is_submitted_is_never_submitted(
    stack: WorkerStack, client: JobClient
) -> None:
    job_id = stack.jobs.create(T2I, prompt="never sent")  # recorded; its message not yet out
    record = client.cancel(job_id)
    assert record.status == "cancelled"
    assert record.error is not None and "nothing was sent" in record.error.message
    # Its message, and duplicates of it, run afterwards.
    send_copies(stack, job_id, (0, 0, 1))
    other = stack.jobs.create(T2I, prompt="cancelled from the CLI")
    runner = CliRunner()
    shown = runner.invoke(main, ["cancel", other, "no-such-id"], env=stack.env)
    assert shown.exit_code == 2, shown.output
    assert f"job {other} cancelled" in shown.stdout
    assert "no-such-id" in shown.stderr
    stack.jobs.send(other)
    drained(stack)

    assert submissions(stack) == 0
    assert client.get(job_id).status == "cancelled"
    waited = runner.invoke(main, ["wait", other], env=stack.env)
    assert waited.exit_code == 5, waited.output  # exit code 5: cancelled
    again = runner.invoke(main, ["cancel", other, "--json"], env=stack.env)
    assert again.exit_code == 0 and '"status": "cancelled"' in again.stdout


def test_a_job_cancelled_at_wavespeed_ends_at_once_and_its_result_is_ignored(
    stack: WorkerStack, client: JobClient
) -> None:
    stack.emulator.configure(latency="fixed:2")
    completed_before = counter(stack, "jobs_completed", model=T2I)
    with CallbackReceiver(SECRET).running() as receiver:
        job_id = client.text_to_image("cancel me while I run", callback_url=receiver.url)
        stack.wait_for_status([job_id], {"submitted", "processing"}, timeout=30)

        record = client.cancel(job_id)

        assert record.status == "cancelled"
        assert record.prediction_id is not None
        assert record.error is not None and "may still run and be billed" in record.error.message
        # WaveSpeed finishes the prediction anyway; the polls and copies that follow
        # find the job ended.
        prediction = stack.emulator.predictions()[0]
        assert prediction["id"] == record.prediction_id
        deadline = time.monotonic() + 30
        while stack.emulator.predictions()[0]["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        send_copies(stack, job_id, (1, 2, 3, 0))
        receiver.wait_until(lambda: bool(receiver.delivered()), 30, "the callback")
        drained(stack)

        final = client.get(job_id)
        assert final.status == "cancelled" and final.outputs == []
        assert final.completed_at == record.completed_at  # nothing wrote to it since
        assert submissions(stack) == 1
        assert counter(stack, "jobs_completed", model=T2I) == completed_before
        assert counter(stack, "jobs_cancelled", model=T2I, stage="submitted") >= 1
        assert receiver.delivered() == {f"job_{job_id}": 1}
        assert receiver.all()[0].body["type"] == "job.cancelled"
        assert client.cancel(job_id).completed_at == record.completed_at  # idempotent


def test_cancelling_a_chain_cancels_its_remaining_steps(
    stack: WorkerStack, client: JobClient
) -> None:
    stack.emulator.configure(latency="fixed:2")
    chain_id = client.chain(TextToImage("a red bicycle"), ["make it blue", "add snow"])
    first = client.chain_status(chain_id).steps[0].job_id
    stack.wait_for_status([first], {"submitted", "processing"}, timeout=30)

    status = client.cancel_chain(chain_id)

    assert status.state == "cancelled" and status.current_step == 1
    assert [step.status for step in status.steps] == ["cancelled"] * 3
    for step in status.steps:  # copies of each step's message, as a redelivery would send
        send_copies(stack, step.job_id, (0, 1))
    drained(stack)
    assert submissions(stack) == 1  # the first step only: the rest were never submitted
    assert client.wait_chain(chain_id, timeout=5).state == "cancelled"
    waited = CliRunner().invoke(main, ["wait", chain_id], env=stack.env)
    assert waited.exit_code == 5, waited.output
    assert client.cancel_chain(chain_id).state == "cancelled"  # idempotent


def test_a_job_still_queued_past_its_deadline_is_never_submitted(
    stack: WorkerStack, client: JobClient
) -> None:
    job_id = stack.jobs.create(T2I, deadline=1, prompt="too late to start")
    deadline_at = client.get(job_id).deadline_at
    while stack.jobs.store.clock() <= deadline_at:  # Redis time, as the workers judge it
        time.sleep(0.05)
    stack.jobs.send(job_id)
    record = client.wait(job_id, timeout=30)
    drained(stack)

    assert record.status == "timed_out"
    assert record.error is not None and record.error.code == "deadline_exceeded"
    assert record.attempts == 0
    assert submissions(stack) == 0
