"""A malformed ``REDIS_URL`` is a configuration error like any other setting: one line
that names the variable and the problem, the password masked, exit 78 from every
command (issue #15 item 7: it was a ValueError traceback and exit 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from worker.errors import ConfigError
from worker.settings import Settings

PASSWORD = "s3cret-pw-7f2"
WAVEQUEUE = str(Path(sys.executable).with_name("wavequeue"))

BAD_URLS = [
    (f"redis://:{PASSWORD}@localhost:notaport/0", "port 'notaport' is not a number"),
    (f"redis://:{PASSWORD}@localhost:99999/0", "port 99999 is out of range"),
    (f"redsi://:{PASSWORD}@localhost:6379/0", "scheme 'redsi' is not one of"),
    # redis-py would read a missing host as localhost: the Redis on 127.0.0.1:6379.
    (f"redis://:{PASSWORD}@/0", "has no host"),
    (f"redis://:{PASSWORD}@localhost:6379/zero", "database 'zero' is not a number"),
    (f"sentinel://:{PASSWORD}@s1:26379;sentinel://s2:x", "port 'x' is not a number"),
    ("localhost:6379", "scheme"),
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS, ids=[u[1] for u in BAD_URLS])
def test_a_malformed_redis_url_is_one_config_error_without_the_password(url: str, why: str) -> None:
    env = {"REDIS_URL": url, "REDIS_SENTINEL_MASTER": "mymaster"}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert "REDIS_URL" in message
    assert why in message
    assert PASSWORD not in message
    assert "\n" not in message


def test_settings_built_in_code_never_echo_the_password_either() -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        Settings(redis_url=f"redis://:{PASSWORD}@localhost:notaport/0")
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6380/0",
        "redis://:pw@redis:6379",
        "redis://user:pw@[::1]:6379/3",
        "rediss://:pw@redis.example.com:6380/0",
        "sentinel://:pw@s1:26379/0;sentinel://s2:26379;sentinel://s3",
        "redis://redis",
    ],
)
def test_good_redis_urls_pass(url: str) -> None:
    settings = Settings.from_env({"REDIS_URL": url, "REDIS_SENTINEL_MASTER": "mymaster"})
    assert settings.redis_url == url


@pytest.mark.parametrize("command", [["status", "some-job"], ["generate", "a fox"]])
def test_the_cli_says_one_line_and_exits_78(command: list[str]) -> None:
    done = subprocess.run(
        [WAVEQUEUE, *command],
        env={"REDIS_URL": f"redis://:{PASSWORD}@localhost:notaport/0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: invalid configuration: REDIS_URL: ")
    assert "redis://:***@localhost:notaport/0" in lines[0]
    assert PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        [WAVEQUEUE, "worker"],
        [str(Path(sys.executable).with_name("celery")), "-A", "worker.app", "flower"],
    ],
    ids=["wavequeue-worker", "celery-flower"],
)
def test_the_worker_and_flower_refuse_it_with_78(argv: list[str]) -> None:
    done = subprocess.run(
        argv,
        env={
            "REDIS_URL": f"redis://:{PASSWORD}@localhost:99999/0",
            "WAVESPEED_API_KEY": "k",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert PASSWORD not in done.stderr
