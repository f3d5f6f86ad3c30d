"""Task events cost a PUBLISH per run: off unless asked for (Flower turns them on)."""

from __future__ import annotations

from worker.celery_config import celery_config
from worker.settings import Settings


def test_task_events_are_off_by_default() -> None:
    config = celery_config(Settings())
    assert config["worker_send_task_events"] is False
    assert config["task_send_sent_event"] is False


def test_the_setting_turns_them_on_from_the_start() -> None:
    config = celery_config(Settings.from_env({"WAVEQUEUE_TASK_EVENTS": "1"}))
    assert config["worker_send_task_events"] is True
    assert config["task_send_sent_event"] is True
