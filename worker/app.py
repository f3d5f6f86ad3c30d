"""The worker's Celery app (``celery -A worker.app``), configured from the environment.

Importing this module reads ``Settings.from_env()`` and builds the app; the
configuration itself lives in ``worker.celery_config`` so that producers can
build an app without this module's import-time work. It does not import the
tasks (the worker loads ``worker.tasks`` through ``include``).
"""

from __future__ import annotations

import sys

from celery import signals

from worker.celery_config import celery_config, make_app, transport_options
from worker.errors import ConfigError
from worker.heartbeat import WorkerHeartbeat
from worker.reconnect import RestoreHeldMessages
from worker.run_logs import PER_RUN_LOGGERS
from worker.settings import Settings
from worker.task_events import UnbufferedTaskEvents

try:
    settings = Settings.from_env()
except ConfigError as _refused:
    # `celery -A worker.app ...` (worker, flower, inspect): one line and EX_CONFIG, as
    # `wavequeue worker` says it, rather than an import traceback.
    sys.stderr.write(f"wavequeue: {_refused}\n")
    sys.stderr.flush()
    raise SystemExit(78) from None
app = make_app(settings)
# After a Redis restart or outage, the messages a worker held (countdowns above all) go
# back to their queue when its consumer reconnects, not after the visibility timeout.
app.steps["consumer"].add(RestoreHeldMessages)
app.steps["consumer"].add(UnbufferedTaskEvents)
# Alive workers are counted from these beats (Flower keeps a killed worker "online").
app.steps["consumer"].add(WorkerHeartbeat)

__all__ = [
    "PER_RUN_LOGGERS",  # imported for its signal handler: one log line per job
    "app",
    "celery_config",
    "make_app",
    "settings",
    "transport_options",
]


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _refuse_to_start_misconfigured(**_: object) -> None:
    # Fail at start, with one line, rather than at the first job.
    try:
        settings.check_for_worker()
    except ConfigError as exc:
        sys.stderr.write(f"wavequeue worker: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(78) from None  # EX_CONFIG
