"""Settings come from the environment, validated, with the key kept secret."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
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
