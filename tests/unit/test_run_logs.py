"""Celery's per-run INFO lines are off at INFO, kept at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from worker.run_logs import PER_RUN_LOGGERS, quiet_per_run_logs


@pytest.fixture(autouse=True)
def _restore_levels() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in PER_RUN_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_info_keeps_only_their_warnings() -> None:
    quiet_per_run_logs(logging.INFO)
    for name in PER_RUN_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.WARNING)


def test_debug_logs_every_run() -> None:
    for name in PER_RUN_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    quiet_per_run_logs(logging.DEBUG)
    for name in PER_RUN_LOGGERS:
        assert logging.getLogger(name).level == logging.NOTSET
