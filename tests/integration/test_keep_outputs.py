"""Keeping outputs: real workers, the emulator over HTTP, a directory and a real
S3-compatible server (moto's, over HTTP, in a process of its own).

A job that keeps its outputs completes only once they are copied: the bytes kept must be
the bytes WaveSpeed served. A copy that fails (the bucket is missing) leaves the job
``persisting`` and is tried again on its own schedule, never by submitting again; once
the bucket exists, the job completes. ``wavequeue download`` prefers the kept copy, so it
still works after WaveSpeed (here: the emulator's reset) has deleted its outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests

from ops.exporter.snapshot import read_snapshot
from producer import JobClient
from tests.support.s3_server import CREDENTIALS, S3Server, running_s3_server
from tests.support.stack import WorkerStack, worker_stack
from worker.models import JobRecord, JobStatus
from worker.settings import Settings

WAVEQUEUE = str(Path(sys.executable).with_name("wavequeue"))
BUCKET = "kept-images"
PREFIX = "tests/"


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    with running_s3_server(tmp_path / "moto.log") as server:
        yield server


def _client(stack: WorkerStack) -> JobClient:
    return JobClient(Settings.from_env(stack.env))


def _served(url: str) -> bytes:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def _download(stack: WorkerStack, job_id: str, out: Path) -> dict[str, object]:
    done = subprocess.run(
        [WAVEQUEUE, "download", job_id, "--out", str(out), "--json"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _wait_for(client: JobClient, job_id: str, check: object, timeout: float = 60) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(job_id)
        if check(record):  # type: ignore[operator]
            return record
        assert time.monotonic() < deadline, f"not reached: {record}"
        time.sleep(0.1)


def test_outputs_are_kept_in_a_directory_byte_for_byte(tmp_path: Path) -> None:
    kept_dir = tmp_path / "kept"
    settings = {"WAVEQUEUE_OUTPUTS_DIR": str(kept_dir)}
    with worker_stack(tmp_path, settings=settings) as stack, _client(stack) as client:
        kept_id = client.text_to_image("a kept lighthouse", keep_outputs=True)
        plain_id = client.text_to_image("a lighthouse left at WaveSpeed")
        kept, plain = client.wait_all([kept_id, plain_id], timeout=60)
        assert kept.status is JobStatus.COMPLETED and plain.status is JobStatus.COMPLETED
        assert plain.stored_outputs == []  # not asked, and not the workers' default
        (location,) = kept.stored_outputs
        path = Path(unquote(urlsplit(location).path))
        assert path == kept_dir.resolve() / kept_id / "output1.png"
        assert path.read_bytes() == _served(kept.outputs[0])  # WaveSpeed's URL is kept too
        assert kept.persist_attempts == 0 and kept.persist_error is None

        # WaveSpeed deletes its outputs (the emulator's reset): the kept copy is downloaded.
        stack.emulator.reset()
        assert requests.get(kept.outputs[0], timeout=10).status_code == 404
        got = _download(stack, kept_id, tmp_path / "out")
        assert got["sources"] == ["kept"]
        assert Path(str(got["files"][0])).read_bytes() == path.read_bytes()  # type: ignore[index]


def test_the_workers_default_keeps_outputs_unless_a_job_declines(tmp_path: Path) -> None:
    settings = {"WAVEQUEUE_KEEP_OUTPUTS": "1", "WAVEQUEUE_OUTPUTS_DIR": str(tmp_path / "kept")}
    with worker_stack(tmp_path, settings=settings) as stack, _client(stack) as client:
        default_id = client.text_to_image("kept by default")
        declined_id = client.text_to_image("not kept", keep_outputs=False)
        default, declined = client.wait_all([default_id, declined_id], timeout=60)
        assert len(default.stored_outputs) == 1 and declined.stored_outputs == []


def test_outputs_are_kept_in_s3_byte_for_byte(tmp_path: Path, s3_server: S3Server) -> None:
    s3 = s3_server.client()
    s3.create_bucket(Bucket=BUCKET)
    settings = {
        "WAVEQUEUE_OUTPUTS_S3_BUCKET": BUCKET,
        "WAVEQUEUE_OUTPUTS_S3_ENDPOINT": s3_server.endpoint,
        "WAVEQUEUE_OUTPUTS_S3_PREFIX": PREFIX,
        **CREDENTIALS,
    }
    with worker_stack(tmp_path, settings=settings) as stack, _client(stack) as client:
        job_id = client.text_to_image("a lighthouse kept in a bucket", keep_outputs=True)
        record = client.wait(job_id, timeout=60)
        assert record.status is JobStatus.COMPLETED
        key = f"{PREFIX}{job_id}/output1.png"
        assert record.stored_outputs == [f"s3://{BUCKET}/{key}"]
        stored = s3.get_object(Bucket=BUCKET, Key=key)
        assert stored["Body"].read() == _served(record.outputs[0])
        assert stored["ContentType"] == "image/png"

        stack.emulator.reset()
        got = _download(stack, job_id, tmp_path / "out")
        assert got["sources"] == ["kept"]
        downloaded = Path(str(got["files"][0])).read_bytes()  # type: ignore[index]
        assert downloaded == s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_a_failed_copy_is_retried_without_a_second_submission(
    tmp_path: Path, s3_server: S3Server
) -> None:
    settings = {
        "WAVEQUEUE_OUTPUTS_S3_BUCKET": BUCKET,  # not created yet: every copy fails
        "WAVEQUEUE_OUTPUTS_S3_ENDPOINT": s3_server.endpoint,
        "WAVEQUEUE_PERSIST_RETRY_BASE_DELAY": "0.3",
        "WAVEQUEUE_PERSIST_RETRY_MAX_DELAY": "0.6",
        **CREDENTIALS,
    }
    with worker_stack(tmp_path, settings=settings) as stack, _client(stack) as client:
        job_id = client.text_to_image("a lighthouse waiting for its bucket", keep_outputs=True)
        failing = _wait_for(
            client,
            job_id,
            lambda r: r.status is JobStatus.PERSISTING and r.persist_attempts >= 2,
        )
        assert failing.outputs and failing.stored_outputs == []
        assert failing.persist_error is not None and "NoSuchBucket" in failing.persist_error.message
        # Completed but not kept: the status says so, and so do the metrics.
        shown = subprocess.run(
            [WAVEQUEUE, "status", job_id],
            env={**os.environ, **stack.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "persisting" in shown.stdout and "outputs not yet kept" in shown.stdout
        snapshot = read_snapshot(client.store.client, time.time())
        assert sum(n for (s, _), n in snapshot.live_jobs.items() if s == "persisting") == 1
        counters = snapshot.counters.items()
        failures = sum(v for (name, _), v in counters if name == "persist_failures")
        assert failures >= 2

        s3_server.client().create_bucket(Bucket=BUCKET)
        record = _wait_for(client, job_id, lambda r: r.status is JobStatus.COMPLETED)
        key = f"wavequeue/{job_id}/output1.png"  # the default prefix
        assert record.stored_outputs == [f"s3://{BUCKET}/{key}"]
        assert record.persist_error is None
        body = s3_server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert body == _served(record.outputs[0])
        # One prediction, one submit POST: the copy's retries never went back to WaveSpeed.
        assert record.attempts == 1
        assert list(stack.input_submissions().values()) == [1]
