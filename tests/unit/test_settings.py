"""Settings come from the environment, validated, with the key kept secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.local_stack import remove_stack_env, write_stack_env
from worker.settings import ENV_VARS, Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.base_url == "https://api.wavespeed.ai"
    assert settings.ambiguous_submit_policy == "fail"
    assert settings.poll_min_interval == 2.0
    settings.validate_timings()


def test_every_variable_maps_to_a_field() -> None:
    assert set(ENV_VARS.values()) <= set(Settings.model_fields)


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {"WAVEQUEUE_POLL_MIN_INTERVAL": "0.5", "WAVEQUEUE_AMBIGUOUS_SUBMIT": "resubmit"}
    )
    assert settings.poll_min_interval == 0.5
    assert settings.ambiguous_submit_policy == "resubmit"


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="WAVEQUEUE_AMBIGUOUS_SUBMIT"):
        Settings.from_env({"WAVEQUEUE_AMBIGUOUS_SUBMIT": "maybe"})


def test_api_key_never_shows() -> None:
    settings = Settings.from_env({"WAVESPEED_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings.model_dump())
    assert settings.require_api_key() == "sk-very-secret"


def test_missing_api_key_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="WAVESPEED_API_KEY is not set"):
        Settings.from_env({}).require_api_key()


def test_visibility_timeout_must_cover_countdowns() -> None:
    settings = Settings.from_env({"WAVEQUEUE_VISIBILITY_TIMEOUT": "60"})
    with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT"):
        settings.validate_timings()


def test_repr_never_shows_the_redis_password() -> None:
    settings = Settings(redis_url="redis://:hunter2-secret@redis:6379/0")
    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings)


def test_a_failed_job_error_survives_celerys_round_trip() -> None:
    """Celery rebuilds a task's exception from its type and args: a JobFailedError must
    come back as itself (else ``throws=`` misses it and every failure logs a traceback)."""
    from worker.errors import JobFailedError

    error = JobFailedError("j1", "failed", 1403, "boom")
    again = type(error)(*error.args)
    assert (again.job_id, again.status, again.code, again.message) == ("j1", "failed", 1403, "boom")
    assert str(again) == str(error) == "job j1 failed: [1403] boom"


def test_kombus_restore_lock_is_short_lived() -> None:
    from worker.celery_config import transport_options

    assert transport_options(Settings())["unacked_mutex_expire"] <= 30


# No Redis nobody named (issue #12) ------------------------------------------------


def test_without_redis_url_no_redis_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .wavequeue/stack.env here
    settings = Settings.from_env({})
    assert settings.redis_url is None
    with pytest.raises(ConfigError, match=r"REDIS_URL is not set .*wavequeue up"):
        settings.require_redis_url()


def test_a_client_without_redis_url_refuses_before_any_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from producer import JobClient

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="REDIS_URL is not set"):
        JobClient(Settings.from_env({}))
    with pytest.raises(ConfigError, match="REDIS_URL is not set"):
        JobClient()


def test_a_running_local_stack_names_its_redis(tmp_path: Path) -> None:
    path = tmp_path / ".wavequeue" / "stack.env"
    write_stack_env(
        path, {"REDIS_URL": "redis://127.0.0.1:16379/0", "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1"}
    )
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    settings = Settings.from_env({}, stack_env=path)
    assert settings.redis_url == "redis://127.0.0.1:16379/0"
    assert settings.allow_private_image_urls is True
    # The environment wins over the file, and REDIS_URL set means the file is not read.
    assert Settings.from_env(
        {"WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "0"}, stack_env=path
    ).allow_private_image_urls is False  # fmt: skip
    named = Settings.from_env({"REDIS_URL": "redis://elsewhere:6379/1"}, stack_env=path)
    assert named.redis_url == "redis://elsewhere:6379/1"
    assert named.allow_private_image_urls is False
    # A stack that stops removes its file; another process's file is left alone.
    remove_stack_env(path, pid=os.getpid() + 1)
    assert path.exists()
    remove_stack_env(path)
    assert not path.exists()


def test_a_stack_env_left_by_a_dead_stack_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "stack.env"
    write_stack_env(path, {"REDIS_URL": "redis://127.0.0.1:16379/0"}, pid=dead.pid)
    assert Settings.from_env({}, stack_env=path).redis_url is None
