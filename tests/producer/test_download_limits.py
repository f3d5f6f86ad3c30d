"""``wavequeue download`` treats the URLs a record lists as outside input (issue #15
item 6): http(s) only, a public host unless private ones are allowed, checked again
after redirects, streamed to disk and refused past ``--max-bytes``, nothing left
behind when refused. The records are written straight into the store, as a hostile
or broken WaveSpeed answer would leave them; no worker is needed."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from producer.cli import main
from tests.support.http_files import HttpFiles, http_files
from tests.support.records import put_in_status
from worker.models import JobRecord, JobStatus
from worker.store import JobStore


@pytest.fixture
def server() -> Iterator[HttpFiles]:
    with http_files() as files:
        yield files


def _completed_job(redis_url: str, outputs: list[str]) -> str:
    store = JobStore.from_url(redis_url, record_ttl=3600)
    now = time.time()
    record = JobRecord(
        id=uuid.uuid4().hex,
        model="flux-kontext-max/text-to-image",
        input={"prompt": "x"},
        status=JobStatus.QUEUED,
        created_at=now,
        deadline_at=now + 600,
    )
    job_id, _ = store.create_job(record)
    put_in_status(store, job_id, JobStatus.COMPLETED, prediction_id="p1", outputs=outputs)
    store.client.close()
    return job_id


def _download(redis_url: str, job_id: str, out: Path, *args: str, private: bool) -> Result:
    env = {"REDIS_URL": redis_url, "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1" if private else ""}
    return CliRunner().invoke(main, ["download", job_id, "--out", str(out), *args], env=env)


def test_outputs_are_saved_when_allowed(redis_url: str, server: HttpFiles, tmp_path: Path) -> None:
    server.files["out.png"] = (b"\x89PNG-one", "image/png")
    server.files["served"] = (b"RIFF-two", "image/webp")
    inline = "data:image/jpeg;base64," + base64.b64encode(b"jpeg-three").decode()
    job_id = _completed_job(redis_url, [server.url("out.png"), server.url("served"), inline])

    result = _download(redis_url, job_id, tmp_path / "out", private=True)

    assert result.exit_code == 0, result.stderr
    saved = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()}
    assert saved == {
        "output1.png": b"\x89PNG-one",
        "output2.webp": b"RIFF-two",
        "output3.jpg": b"jpeg-three",
    }


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("http://127.0.0.1:{port}/out.png", "private address 127.0.0.1 not allowed: loopback"),
        ("http://2130706433:{port}/out.png", "private address 127.0.0.1 (written '2130706433')"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("file:///etc/passwd", "scheme 'file' not allowed"),
    ],
)
def test_an_output_the_rule_refuses_is_not_fetched(
    redis_url: str, server: HttpFiles, tmp_path: Path, output: str, why: str
) -> None:
    server.files["out.png"] = (b"png", "image/png")
    port = server.base_url.rsplit(":", 1)[1]
    job_id = _completed_job(redis_url, [output.format(port=port)])

    result = _download(redis_url, job_id, tmp_path / "out", private=False)

    assert result.exit_code == 4, (result.exit_code, result.stdout, result.stderr)
    assert why in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert server.requests["out.png"] == 0
    assert list((tmp_path / "out").iterdir()) == []


def test_a_redirect_to_a_refused_host_saves_nothing(
    redis_url: str, server: HttpFiles, tmp_path: Path
) -> None:
    server.redirects["out.png"] = "http://169.254.169.254/latest/meta-data/iam"
    job_id = _completed_job(redis_url, [server.url("out.png")])

    result = _download(redis_url, job_id, tmp_path / "out", private=True)

    assert result.exit_code == 4
    assert "link-local address 169.254.169.254 not allowed" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_an_output_over_the_size_cap_is_refused_and_nothing_is_left(
    redis_url: str, server: HttpFiles, tmp_path: Path
) -> None:
    server.endless.add("endless.png")
    server.files["big.png"] = (b"x" * 300_000, "image/png")
    endless = _completed_job(redis_url, [server.url("endless.png")])
    declared = _completed_job(redis_url, [server.url("big.png")])

    for job_id in (endless, declared):
        result = _download(
            redis_url, job_id, tmp_path / "out", "--max-bytes", "200000", private=True
        )
        assert result.exit_code == 4, (result.exit_code, result.stderr)
        assert "the limit" in result.stderr and "0.2 MB" in result.stderr
        assert list((tmp_path / "out").iterdir()) == []
    assert server.endless_sent["endless.png"] < 50_000_000


def test_an_output_that_is_not_an_image_is_refused(
    redis_url: str, server: HttpFiles, tmp_path: Path
) -> None:
    server.files["page"] = (b"<html>login</html>", "text/html")
    job_id = _completed_job(redis_url, [server.url("page")])

    result = _download(redis_url, job_id, tmp_path / "out", private=True)

    assert result.exit_code == 4
    assert "the output is text/html, not an image" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []
