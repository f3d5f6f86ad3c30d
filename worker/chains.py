"""Celery chains of ``run_job`` steps, and callback deliveries, sent by task name.

Each step's return value (its first output URL) becomes the next step's
``previous_output``. Used by the producer to start and resume chains, and by the
sweeper to re-send a lost step together with the steps after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, chain

from worker.constants import DELIVER_CALLBACK_TASK, QUEUE_CALLBACKS, RUN_JOB_TASK


def send_job_chain(
    app: Celery,
    job_ids: Sequence[str],
    queue: str,
    *,
    first_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Send ``run_job`` for ``job_ids`` as one chain (a single id: a plain message)."""
    signatures = [
        app.signature(
            RUN_JOB_TASK,
            kwargs={"job_id": job_id, **(first_kwargs if index == 0 and first_kwargs else {})},
            queue=queue,
            # Results live in the job record: never subscribe to a result channel per send.
            ignore_result=True,
        )
        for index, job_id in enumerate(job_ids)
    ]
    if len(signatures) == 1:
        signatures[0].apply_async()
    else:
        chain(*signatures).apply_async()


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
