"""Flower's Celery app, as Flower loads it, gets the workers' Redis facts: Sentinel's
master name in the broker transport options, TLS in ``broker_use_ssl`` (Flower reads
both for its broker page and ``/api/queues/length``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.ops.conftest import FLOWER_CONFIG

_LOADED = """
import json, sys
from flower.command import apply_env_options, apply_options
apply_env_options()
apply_options("flower", sys.argv[1:])
from worker.app import app
print(json.dumps({
    "transport": app.conf.broker_transport_options,
    "use_ssl": app.conf.broker_use_ssl,
    "backend_ssl": app.conf.redis_backend_use_ssl,
}))
"""


def loaded(tmp_path: Path, **env: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "WAVE", "REDIS"))}
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, f"--conf={FLOWER_CONFIG}"],
        env={**base, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_flower_gets_the_sentinel_master(tmp_path: Path) -> None:
    conf = loaded(
        tmp_path,
        REDIS_URL="sentinel://127.0.0.1:1;sentinel://127.0.0.1:2",
        REDIS_SENTINEL_MASTER="jobs",
        WAVEQUEUE_VISIBILITY_TIMEOUT="900",
    )
    assert conf["transport"]["master_name"] == "jobs"
    assert conf["transport"]["visibility_timeout"] == 900
    assert conf["use_ssl"] is None


def test_flower_gets_tls(tmp_path: Path) -> None:
    conf = loaded(tmp_path, REDIS_URL="rediss://127.0.0.1:1/0", REDIS_TLS_CA_FILE="/ca.pem")
    assert conf["use_ssl"] == conf["backend_ssl"] == {"ssl_cert_reqs": 2, "ssl_ca_certs": "/ca.pem"}
