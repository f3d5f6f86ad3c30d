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
from worker.malloc_tuning import limit_malloc_arenas, start_trimming
from worker.memory_trace import start as start_memory_trace
from worker.reconnect import RestoreHeldMessages
from worker.recycle import RecycleLimits, Recycler
from worker.run_cleanup import drop_tracebacks
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
    "drop_tracebacks",  # imported for its signal handler: a run that raised leaves no cycle
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


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _watch_long_runs(sender: object = None, **_: object) -> None:
    # Before the pool's threads exist: their arenas are the ones capped.
    limit_malloc_arenas(settings.malloc_arenas)
    start_trimming(settings.malloc_trim_interval)
    if settings.memory_trace_dir:
        start_memory_trace(settings.memory_trace_dir, "worker", sites=settings.memory_trace_sites)
    limits = RecycleLimits(settings.recycle_after_runs, settings.recycle_above_rss_mb)
    if not limits.enabled:
        return
    if "prefork" in str(getattr(sender, "pool_cls", "")):
        # SIGTERM from a pool child would stop only that child: prefork has its own knob.
        sys.stderr.write("wavequeue worker: recycle limits apply to the threads and solo pools\n")
        return
    recycler = Recycler(limits)

    def _run_ended(**_: object) -> None:
        recycler.run_ended()

    # weak=False: the closure has no other reference and must live as long as the worker.
    signals.task_postrun.connect(_run_ended, weak=False)
