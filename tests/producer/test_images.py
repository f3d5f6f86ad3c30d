"""Local image files become data URIs in the record (the producer holds no API key to
upload with); URLs pass through; size, type and pixel count are checked before anything
is stored, from the header only, and every decoding failure is a ValidationError."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from producer import JobClient, ValidationError
from tests.support.images import write_bomb_png
from worker.inline_images import marker_ids, with_images
from worker.settings import Settings


def _png(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def client(redis_url: str) -> Iterator[JobClient]:
    with JobClient(redis_url=redis_url, max_inline_bytes=2048, local_images="any") as job_client:
        yield job_client


def _stored_image(client: JobClient, job_id: str) -> str:
    """The job's image as the worker will upload it: the record holds a marker, the
    bytes are under the marker's own key (worker.inline_images)."""
    body = client.get(job_id).input
    return str(with_images(body, client.store.inline_images(marker_ids(body)))["image"])


def test_a_local_file_is_stored_as_a_data_uri(client: JobClient, tmp_path: Path) -> None:
    # A misleading extension: the type comes from the content.
    data = _png(tmp_path / "cat.jpg")
    job_id = client.edit(tmp_path / "cat.jpg", "make it blue")
    assert client.get(job_id).input["image"].startswith("wavequeue-inline:")
    image = _stored_image(client, job_id)
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


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused_from_the_header(tmp_path: Path, redis_url: str) -> None:
    """A 48 KB PNG of 20,000 x 20,000 (Pillow itself refuses it) and a 12,000 x 12,000
    one (Pillow only warns) are both over the 40 MP limit: a ValidationError naming
    the file, never a Pillow exception; 6,000 x 6,000 (36 MP) is accepted."""
    huge = write_bomb_png(tmp_path / "huge.png", 20_000, 20_000)
    big = write_bomb_png(tmp_path / "big.png", 12_000, 12_000)
    fine = write_bomb_png(tmp_path / "fine.png", 6_000, 6_000)
    assert huge.stat().st_size < 50_000
    with JobClient(redis_url=redis_url, local_images="any") as client:
        with pytest.raises(ValidationError) as raised:
            client.multi_edit([huge, big], "combine")
        problems = raised.value.problems
        assert problems["images[0]"].startswith("huge.png has more than 40,000,000 pixels")
        assert problems["images[1]"].startswith(
            "big.png has more than 40,000,000 pixels (12000 x 12000)"
        )
        with pytest.raises(ValidationError, match=r"huge\.png has more than 40,000,000 pixels"):
            client.chain(huge, ["make it blue"])
        assert redis.Redis.from_url(redis_url).dbsize() == 0

        job_id = client.edit(fine, "make it blue")
        assert _stored_image(client, job_id).startswith("data:image/png;base64,")


def test_every_decoding_failure_is_a_validation_error(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.pcx")
    with (
        JobClient(redis_url=redis_url, local_images="any") as client,
        pytest.raises(ValidationError) as raised,
    ):
        client.multi_edit(
            [tmp_path / "truncated.png", tmp_path / "empty.png", tmp_path / "picture.pcx"],
            "combine",
        )
    problems = raised.value.problems
    assert problems["images[0]"] == "truncated.png is not an image file Pillow can read"
    assert problems["images[1]"] == "empty.png is not an image file Pillow can read"
    assert problems["images[2]"].startswith("picture.pcx is a PCX image; WaveSpeed takes BMP")
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_image_urls_follow_the_url_rule_with_the_clients_setting(redis_url: str) -> None:
    emulator_like = "http://127.0.0.1:8765/media/abc.png"
    with JobClient(redis_url=redis_url, local_images="any") as client:
        for url, why in [
            (emulator_like, "private address 127.0.0.1 not allowed: loopback"),
            ("http://2130706433/", "private address 127.0.0.1"),
            ("http://[::ffff:10.0.0.1]/a.png", "private address 10.0.0.1"),
            ("file:///etc/passwd", "scheme 'file' not allowed"),
            ("FTP://example.com/a.png", "scheme 'ftp' not allowed"),
            ("http://user@example.com/a.png", "user info"),
            ("http://example.com/a\x1b[2J.png", "control character"),
            ("data:image/svg+xml;base64,PHN2Zz4=", "image/svg+xml not accepted"),
        ]:
            with pytest.raises(ValidationError) as raised:
                client.edit(url, "make it blue")
            assert why in raised.value.problems["image"], (url, raised.value.problems)
        assert redis.Redis.from_url(redis_url).dbsize() == 0
    allowed = Settings(allow_private_image_urls=True)
    with JobClient(allowed, redis_url=redis_url, local_images="any") as client:
        job_id = client.edit(emulator_like, "make it blue")
        assert client.get(job_id).input["image"] == emulator_like
        with pytest.raises(ValidationError, match="link-local"):
            client.edit("http://169.254.169.254/latest/meta-data/", "make it blue")
