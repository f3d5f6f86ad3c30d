"""One log line per job, not three per run.

Celery logs every message it receives (``celery.worker.strategy``: "Task ...
received") and the end of every run (``celery.app.trace``: "succeeded in", "retry:")
at INFO. A job runs two or more times (submit, polls), so at INFO that is about six
lines a job, formatted on the worker's hot path; the runner logs the one line that
matters ("job <id> completed in ..."). At INFO and above those two loggers are set
to WARNING, so their warnings and errors still show; at DEBUG (``--loglevel DEBUG``)
every run is logged as Celery does.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

#: Celery's per-run INFO loggers.
PER_RUN_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def quiet_per_run_logs(root_level: int) -> None:
    if root_level > logging.DEBUG:
        for name in PER_RUN_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@signals.after_setup_logger.connect  # type: ignore[untyped-decorator]
def _after_setup_logger(
    logger: logging.Logger | None = None, loglevel: Any = None, **_: Any
) -> None:
    level = logger.getEffectiveLevel() if logger is not None else logging.INFO
    quiet_per_run_logs(level)
