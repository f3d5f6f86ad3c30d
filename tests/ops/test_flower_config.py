"""ops/flower/flowerconfig.py as Flower reads it: env, then command line, then the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from ops.flower.guard import FlowerConfigError, check_exposure, is_loopback, normalize_prefix
from ops.localstack.redis_server import free_port
from tests.ops.conftest import BIN, FLOWER_CONFIG, FLOWER_PASSWORD, FLOWER_USER, start_flower

#: Flower's own option handling, run in a child so tornado's global options stay clean.
_EFFECTIVE = """
import json, sys
from flower.command import apply_env_options, apply_options
from tornado.options import options
apply_env_options()
apply_options("flower", sys.argv[1:])
from worker.app import app
print(json.dumps({
    "address": options.address, "url_prefix": options.url_prefix, "db": options.db,
    "persistent": options.persistent, "max_tasks": options.max_tasks,
    "basic_auth": options.basic_auth, "tasks_columns": options.tasks_columns,
    "transport": app.conf.broker_transport_options,
}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "WAVE"))}
    return {**env, "REDIS_URL": "redis://127.0.0.1:1/0", **extra}


def effective(tmp_path: Path, *argv: str, **env: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _EFFECTIVE, f"--conf={FLOWER_CONFIG}", *argv],
        env=clean_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_flower(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    argv_ = [
        str(BIN / "celery"), "-A", "worker.app", "flower", f"--conf={FLOWER_CONFIG}",
        f"--port={free_port()}", *argv,
    ]  # fmt: skip
    return subprocess.run(
        argv_,
        env=clean_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_defaults_localhost_persistent_bounded_and_the_workers_visibility_timeout(
    tmp_path: Path,
) -> None:
    options = effective(tmp_path, WAVEQUEUE_VISIBILITY_TIMEOUT="900")
    assert options["address"] == "127.0.0.1"
    assert options["persistent"] is True
    assert options["db"] == ".wavequeue/flower/flower.db"
    assert (tmp_path / ".wavequeue" / "flower").is_dir()
    assert options["max_tasks"] == 10_000
    assert options["url_prefix"] == ""
    assert options["tasks_columns"].split(",")[:4] == ["name", "args", "kwargs", "state"]
    assert "routing_key" in options["tasks_columns"]
    assert options["transport"]["visibility_timeout"] == 900


def test_environment_and_command_line_win_over_the_file(tmp_path: Path) -> None:
    options = effective(
        tmp_path,
        "--max_tasks=2000",
        FLOWER_ADDRESS="0.0.0.0",
        FLOWER_BASIC_AUTH="ops:s3cret,viewer:other",
        FLOWER_URL_PREFIX="/ops/flower/",
        FLOWER_DB=str(tmp_path / "state" / "flower.db"),
        FLOWER_MAX_TASKS="500",
    )
    assert options["address"] == "0.0.0.0"
    assert options["basic_auth"] == ["ops:s3cret", "viewer:other"]
    assert options["url_prefix"] == "ops/flower"
    assert options["db"] == str(tmp_path / "state" / "flower.db")
    assert (tmp_path / "state").is_dir()
    assert options["max_tasks"] == 2000
    assert options["transport"]["visibility_timeout"] == 600  # Settings' default


def test_refuses_to_listen_beyond_localhost_without_auth(tmp_path: Path) -> None:
    done = run_flower(tmp_path, "--address=0.0.0.0")
    assert done.returncode == 78
    assert "refusing to listen on 0.0.0.0 without authentication" in done.stderr
    assert "FLOWER_BASIC_AUTH" in done.stderr


def test_refuses_a_malformed_credential_without_echoing_it(tmp_path: Path) -> None:
    done = run_flower(tmp_path, FLOWER_ADDRESS="0.0.0.0", FLOWER_BASIC_AUTH="onlyauser-hunter2")
    assert done.returncode == 78
    assert "user:password" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("address", "local"),
    [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("localhost", True),
     ("", False), ("0.0.0.0", False), ("10.1.2.3", False), ("flower.internal", False)],
)  # fmt: skip
def test_loopback(address: str, local: bool) -> None:
    assert is_loopback(address) is local


def test_exposure_rules() -> None:
    check_exposure("127.0.0.1", [], "")
    check_exposure("0.0.0.0", ["ops:pw"], "")
    check_exposure("0.0.0.0", [], ".*@example\\.com")  # OAuth counts as authentication
    with pytest.raises(FlowerConfigError):
        check_exposure("", [], "")
    with pytest.raises(FlowerConfigError):
        check_exposure("127.0.0.1", ["ops:"], "")  # malformed even where not required


def test_prefix_normalized() -> None:
    assert normalize_prefix("/flower/") == "flower"
    assert normalize_prefix(None) == ""


def test_metrics_ask_for_the_same_login_as_every_page(redis_url: str, tmp_path: Path) -> None:
    flower = start_flower(
        {"REDIS_URL": redis_url}, tmp_path, FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}"
    )
    try:
        anonymous = requests.get(f"{flower.address}/metrics", timeout=10)
        assert anonymous.status_code == 401
        assert "flower_" not in anonymous.text
        wrong = requests.get(f"{flower.address}/metrics", auth=(FLOWER_USER, "nope"), timeout=10)
        assert wrong.status_code == 401
        scraped = requests.get(
            f"{flower.address}/metrics", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10
        )
        assert scraped.status_code == 200 and "flower_" in scraped.text
        # The container's HEALTHCHECK reads this one; it says "OK" and nothing else.
        assert requests.get(f"{flower.address}/healthcheck", timeout=10).text == "OK"
    finally:
        flower.stop()


def test_refuses_to_start_without_a_redis_named(tmp_path: Path) -> None:
    env = {k: v for k, v in clean_env().items() if k != "REDIS_URL"}
    done = subprocess.run(
        [str(BIN / "celery"), "-A", "worker.app", "flower", f"--conf={FLOWER_CONFIG}",
         f"--port={free_port()}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 78
    assert "REDIS_URL is not set" in done.stderr
