"""`wavequeue worker` exits non-zero when the worker stops on an error.

A supervisor (systemd, an on-failure restart policy, a chaos check) reads the exit
status to tell a crash from a requested stop. The error provoked here is a real one
that operators meet: the broker stays away longer than the worker was told to keep
reconnecting (``broker_connection_max_retries``, passed as celery accepts settings on
its command line), so celery gives up with "Unrecoverable error". Through
``app.worker_main`` the command exited 0 after that. A requested stop (SIGTERM)
exits 0 (``test_worker_recovery.test_warm_stop_hands_held_countdowns_back``) and a
refused configuration 78 (the tests beside it).
"""

from __future__ import annotations

from pathlib import Path

from ops.localstack.redis_server import RedisServer
from tests.support.worker_process import WorkerProcess


def test_worker_that_gives_up_on_the_broker_exits_non_zero(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    env = {
        "REDIS_URL": private_redis.url,
        "WAVESPEED_API_KEY": "k",
        "WAVESPEED_BASE_URL": "http://127.0.0.1:9",
    }
    worker = WorkerProcess(
        env, tmp_path / "worker.log", extra_args=("broker_connection_max_retries=1",)
    ).start()
    assert worker.process is not None

    private_redis.stop()  # and never back

    status = worker.process.wait(timeout=120)
    log = worker.log()
    assert "Connection to broker lost" in log
    assert "Unrecoverable error" in log
    assert status == 1, log[-2000:]
