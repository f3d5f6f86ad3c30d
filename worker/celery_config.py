"""The Celery configuration, as pure functions of ``Settings``.

No module-level state: importing this reads no environment, so a producer can
build an app to send by task name without touching the worker's settings (or
its API key). ``worker.app`` builds the worker's own app from it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

# Imported for their effects: every process that sends run_job slims its messages
# (a signal handler), and kombu reuses one redis-py client per channel.
import worker.kombu_clients
import worker.messages  # noqa: F401
from worker.constants import (
    DELIVER_CALLBACK_TASK,
    QUEUE_CALLBACKS,
    QUEUE_NORMAL,
    RUN_JOB_TASK,
    WORKER_QUEUES,
)
from worker.redis_connection import celery_options
from worker.settings import Settings

#: Seconds kombu's unacked-restore lock lives; one restore pass takes milliseconds.
UNACKED_MUTEX_EXPIRE = 10


def transport_options(settings: Settings) -> dict[str, Any]:
    """Broker and result-backend transport options; identical on purpose (see DESIGN.md).

    Besides the visibility timeout: Redis socket timeouts, and with Sentinel the
    ``master_name`` and ``sentinel_kwargs`` that both the broker and the result backend
    need (``worker.redis_connection.celery_options``).
    """
    # kombu sweeps for expired unacked messages every interval x throttle seconds;
    # with a short visibility timeout the default (10 x 10 s) would recover far too late.
    sweep = max(1, min(10, int(settings.visibility_timeout // 10)))
    return {
        "visibility_timeout": int(settings.visibility_timeout),
        "unacked_restore_interval": sweep,
        "unacked_restore_throttle": 1,
        # kombu's restore lock (300 s by default) outlives a Redis that stops while it is
        # held: no worker could restore anything for five minutes (seen in the chaos suite).
        "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE,
        **celery_options(settings)["transport_options"],
    }


def declared_queues() -> tuple[Queue, ...]:
    """Every queue a worker consumes, each with the exchange and routing key of its own
    name: what celery creates for a queue named on first use (``task_create_missing_queues``)."""
    return tuple(
        Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]
        for name in WORKER_QUEUES
    )


def celery_config(settings: Settings) -> dict[str, Any]:
    options = transport_options(settings)
    redis_options = celery_options(settings)
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": options,
        "result_backend_transport_options": dict(options),
        # TLS (rediss://) from REDIS_TLS_*: the broker, the result backend and Flower
        # (which reads broker_use_ssl for its broker page and queue lengths).
        "broker_use_ssl": redis_options["broker_use_ssl"],
        "redis_backend_use_ssl": redis_options["redis_backend_use_ssl"],
        "redis_socket_connect_timeout": redis_options["redis_socket_connect_timeout"],
        "redis_socket_timeout": redis_options["redis_socket_timeout"],
        # A send during a Redis outage retries for about WAVEQUEUE_REDIS_RETRY_WINDOW.
        "broker_connection_timeout": redis_options["broker_connection_timeout"],
        "task_publish_retry_policy": redis_options["task_publish_retry_policy"],
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle payload from a compromised producer would be code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # A message is acked when the run ends, and put back if the worker dies mid-run.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # The job record is the result; Celery results would only grow Redis.
        "task_ignore_result": True,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(1.0, settings.task_time_limit - 5),
        # Countdown messages sit in worker memory until due; bound them.
        "worker_eta_task_limit": settings.eta_task_limit,
        "worker_prefetch_multiplier": 2,
        # Flower sees tasks only through events, and turns them on by itself (a
        # remote enable_events every 5 s) while it runs. Off otherwise: about eight
        # PUBLISHes and a millisecond of worker CPU per job that nobody reads. (A producer's
        # app sends task-sent events only with WAVEQUEUE_PRODUCER_SENT_EVENTS.)
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        # On a warm stop, finish runs in progress briefly, then hand held countdown
        # messages back to the queue (kombu restores unacked messages at shutdown).
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        # Every queue declared: Flower's broker page and /api/queues/length list the
        # queues of the workers it knows, else these; without them, a Flower started
        # before the workers (or with none online) never shows wavequeue.high (nor
        # wavequeue.callbacks). Same exchange and routing key as the queues celery would
        # create on first use.
        "task_queues": declared_queues(),
        "task_default_queue": QUEUE_NORMAL,
        "task_routes": {
            RUN_JOB_TASK: {"queue": QUEUE_NORMAL},
            DELIVER_CALLBACK_TASK: {"queue": QUEUE_CALLBACKS},
        },
        "worker_hijack_root_logger": True,
        "include": ["worker.tasks"],
    }


def make_app(settings: Settings) -> Celery:
    app = Celery("wavequeue")
    app.conf.update(celery_config(settings))
    return app
