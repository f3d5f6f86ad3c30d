"""Celery chains of ``run_job`` steps, built by task name.

Each step's return value (its first output URL) becomes the next step's
``previous_output``. Used by the producer to start and resume chains, and by the
sweeper to re-send a lost step together with the steps after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, chain

from worker.constants import RUN_JOB_TASK
from worker.messages import run_label


def send_job_chain(
    app: Celery,
    job_ids: Sequence[str],
    queue: str,
    *,
    first_kwargs: Mapping[str, Any] | None = None,
    models: Sequence[str | None] = (),
) -> None:
    """Send ``run_job`` for ``job_ids`` as one chain (a single id: a plain message).
    ``models`` (the steps' models, in order) label the messages for Flower."""
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
    if len(signatures) == 1:
        signatures[0].apply_async()
    else:
        chain(*signatures).apply_async()
