"""The raw Celery floor's app configuration (no module-level app: the harness imports
this to send floor jobs without building the worker's app). See ``floor_app``."""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.celery_config import celery_config, transport_options
from worker.settings import Settings

FLOOR_QUEUE = "bench.floor"
FLOOR_TASK = "bench.floor_job"

#: wavequeue's settings that shape what one task costs Celery, copied as they are.
_SAME_AS_WAVEQUEUE = (
    "task_serializer",
    "accept_content",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "task_ignore_result",
    "worker_prefetch_multiplier",
    "worker_eta_task_limit",
    "worker_send_task_events",
    "task_send_sent_event",
    "broker_connection_retry_on_startup",
)


def make_floor_app(settings: Settings) -> Celery:
    wavequeue = celery_config(settings)
    app = Celery("bench-floor")
    app.conf.update(
        {name: wavequeue[name] for name in _SAME_AS_WAVEQUEUE},
        broker_url=settings.redis_url,
        broker_transport_options=transport_options(settings),
        task_default_queue=FLOOR_QUEUE,
    )
    return app


def floor_job_kwargs(runs: int, countdown: float) -> dict[str, Any]:
    return {"runs_left": runs, "countdown": countdown}
