"""Which local files a ``JobClient`` reads (issue #15 item 5). Any other string is read as
a path: right for the CLI, whose user types their own file names; wrong for a backend that
passes its users' input on. So the Python API refuses local paths unless told otherwise
(``local_images="any"``, or a directory to confine them to, or WAVEQUEUE_LOCAL_IMAGES),
and the CLI reads any file unless WAVEQUEUE_LOCAL_IMAGES says otherwise."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from PIL import Image

from producer import JobClient, ValidationError
from producer.cli import main
from worker.errors import ConfigError
from worker.settings import Settings


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def _nothing_stored(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    try:
        assert raw.dbsize() == 0
    finally:
        raw.close()


def test_the_python_api_refuses_local_paths_by_default(redis_url: str, tmp_path: Path) -> None:
    secret = _png(tmp_path / "private" / "passport.png")
    with JobClient(redis_url=redis_url) as client:
        for source in (str(secret), secret, "~/.ssh/id_rsa", "../../etc/passwd"):
            with pytest.raises(ValidationError) as refused:
                client.edit(source, "make it blue")
            assert refused.value.problems["image"].startswith(
                "local file paths are not accepted by this client"
            )
        with pytest.raises(ValidationError) as several:
            client.multi_edit(["https://example.com/a.png", str(secret)], "merge")
        assert list(several.value.problems) == ["images[1]"]
    _nothing_stored(redis_url)


def test_any_local_file_when_the_client_allows_it(redis_url: str, tmp_path: Path) -> None:
    image = _png(tmp_path / "cat.png")
    with JobClient(redis_url=redis_url, local_images="any") as client:
        job_id = client.edit(str(image), "make it blue")
        assert client.get(job_id).status.value == "queued"


def test_a_directory_confines_local_files(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "uploads"
    inside = _png(root / "user1" / "cat.png")
    outside = _png(tmp_path / "elsewhere" / "dog.png")
    (root / "escape.png").symlink_to(outside)
    monkeypatch.chdir(tmp_path)
    with JobClient(redis_url=redis_url, local_images=root) as client:
        # Relative paths start at the directory; absolute ones must lie inside it.
        assert client.edit("user1/cat.png", "blue")
        assert client.edit(str(inside), "blue")
        assert client.edit(inside, "blue")
        refusals = {
            "../elsewhere/dog.png": "is outside",
            str(outside): "is outside",
            "escape.png": "is outside",  # a symlink that leads out
            "user1/../../elsewhere/dog.png": "is outside",
            "user1/missing.png": "not an http(s) URL, a data: URI or an existing file",
            str(tmp_path / "elsewhere" / "missing.png"): "is outside",  # no existence oracle
        }
        for source, why in refusals.items():
            with pytest.raises(ValidationError) as refused:
                client.edit(source, "blue")
            assert why in refused.value.problems["image"], (source, refused.value.problems)


def test_the_setting_comes_from_the_environment_and_is_checked(tmp_path: Path) -> None:
    assert Settings.from_env({}).local_images is None
    assert Settings.from_env({"WAVEQUEUE_LOCAL_IMAGES": "any"}).local_images == "any"
    assert Settings.from_env({"WAVEQUEUE_LOCAL_IMAGES": str(tmp_path)}).local_images == str(
        tmp_path
    )
    with pytest.raises(ConfigError, match="WAVEQUEUE_LOCAL_IMAGES"):
        Settings.from_env({"WAVEQUEUE_LOCAL_IMAGES": "relative/dir"})
    with pytest.raises(ConfigError, match="is not a directory"):
        JobClient(Settings(local_images=str(tmp_path / "missing")))


def test_the_cli_reads_any_file_unless_the_setting_says_otherwise(
    redis_url: str, tmp_path: Path
) -> None:
    image = _png(tmp_path / "cat.png")
    runner = CliRunner()
    env = {"REDIS_URL": redis_url}
    assert runner.invoke(main, ["edit", str(image), "blue"], env=env).exit_code == 0

    refused = runner.invoke(
        main, ["edit", str(image), "blue"], env={**env, "WAVEQUEUE_LOCAL_IMAGES": "refuse"}
    )
    assert refused.exit_code == 2
    assert "local file paths are not accepted by this client" in refused.stderr

    confined = runner.invoke(
        main,
        ["edit", str(image), "blue"],
        env={**env, "WAVEQUEUE_LOCAL_IMAGES": str(tmp_path / "other")},
    )
    assert confined.exit_code == 78, confined.stderr
    assert "WAVEQUEUE_LOCAL_IMAGES" in confined.stderr
    os.makedirs(tmp_path / "other", exist_ok=True)
    confined = runner.invoke(
        main,
        ["edit", str(image), "blue"],
        env={**env, "WAVEQUEUE_LOCAL_IMAGES": str(tmp_path / "other")},
    )
    assert confined.exit_code == 2
    assert "is outside" in confined.stderr
