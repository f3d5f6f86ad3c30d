"""Celery chains of ``run_job`` steps, and callback deliveries, sent by task name.

Each step's return value (its first output URL) becomes the next step's
``previous_output``. Used by the producer to start and resume chains, by the
sweeper to re-send a lost step together with the steps after it, and by the
webhook receiver to continue a chain whose step its callback completed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, chain

from worker.constants import DELIVER_CALLBACK_TASK, QUEUE_CALLBACKS, RUN_JOB_TASK
from worker.errors import JobNotFoundError
from worker.messages import run_label
from worker.models import JobState
from worker.store import JobStore


def send_job_chain(
    app: Celery,
    job_ids: Sequence[str],
    queue: str,
    *,
    first_kwargs: Mapping[str, Any] | None = None,
    countdown: float | None = None,
    models: Sequence[str | None] = (),
) -> None:
    """Send ``run_job`` for ``job_ids`` as one chain (a single id: a plain message), the
    first to run in ``countdown`` seconds (None: now). ``models`` (the steps' models, in
    order) label the messages for Flower (``worker.messages.run_label``)."""
    signatures = []
    for index, job_id in enumerate(job_ids):
        kwargs = {"job_id": job_id, **(first_kwargs if index == 0 and first_kwargs else {})}
        model = models[index] if index < len(models) else None
        label = run_label(job_id, int(kwargs.get("poll_seq", 0)), model)
        signatures.append(
            app.signature(
                RUN_JOB_TASK,
                kwargs=kwargs,
                queue=queue,
                # Results live in the job record: never subscribe to a result channel per send.
                ignore_result=True,
                **label,
            )
        )
    options = {} if not countdown else {"countdown": countdown}
    if len(signatures) == 1:
        signatures[0].apply_async(**options)
    else:
        chain(*signatures).apply_async(**options)


def send_job_and_rest(
    app: Celery,
    store: JobStore,
    state: JobState,
    first_kwargs: Mapping[str, Any],
    *,
    countdown: float | None = None,
) -> None:
    """Send a job's message again; a chain step takes the steps after it along (what the
    sweeper and a job given a submission slot send)."""
    job_ids = [state.id]
    models: list[str | None] = [state.model]
    if state.chain_id and state.step:
        # If the chain record expired, finish this step at least.
        with contextlib.suppress(JobNotFoundError):
            later = store.get_chain(state.chain_id).step_job_ids[state.step :]
            job_ids += later
            models += _models(store, later)
    send_job_chain(
        app,
        job_ids,
        state.priority.queue,
        first_kwargs=first_kwargs,
        countdown=countdown,
        models=models,
    )


def continue_chain(app: Celery, store: JobStore, state: JobState) -> bool:
    """After a chain step completed outside its own message (its webhook ended it), send
    the steps after it, the first with this step's output, exactly as the step's own run
    would have (Celery's chain callback). False when there is nothing to continue."""
    if not (state.chain_id and state.step and state.outputs):
        return False
    try:
        rest = store.get_chain(state.chain_id).step_job_ids[state.step :]
    except JobNotFoundError:
        return False  # expired: nothing left to run
    if not rest:
        return False
    first_kwargs = {"previous_output": state.outputs[0]}
    send_job_chain(
        app, rest, state.priority.queue, first_kwargs=first_kwargs, models=_models(store, rest)
    )
    return True


def _models(store: JobStore, job_ids: Sequence[str]) -> list[str | None]:
    """The steps' models, for their labels (None where a record is gone)."""
    return [state.model if state else None for state in store.get_states(job_ids)]


def send_callback_deliveries(app: Celery, members: Sequence[str]) -> None:
    """Send ``deliver_callback`` for each outbox member (``job:<id>``, ``chain:<id>``)."""
    with app.producer_or_acquire() as producer:
        for member in members:
            app.send_task(
                DELIVER_CALLBACK_TASK,
                kwargs={"target": member},
                queue=QUEUE_CALLBACKS,
                ignore_result=True,
                producer=producer,
            )
