"""Enqueue jobs the way a producer does (record first, then the message by name),
without the producer package, so the worker's tests stand on their own."""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import Celery

from worker.celery_config import make_app
from worker.constants import QUEUE_NORMAL, RUN_JOB_TASK
from worker.models import JobRecord, JobStatus, get_endpoint, validate_request
from worker.settings import Settings
from worker.store import JobStore


class Enqueuer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore.from_url(settings.redis_url, record_ttl=settings.record_ttl)
        self.app: Celery = make_app(settings)

    def create(
        self,
        model: str,
        deadline: float | None = None,
        *,
        tenant: str = "default",
        on_budget: str = "wait",
        **fields: Any,
    ) -> str:
        """Write a queued record without sending a message."""
        body = validate_request(
            model, fields, allow_private_image_urls=self.settings.allow_private_image_urls
        )
        now = time.time()
        record = JobRecord(
            id=uuid.uuid4().hex,
            model=get_endpoint(model).model,
            input=body,
            status=JobStatus.QUEUED,
            created_at=now,
            deadline_at=now + (deadline or self.settings.job_deadline),
            tenant=tenant,
            on_budget=on_budget,
        )
        job_id, _ = self.store.create_job(record)
        return job_id

    def send(self, job_id: str, task_id: str | None = None) -> None:
        self.app.send_task(
            RUN_JOB_TASK, kwargs={"job_id": job_id}, queue=QUEUE_NORMAL, task_id=task_id
        )

    def enqueue(self, model: str, **fields: Any) -> str:
        job_id = self.create(model, **fields)
        self.send(job_id)
        return job_id

    def wait(self, job_ids: list[str], timeout: float = 60.0) -> list[JobRecord]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.store.get_many(job_ids)
            if all(r is not None and r.is_terminal for r in records):
                return [r for r in records if r is not None]
            if time.monotonic() > deadline:
                pending = [r.status.value if r else "missing" for r in records]
                raise TimeoutError(f"jobs not terminal after {timeout}s: {pending}")
            time.sleep(0.1)

    def close(self) -> None:
        self.app.close()
        self.store.client.close()
