"""worker.redis_connection: one reading of REDIS_URL and friends for every Redis client,
Celery's options included, and messages that never carry a password."""

from __future__ import annotations

import ssl

import pytest
import redis

from worker.celery_config import celery_config
from worker.errors import ConfigError
from worker.redis_connection import (
    RetryWithin,
    describe,
    publish_retry_policy,
    sentinel_target,
    unavailable,
)
from worker.redis_urls import redact
from worker.settings import Settings

SENTINELS = "sentinel://:master-pw@10.0.0.1:26379/2;sentinel://10.0.0.2;sentinel://10.0.0.3:26380"


def sentinel_settings(**extra: str) -> Settings:
    env = {"REDIS_URL": SENTINELS, "REDIS_SENTINEL_MASTER": "jobs", **extra}
    return Settings.from_env(env)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("sentinel://:a@h1:1;sentinel://:b@h2:2", "sentinel://:***@h1:1;sentinel://:***@h2:2"),
        ("Cannot reach redis://:pw@h:1/0: refused.", "Cannot reach redis://:***@h:1/0: refused."),
        ("redis://:p@ss@h:1/0", "redis://:***@h:1/0"),  # an unencoded @ in the password
    ],
)  # fmt: skip
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_sentinel_url_taken_apart() -> None:
    target = sentinel_target(sentinel_settings())
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380))
    assert (target.master, target.db, target.password) == ("jobs", 2, "master-pw")


def test_describe_names_the_redis_without_its_password() -> None:
    plain = Settings(redis_url="redis://:pw@cache:6379/1")
    assert describe(plain) == "Redis at redis://:***@cache:6379/1"
    text = describe(sentinel_settings())
    assert text == (
        "Redis master 'jobs' (Sentinel at 10.0.0.1:26379, 10.0.0.2:26379, 10.0.0.3:26380, db 2)"
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"REDIS_URL": SENTINELS}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_TLS_CA_FILE": "/ca.pem"}, "rediss://"),
        ({"REDIS_URL": "rediss://h/0", "REDIS_TLS_CERT_FILE": "/c.pem"}, "REDIS_TLS_KEY_FILE"),
        ({"WAVEQUEUE_REDIS_SOCKET_TIMEOUT": "0.5"}, "WAVEQUEUE_REDIS_SOCKET_TIMEOUT"),
    ],
)
def test_inconsistent_redis_settings_are_refused(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_celery_gets_sentinel_in_both_transport_option_dicts() -> None:
    config = celery_config(sentinel_settings(REDIS_SENTINEL_PASSWORD="sentinel-pw"))
    assert config["broker_url"] == config["result_backend"] == SENTINELS
    for key in ("broker_transport_options", "result_backend_transport_options"):
        options = config[key]
        assert options["master_name"] == "jobs"
        assert options["sentinel_kwargs"]["password"] == "sentinel-pw"
        assert options["visibility_timeout"] == 600
    assert config["broker_use_ssl"] is None


def test_celery_and_flower_get_tls_from_settings() -> None:
    settings = Settings(
        redis_url="rediss://cache:6380/0",
        redis_tls_ca_file="/etc/ca.pem",
        redis_tls_cert_file="/etc/client.pem",
        redis_tls_key_file="/etc/client.key",
    )
    config = celery_config(settings)
    expected = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/client.pem",
        "ssl_keyfile": "/etc/client.key",
    }
    assert config["broker_use_ssl"] == config["redis_backend_use_ssl"] == expected
    # Without a CA file: the system's CAs, still verified.
    plain_ca = celery_config(Settings(redis_url="rediss://cache:6380/0"))["broker_use_ssl"]
    assert plain_ca == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


@pytest.mark.parametrize("window", [0.0, 2.0, 10.0, 30.0])
def test_publish_retries_fill_about_the_window(window: float) -> None:
    policy = publish_retry_policy(window)
    sleeps, interval = 0.0, policy["interval_start"]
    for _ in range(int(policy["max_retries"])):
        sleeps += interval
        interval = min(interval + policy["interval_step"], policy["interval_max"])
    assert window - 1 <= sleeps <= window + 1 or window < 1


def test_a_nested_retry_keeps_the_outer_deadline() -> None:
    retry = RetryWithin(window=0.0)
    attempts = {"outer": 0, "inner": 0}

    def inner() -> None:
        attempts["inner"] += 1
        raise redis.ConnectionError("refused")

    def outer() -> None:
        attempts["outer"] += 1
        retry.call_with_retry(inner, lambda _error: None)

    with pytest.raises(redis.ConnectionError):
        retry.call_with_retry(outer, lambda _error: None)
    assert attempts == {"outer": 1, "inner": 1}


def test_a_refused_password_is_never_retried() -> None:
    retry = RetryWithin(window=60.0)
    attempts = []

    def login() -> None:
        attempts.append(1)
        raise redis.AuthenticationError("invalid username-password pair")

    with pytest.raises(redis.AuthenticationError):
        retry.call_with_retry(login, lambda _error: None)
    assert attempts == [1]


def test_unavailable_says_what_to_check() -> None:
    plain = Settings(redis_url="redis://:pw@cache:6379/0", redis_retry_window=7)
    down = str(unavailable(plain, redis.ConnectionError("Error 111 connecting to cache:6379.")))
    assert down.startswith("cannot reach Redis at redis://:***@cache:6379/0 after retrying for 7s")
    assert "check that Redis is up and REDIS_URL" in down
    auth = str(unavailable(plain, redis.AuthenticationError("invalid username-password pair")))
    assert "refused the credentials" in auth
    sentinel = str(unavailable(sentinel_settings(), redis.ConnectionError("No master found")))
    assert "REDIS_SENTINEL_MASTER" in sentinel
    for text in (down, auth, sentinel):
        assert "pw@" not in text
        assert "\n" not in text
