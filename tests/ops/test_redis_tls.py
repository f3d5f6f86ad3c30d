"""Redis over TLS (``rediss://``), configured by REDIS_TLS_* settings and nothing in the URL.

A redis-server that speaks TLS only, with a CA and certificates the fixture makes with
openssl: a job runs end to end (producer API, real worker, the emulator), the exporter
reads it, Flower's broker page and ``/api/queues/length`` answer (Flower reads
``broker_use_ssl``), and a client without the CA gets one clear line.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from producer import JobClient
from tests.ops.conftest import (
    BIN,
    FLOWER_PASSWORD,
    FLOWER_USER,
    scrape,
    start_exporter,
    start_flower,
    without_key,
)
from tests.support.emulator import EmulatorHandle
from tests.support.redis_topologies import RedisProcess, TlsFiles, tls_redis
from tests.support.stack import FAST_SETTINGS, SECRET_API_KEY
from tests.support.worker_process import WorkerProcess
from worker.constants import QUEUE_NORMAL
from worker.errors import BrokerUnavailableError
from worker.models import JobStatus
from worker.settings import Settings

pytestmark = pytest.mark.timeout(180)

AUTH = (FLOWER_USER, FLOWER_PASSWORD)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisProcess, TlsFiles]]:
    with tls_redis(tmp_path) as served:
        yield served


@pytest.fixture
def tls_env(
    tls_server: tuple[RedisProcess, TlsFiles], secret_emulator: EmulatorHandle
) -> dict[str, str]:
    server, files = tls_server
    return {
        "REDIS_URL": f"rediss://127.0.0.1:{server.port}/0",
        "REDIS_TLS_CA_FILE": str(files.ca),
        "WAVESPEED_BASE_URL": secret_emulator.base_url,
        "WAVESPEED_API_KEY": SECRET_API_KEY,
        **FAST_SETTINGS,
    }


def test_a_job_runs_end_to_end_over_tls_and_flower_sees_the_queues(
    tls_env: dict[str, str], tmp_path: Path
) -> None:
    worker = WorkerProcess(tls_env, tmp_path / "worker.log", concurrency=4).start()
    flower = start_flower(tls_env, tmp_path, FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}")
    exporter = start_exporter(tls_env, tmp_path)
    try:
        with JobClient(Settings.from_env(tls_env)) as client:
            job_id = client.text_to_image("a lighthouse behind glass", seed=5)
            record = client.wait(job_id, timeout=60)
        assert record.status is JobStatus.COMPLETED
        assert record.outputs

        done = subprocess.run(
            [str(BIN / "wavequeue"), "generate", "a lighthouse over TLS", "--wait", "--json"],
            env=without_key(tls_env), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

        lengths = requests.get(f"{flower.address}/api/queues/length", auth=AUTH, timeout=30)
        assert lengths.status_code == 200, flower.log_tail(50)
        assert QUEUE_NORMAL in {queue["name"] for queue in lengths.json()["active_queues"]}
        broker = requests.get(f"{flower.address}/broker", auth=AUTH, timeout=30)
        assert broker.status_code == 200
        assert QUEUE_NORMAL in broker.text

        assert "wavequeue_redis_up 1.0" in scrape(exporter.address)
    finally:
        exporter.stop()
        flower.stop()
        worker.stop()


def test_without_the_ca_a_client_gets_one_clear_line(
    tls_server: tuple[RedisProcess, TlsFiles], tmp_path: Path
) -> None:
    server, _ = tls_server
    settings = Settings(redis_url=f"rediss://127.0.0.1:{server.port}/0", redis_retry_window=0)
    with JobClient(settings) as client, pytest.raises(BrokerUnavailableError) as caught:
        client.get("any-job")
    message = str(caught.value)
    assert "\n" not in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "REDIS_TLS_CA_FILE" in message


def test_client_certificates_come_from_settings(tmp_path: Path) -> None:
    with tls_redis(tmp_path, client_certificates=True) as (server, files):
        url = f"rediss://127.0.0.1:{server.port}/0"
        with_certificate = Settings(
            redis_url=url,
            redis_tls_ca_file=str(files.ca),
            redis_tls_cert_file=str(files.client_cert),
            redis_tls_key_file=str(files.client_key),
        )
        with JobClient(with_certificate) as client:
            job_id = client.text_to_image("a signed request", seed=1)  # store and broker
            assert client.get(job_id).status is JobStatus.QUEUED
            assert client.store.client.llen(QUEUE_NORMAL) == 1

        without = Settings(redis_url=url, redis_tls_ca_file=str(files.ca), redis_retry_window=0)
        with JobClient(without) as client, pytest.raises(BrokerUnavailableError) as caught:
            client.get(job_id)
        assert "REDIS_TLS_CERT_FILE" in str(caught.value)
