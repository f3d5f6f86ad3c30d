"""Chains against the real stack: outputs flow step to step, a failed step stops the
chain, ``retry_chain`` resumes it, and no finished step ever runs twice."""

from __future__ import annotations

import time
import uuid

import pytest
from celery import chain as celery_chain

from producer import ChainNotRetryableError, ChainState, Edit, JobClient, JobStatus, TextToImage
from tests.producer.conftest import ProducerStack
from tests.support.emulator import input_key
from tests.support.records import put_in_status
from worker.celery_config import make_app
from worker.constants import QUEUE_NORMAL, RUN_JOB_TASK
from worker.models import MODEL_PREFIX, JobRecord


def _inputs_by_prompt(stack: ProducerStack) -> dict[str, dict[str, object]]:
    """Each prediction's input body as the emulator received it, keyed by prompt."""
    return {p["input"]["prompt"]: p for p in stack.emulator.predictions()}


def test_three_step_chain_feeds_each_output_into_the_next_step(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    chain_id = stack_client.chain(
        TextToImage("a red bicycle, chain-three", seed=11),
        ["chain-three: make it blue", Edit("chain-three: add snow", guidance_scale=5.0)],
        metadata={"order": 1},
    )
    status = stack_client.wait_chain(chain_id, timeout=60)

    assert status.state is ChainState.COMPLETED
    assert [step.status for step in status.steps] == [JobStatus.COMPLETED] * 3
    assert status.metadata == {"order": 1}
    received = _inputs_by_prompt(stack)
    second = received["chain-three: make it blue"]["input"]
    third = received["chain-three: add snow"]["input"]
    assert second["image"] == status.steps[0].outputs[0]  # type: ignore[index]
    assert third["image"] == status.steps[1].outputs[0]  # type: ignore[index]
    assert third["guidance_scale"] == 5.0  # type: ignore[index]
    assert status.final_output == status.steps[2].outputs[0]
    # Every step record knows its chain and its place in it.
    records = stack_client.get_many(step.job_id for step in status.steps)
    assert [(r.chain_id, r.step) for r in records] == [(chain_id, 1), (chain_id, 2), (chain_id, 3)]
    # The job records are the results: no Celery result is stored for any run.
    assert list(stack_client.store.client.scan_iter(match="celery-task-meta-*")) == []


def test_failed_step_stops_the_chain_and_retry_resumes_without_redoing_step_one(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    stack.emulator.configure(
        faults={"prediction_failed": {"probability": 1, "prompt_contains": "boom", "code": 1403}}
    )
    chain_id = stack_client.chain(
        TextToImage("a quiet harbour, chain-retry"),
        ["chain-retry: boom, add fireworks", "chain-retry: make it night"],
    )
    failed = stack_client.wait_chain(chain_id, timeout=60)

    assert failed.state is ChainState.FAILED
    assert failed.current_step == 2
    first_output = failed.steps[0].outputs[0]
    assert failed.steps[0].status is JobStatus.COMPLETED
    assert failed.steps[1].status is JobStatus.FAILED
    assert failed.steps[1].error is not None and failed.steps[1].error.code == 1403
    assert failed.steps[2].status is JobStatus.QUEUED  # never ran

    stack.emulator.configure(faults=None)
    new_job_id = stack_client.retry_chain(chain_id)
    # The chain is no longer failed: asking again does not retry twice.
    with pytest.raises(ChainNotRetryableError, match="only a failed chain"):
        stack_client.retry_chain(chain_id)
    done = stack_client.wait_chain(chain_id, timeout=60)

    assert done.state is ChainState.COMPLETED
    assert done.steps[0].outputs[0] == first_output  # kept, not regenerated
    assert done.steps[1].job_id == new_job_id
    assert done.replaced_job_ids == (failed.steps[1].job_id,)
    received = _inputs_by_prompt(stack)
    assert received["chain-retry: boom, add fireworks"]["input"]["image"] == first_output  # type: ignore[index]
    step_one_key = input_key(
        MODEL_PREFIX + "flux-kontext-max/text-to-image",
        stack_client.get(done.steps[0].job_id).input,
    )
    submissions = stack.submissions_per_input()
    assert submissions[step_one_key] == 1


def test_a_redelivered_chain_never_runs_a_finished_step_again(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    chain_id = stack_client.chain(
        TextToImage("a kite, chain-again"), ["chain-again: paint it gold"]
    )
    first_run = stack_client.wait_chain(chain_id, timeout=60)
    assert first_run.state is ChainState.COMPLETED
    before = stack.emulator.stats()["submissions"]["total"]

    # The same Celery chain delivered again (as after a lost ack), with one fresh step
    # appended as a marker: when the marker has run, the redelivered steps have too.
    now = time.time()
    marker = JobRecord(
        id=uuid.uuid4().hex,
        model="flux-kontext-pro",
        input={"prompt": "chain-again: marker"},
        status=JobStatus.QUEUED,
        created_at=now,
        deadline_at=now + 60,
    )
    stack_client.store.create_job(marker, extra={"awaiting_image": "1"})
    app = make_app(stack_client.settings)
    try:
        celery_chain(
            *(
                app.signature(RUN_JOB_TASK, kwargs={"job_id": job_id}, queue=QUEUE_NORMAL)
                for job_id in [*(step.job_id for step in first_run.steps), marker.id]
            )
        ).apply_async()
        marker_done = stack_client.wait(marker.id, timeout=30)
    finally:
        app.close()

    assert marker_done.status is JobStatus.COMPLETED
    # The finished steps answered with their stored outputs ...
    assert marker_done.input["image"] == first_run.steps[-1].outputs[0]
    assert stack_client.chain_status(chain_id).steps == first_run.steps
    # ... and only the marker reached WaveSpeed.
    assert stack.emulator.stats()["submissions"]["total"] == before + 1


def test_retry_also_renews_later_steps_that_ended_while_the_chain_stood_failed(
    stack: ProducerStack, stack_client: JobClient
) -> None:
    stack.emulator.configure(
        faults={"prediction_failed": {"probability": 1, "prompt_contains": "boom"}}
    )
    chain_id = stack_client.chain(
        TextToImage("a windmill, chain-swept"),
        ["chain-swept: boom, add a storm", "chain-swept: make it sepia"],
    )
    failed = stack_client.wait_chain(chain_id, timeout=60)
    assert (failed.state, failed.current_step) == (ChainState.FAILED, 2)
    # Step 3 never ran; past its deadline, the worker's deadline sweep ends it.
    stale_step = failed.steps[2].job_id
    put_in_status(
        stack_client.store,
        stale_step,
        "timed_out",
        error={"code": "deadline_exceeded", "message": "-"},
    )

    stack.emulator.configure(faults=None)
    stack_client.retry_chain(chain_id)
    done = stack_client.wait_chain(chain_id, timeout=60)

    assert done.state is ChainState.COMPLETED
    assert set(done.replaced_job_ids) == {failed.steps[1].job_id, stale_step}
    assert done.steps[0] == failed.steps[0]
    last_input = stack_client.get(done.steps[2].job_id).input
    assert last_input["image"] == done.steps[1].outputs[0]
