"""``wavequeue download``: save a job's or a chain's output images to a folder.

WaveSpeed deletes outputs after 7 days; this is the way to keep them. Files are
named by position: a job's ``output1.png``, ``output2.png``...; a chain's
``step1.png``, ``step2.png``... (a step with several outputs adds ``step1-2.png``).

An output URL is whatever the record lists, so it is fetched as outside input
(``worker.safe_fetch``): http(s) only, a public host unless
``WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS`` allows private ones (the same rule as input
images, checked again after each redirect and on every address the name resolves
to), streamed to disk and refused past ``--max-bytes``. A file is written under a
temporary name and renamed once complete: a refused or broken download leaves
nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import mimetypes
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from producer.chain_status import ChainState, ChainStatus
from producer.commands.common import (
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    json_option,
    make_client,
    print_json,
    reports_errors,
)
from worker.image_refs import data_uri_bytes
from worker.limits import MAX_OUTPUT_BYTES, megabytes
from worker.models import JobRecord, JobStatus
from worker.outside_text import printable
from worker.safe_fetch import FetchError, fetch

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})


class DownloadError(Exception):
    """One output could not be fetched or written."""


def planned_files(found: JobRecord | ChainStatus) -> list[tuple[str, str]]:
    """(file stem, output URL) for every output there is, in order."""
    if isinstance(found, ChainStatus):
        return [
            (f"step{step.number}" if index == 1 else f"step{step.number}-{index}", url)
            for step in found.steps
            for index, url in enumerate(step.outputs, start=1)
        ]
    return [(f"output{index}", url) for index, url in enumerate(found.outputs, start=1)]


def save_output(url: str, stem: str, out_dir: Path, *, max_bytes: int, allow_private: bool) -> Path:
    """Save one output as ``out_dir/stem.<ext>`` (the extension from the URL, else the
    type); ``DownloadError`` when it is refused or fails, with nothing left behind."""
    partial = out_dir / f".{stem}.part"
    try:
        if url[:5].lower() == "data:":
            suffix = _save_data_uri(url, stem, partial, max_bytes)
        else:
            with partial.open("wb") as sink:
                fetched = fetch(
                    url,
                    sink,
                    max_bytes=max_bytes,
                    allow_private=allow_private,
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                )
            suffix = _suffix(fetched.url, fetched.content_type, stem)
        path = out_dir / f"{stem}{suffix}"
        partial.replace(path)
        return path
    except FetchError as exc:
        raise DownloadError(f"{stem}: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _save_data_uri(uri: str, stem: str, partial: Path, max_bytes: int) -> str:
    head, _, payload = uri.partition(",")
    size = data_uri_bytes(uri)
    if size > max_bytes:
        raise DownloadError(
            f"{stem}: the output is a data URI of {megabytes(size)}; the limit is "
            f"{megabytes(max_bytes)}"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DownloadError(f"{stem}: the output is a data URI that is not base64") from None
    partial.write_bytes(data)
    mime = head.removeprefix("data:").split(";")[0].lower()
    return _image_suffix(mime) or ".png"


def _suffix(url: str, content_type: str, stem: str) -> str:
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return suffix
    if (
        content_type
        and not content_type.startswith("image/")
        and content_type
        not in (
            "application/octet-stream",
            "binary/octet-stream",
        )
    ):
        raise DownloadError(f"{stem}: the output is {printable(content_type, 80)}, not an image")
    return _image_suffix(content_type) or ".png"


def _image_suffix(mime: str) -> str | None:
    suffix = mimetypes.guess_extension(mime) if mime.startswith("image/") else None
    return suffix if suffix in IMAGE_SUFFIXES else None


def unfinished_note(found: JobRecord | ChainStatus) -> str | None:
    """Why some outputs may be missing, or None when everything completed."""
    if isinstance(found, ChainStatus):
        if found.state is ChainState.COMPLETED:
            return None
        return f"chain {found.id} is {found.state.value} at step {found.current_step}"
    if found.status is JobStatus.COMPLETED:
        return None
    return f"job {found.id} is {found.status.value}"


@click.command("download")
@click.argument("any_id", metavar="ID")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to save into (created if missing).",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=MAX_OUTPUT_BYTES,
    show_default=True,
    help="Refuse an output bigger than this many bytes (nothing of it is kept).",
)
@json_option
@reports_errors
def download_command(any_id: str, out_dir: Path, max_bytes: int, as_json: bool) -> None:
    """Save the outputs of a job or a chain into --out. Exits 0 when every output of a
    completed job or chain was saved, 1 when it did not complete (what exists is
    saved), 4 when a download failed or was refused."""
    with make_client() as client:
        found = client.lookup(any_id)
        allow_private = client.settings.allow_private_image_urls
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    for stem, url in planned_files(found):
        try:
            saved.append(
                save_output(url, stem, out_dir, max_bytes=max_bytes, allow_private=allow_private)
            )
        except (DownloadError, OSError) as exc:
            click.echo(f"error: {printable(exc, 2000)}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
    note = unfinished_note(found)
    if as_json:
        print_json({"id": any_id, "files": [str(path) for path in saved], "incomplete": note})
    else:
        for path in saved:
            click.echo(str(path))
    if note is not None:
        click.echo(f"warning: {note}; saved the outputs there are", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_COMPLETED)
