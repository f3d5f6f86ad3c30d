"""Input over a limit, through the CLI: one ``error:`` line per problem naming the
field and the limit, exit 2, and Redis untouched (no record, no message). No worker
is needed: nothing may get as far as one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from producer.cli import main
from tests.support.images import write_bomb_png

Run = Callable[..., Result]
WAVEQUEUE = str(Path(sys.executable).parent / "wavequeue")


@pytest.fixture
def wavequeue(redis_url: str) -> Run:
    """``wavequeue ARGS...`` in-process; private image URLs not allowed (the default)."""
    runner = CliRunner()

    def run(*args: str) -> Result:
        env = {"REDIS_URL": redis_url, "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": ""}
        return runner.invoke(main, list(args), env=env)

    return run


def _assert_redis_untouched(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    try:
        assert raw.dbsize() == 0, sorted(raw.scan_iter())
    finally:
        raw.close()


def _errors(result: Result) -> list[str]:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines), lines
    return lines


def test_an_image_url_on_a_private_host_is_refused_by_the_cli(
    wavequeue: Run, redis_url: str
) -> None:
    result = wavequeue("edit", "http://127.0.0.1:6379/", "make it blue")
    assert _errors(result) == [
        "error: image: private address 127.0.0.1 not allowed: loopback "
        "(set WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS=1 for in-house image hosts)"
    ]
    several = wavequeue(
        "edit", "http://0x7f.1/a.png", "http://169.254.169.254/", "file:///etc/passwd", "merge"
    )
    assert _errors(several) == [
        "error: images[0]: private address 127.0.0.1 (written '0x7f.1') not allowed: "
        "loopback (set WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS=1 for in-house image hosts)",
        "error: images[1]: link-local address 169.254.169.254 not allowed",
        "error: images[2]: scheme 'file' not allowed: an image is an http(s) URL "
        "or a data:image/...;base64 URI",
    ]
    _assert_redis_untouched(redis_url)


def test_prompt_and_metadata_over_their_limits(wavequeue: Run, redis_url: str) -> None:
    result = wavequeue("generate", "x" * 4001, "--metadata", json.dumps({"note": "y" * 4096}))
    assert sorted(_errors(result)) == [
        "error: metadata: must be at most 4096 bytes as JSON",
        "error: prompt: String should have at most 4000 characters",
    ]
    _assert_redis_untouched(redis_url)


def test_a_decompression_bomb_is_one_line_from_the_real_cli(tmp_path: Path, redis_url: str) -> None:
    """The installed command in its own process: no traceback and no Pillow warning,
    for a bomb Pillow refuses (20,000 x 20,000) and one it only warns about (12,000^2)."""
    write_bomb_png(tmp_path / "huge.png", 20_000, 20_000)
    write_bomb_png(tmp_path / "big.png", 12_000, 12_000)
    done = subprocess.run(
        [WAVEQUEUE, "edit", "huge.png", "big.png", "combine them"],
        cwd=tmp_path,
        env={"REDIS_URL": redis_url, "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: images[0]: huge.png has more than 40,000,000 pixels; FLUX Kontext works "
        "at about 1 megapixel, so scale it down first",
        "error: images[1]: big.png has more than 40,000,000 pixels (12000 x 12000); FLUX "
        "Kontext works at about 1 megapixel, so scale it down first",
    ]
    _assert_redis_untouched(redis_url)


def _request(prompt: str) -> str:
    return json.dumps({"kind": "text-to-image", "prompt": prompt})


def test_batch_over_its_line_count_enqueues_nothing(
    wavequeue: Run, redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(_request(f"picture {n}") for n in range(4)) + "\n\n")
    assert _errors(wavequeue("batch", str(path), "--max-lines", "3", "--no-wait")) == [
        f"error: {path}: more than 3 requests; split the file (or raise --max-lines)"
    ]
    _assert_redis_untouched(redis_url)
    done = wavequeue("batch", str(path), "--max-lines", "4", "--no-wait", "--json")
    assert done.exit_code == 0, done.stderr
    assert len(json.loads(done.stdout)["jobs"]) == 4


def test_batch_with_an_overlong_line_or_a_private_url_enqueues_nothing(
    wavequeue: Run, redis_url: str, tmp_path: Path
) -> None:
    """A 17 MB line is reported by number without being parsed; the lines after it
    are still checked."""
    overlong = json.dumps(
        {"kind": "edit", "prompt": "x", "image": "data:image/png;base64," + "A" * 17_000_000}
    )
    private = json.dumps({"kind": "edit", "prompt": "x", "image": "http://10.0.0.5/a.png"})
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join([_request("fine"), overlong, private, _request("fine too")]))
    assert _errors(wavequeue("batch", str(path))) == [
        "error: line 2: longer than 16.1 MB (one request per line; pass big images by URL "
        "or file path, or raise --max-line-bytes)",
        "error: line 3: image: private address 10.0.0.5 not allowed: private range "
        "(set WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS=1 for in-house image hosts)",
    ]
    _assert_redis_untouched(redis_url)


def test_batch_over_its_total_size_enqueues_nothing(
    wavequeue: Run, redis_url: str, tmp_path: Path
) -> None:
    """All requests wait in memory until the file has passed: their total is capped
    (256 MB; lowered here so the test stays small)."""
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(_request(f"{n} " + "p" * 500) for n in range(10)))
    errors = _errors(wavequeue("batch", str(path), "--max-bytes", "2000"))
    assert len(errors) == 1
    assert errors[0].startswith("error: line 4: the requests so far hold more than")
    _assert_redis_untouched(redis_url)


def _data_uri_of(path: Path, mime: str = "image/png") -> str:
    import base64

    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def test_a_data_uri_is_held_to_the_same_pixel_limit_and_must_decode(
    wavequeue: Run, redis_url: str, tmp_path: Path
) -> None:
    """Issue #15 item 2: a file was read from its header, a data URI not at all: a
    48 KB bomb or a 12,000 x 12,000 picture given inline went on to WaveSpeed."""
    bomb = _data_uri_of(write_bomb_png(tmp_path / "bomb.png", 20_000, 20_000))
    big = _data_uri_of(write_bomb_png(tmp_path / "big.png", 12_000, 12_000))
    garbage = "data:image/png;base64," + "QUJD" * 100  # valid base64, not an image

    result = wavequeue("edit", bomb, big, garbage, "merge them")

    lines = _errors(result)
    assert lines[0].startswith("error: images[0]: the data URI has more than 40,000,000 pixels")
    assert lines[1].startswith(
        "error: images[1]: the data URI has more than 40,000,000 pixels (12000 x 12000)"
    )
    assert lines[2] == "error: images[2]: the data URI is not an image file Pillow can read"
    _assert_redis_untouched(redis_url)


def test_batch_line_size_and_total_are_overridable(
    wavequeue: Run, redis_url: str, tmp_path: Path
) -> None:
    """Issue #15 item 3: the line cap and the total cap are flags, like --max-lines (an
    operator may allow only small lines: requests that pass images by URL or path)."""
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join([_request("short"), _request("p" * 300), _request("also short")]))
    assert _errors(wavequeue("batch", str(path), "--max-line-bytes", "200", "--no-wait")) == [
        "error: line 2: longer than 200 bytes (one request per line; pass big images by URL "
        "or file path, or raise --max-line-bytes)",
    ]
    totals = _errors(wavequeue("batch", str(path), "--max-bytes", "300", "--no-wait"))
    assert len(totals) == 1
    assert totals[0].startswith("error: line 2: the requests so far hold more than 300 bytes")
    _assert_redis_untouched(redis_url)
    done = wavequeue("batch", str(path), "--max-line-bytes", "400", "--no-wait", "--json")
    assert done.exit_code == 0, done.stderr
    assert len(json.loads(done.stdout)["jobs"]) == 3
