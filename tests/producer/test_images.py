"""Local image files become data URIs in the record (the producer holds no API key to
upload with); URLs pass through; size and type are checked before anything is stored."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from producer import JobClient, ValidationError


def _png(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def client(redis_url: str) -> Iterator[JobClient]:
    with JobClient(redis_url=redis_url, max_inline_bytes=2048) as job_client:
        yield job_client


def test_a_local_file_is_stored_as_a_data_uri(client: JobClient, tmp_path: Path) -> None:
    # A misleading extension: the type comes from the content.
    data = _png(tmp_path / "cat.jpg")
    job_id = client.edit(tmp_path / "cat.jpg", "make it blue")
    image = client.get(job_id).input["image"]
    head, _, payload = image.partition(",")
    assert head == "data:image/png;base64"
    assert base64.b64decode(payload) == data


def test_urls_pass_through_unchanged(client: JobClient) -> None:
    job_id = client.multi_edit(
        ["https://example.com/a.png", "https://example.com/b.webp"], "put them side by side"
    )
    assert client.get(job_id).input["images"] == [
        "https://example.com/a.png",
        "https://example.com/b.webp",
    ]


def test_too_big_not_an_image_or_missing_is_refused_before_redis(
    client: JobClient, tmp_path: Path, redis_url: str
) -> None:
    Image.effect_noise((400, 400), 100).save(tmp_path / "big.png")  # noise compresses badly
    (tmp_path / "notes.png").write_text("not an image")
    big_data_uri = "data:image/png;base64," + "A" * 4000

    with pytest.raises(ValidationError) as raised:
        client.multi_edit(
            [tmp_path / "big.png", tmp_path / "notes.png", "missing.png", big_data_uri],
            "combine",
        )
    problems = raised.value.problems
    assert "inlined up to" in problems["images[0]"]
    assert "not an image file" in problems["images[1]"]
    assert "existing file" in problems["images[2]"]
    assert "larger than" in problems["images[3]"]
    assert redis.Redis.from_url(redis_url).dbsize() == 0
