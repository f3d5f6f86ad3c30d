"""Inline image bytes are never kept in job records (issue #15 item 3): a local file or a
data URI goes under its own key with a TTL, the request holds a marker, and the worker
uploads the image to WaveSpeed before the first submit, keeping only the download URL.
Before: a 9.9 MB data URI made a 9.9 MB ``input`` in the record, read back by every
``status``, for as long as the record lived."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import redis
import requests
from click.testing import CliRunner
from PIL import Image

from producer import JobClient
from producer.cli import main
from tests.producer.conftest import STACK_SETTINGS, ProducerStack
from tests.support.records import put_in_status
from worker.models import JobStatus

MARKER = "wavequeue-inline:"


def _photo(path: Path, size: tuple[int, int] = (640, 480)) -> bytes:
    Image.effect_noise(size, 80).convert("RGB").save(path, format="PNG")  # noise: big file
    return path.read_bytes()


def _keys_holding(raw: redis.Redis, needle: bytes) -> list[str]:
    """Every key whose value (string, or any hash field) contains ``needle``."""
    found = []
    for key in raw.scan_iter():
        kind = raw.type(key)
        if kind == b"string":
            values = [raw.get(key) or b""]
        elif kind == b"hash":
            values = list(raw.hgetall(key).values())
        else:
            continue
        if any(needle in value for value in values):
            found.append(key.decode())
    return found


def test_the_record_holds_a_marker_and_the_image_has_its_own_key(
    redis_url: str, tmp_path: Path
) -> None:
    data = _photo(tmp_path / "photo.png")
    payload = base64.b64encode(data)
    raw = redis.Redis.from_url(redis_url)
    with JobClient(redis_url=redis_url, local_images="any", job_deadline=600) as client:
        job_id = client.edit(tmp_path / "photo.png", "make it blue")
        record = client.get(job_id)

    assert record.input["image"].startswith(MARKER)
    image_key = "wq:inline:" + record.input["image"].removeprefix(MARKER)
    assert _keys_holding(raw, payload[1000:1100]) == [image_key]
    assert raw.get(image_key) == b"data:image/png;base64," + payload
    assert 600 < raw.ttl(image_key) <= 600 + 24 * 3600
    request = raw.get(f"wq:job:{job_id}:request") or b""
    assert len(request) < 300, len(request)
    raw.close()


def test_a_batch_line_with_a_big_data_uri_keeps_the_request_small(
    redis_url: str, tmp_path: Path
) -> None:
    data_uri = (
        "data:image/png;base64,"
        + base64.b64encode(_photo(tmp_path / "big.png", (1600, 1200))).decode()
    )
    lines = [
        {"kind": "edit", "prompt": "line one", "image": data_uri},
        {"kind": "multi", "prompt": "line two", "images": [data_uri, "https://example.com/a.png"]},
    ]
    batch = tmp_path / "jobs.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    result = CliRunner().invoke(
        main, ["batch", str(batch), "--no-wait", "--json"], env={"REDIS_URL": redis_url}
    )

    assert result.exit_code == 0, result.stderr
    assert len(data_uri) > 4_000_000
    raw = redis.Redis.from_url(redis_url)
    for job in json.loads(result.stdout)["jobs"]:
        request = raw.get(f"wq:job:{job['job_id']}:request") or b""
        assert len(request) < 400, len(request)
        state = raw.hgetall(f"wq:job:{job['job_id']}")
        assert state[b"inline_images"] == b"1"
        assert sum(len(value) for value in state.values()) < 600
    assert len(list(raw.scan_iter("wq:inline:*"))) == 2
    raw.close()


def test_the_worker_uploads_the_image_and_keeps_only_its_url(
    stack: ProducerStack, tmp_path: Path
) -> None:
    _photo(tmp_path / "photo.png", (64, 48))
    with JobClient(STACK_SETTINGS, redis_url=stack.redis_url, local_images="any") as client:
        job_id = client.edit(tmp_path / "photo.png", "inline: make it blue")
        record = client.wait(job_id, timeout=60)

    assert record.status is JobStatus.COMPLETED, record.error
    stats = stack.emulator.stats()
    assert stats["uploads"] == 1
    media_url = record.input["image"]
    assert media_url.startswith(stack.emulator.base_url + "/media/")
    sent = [p for p in stack.emulator.predictions() if p["input"]["prompt"].startswith("inline:")]
    assert [p["input"]["image"] for p in sent] == [media_url]
    raw = redis.Redis.from_url(stack.redis_url)
    assert list(raw.scan_iter("wq:inline:*")) == []
    raw.close()
    # What was uploaded is the file, byte for byte.
    with Image.open(io.BytesIO(requests.get(media_url, timeout=10).content)) as uploaded:
        assert uploaded.size == (64, 48)


def test_retry_chain_resumes_from_an_image_that_was_never_uploaded(
    redis_url: str, tmp_path: Path
) -> None:
    """A first step that failed before its upload (timed out in a backlog): the retried
    step takes the stored image again, under a key of its own."""
    _photo(tmp_path / "start.png", (32, 24))
    with JobClient(redis_url=redis_url, local_images="any") as client:
        chain_id = client.chain(tmp_path / "start.png", ["add a hat", "make it sepia"])
        first = client.chain_status(chain_id).steps[0]
        put_in_status(
            client.store,
            first.job_id,
            "timed_out",
            error={"code": "deadline_exceeded", "message": "-"},
        )
        new_first = client.retry_chain(chain_id)
        old_marker = client.get(first.job_id).input["image"]
        new_marker = client.get(new_first).input["image"]

    assert old_marker.startswith(MARKER) and new_marker.startswith(MARKER)
    assert new_marker != old_marker
    raw = redis.Redis.from_url(redis_url)
    assert raw.get("wq:inline:" + new_marker.removeprefix(MARKER)) == raw.get(
        "wq:inline:" + old_marker.removeprefix(MARKER)
    )
    raw.close()
