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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

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
from worker.keep_outputs import parse_s3_location, s3_client
from worker.limits import MAX_OUTPUT_BYTES, megabytes
from worker.models import JobRecord, JobStatus
from worker.outside_text import printable
from worker.safe_fetch import FetchError, fetch
from worker.settings import Settings

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})


class DownloadError(Exception):
    """One output could not be fetched or written."""


def planned_files(found: JobRecord | ChainStatus) -> list[tuple[str, str, str | None]]:
    """(file stem, output URL, its durable copy or None) for every output there is."""
    if isinstance(found, ChainStatus):
        return [
            (
                f"step{step.number}" if index == 1 else f"step{step.number}-{index}",
                url,
                _kept(step.stored_outputs, index),
            )
            for step in found.steps
            for index, url in enumerate(step.outputs, start=1)
        ]
    return [
        (f"output{index}", url, _kept(found.stored_outputs, index))
        for index, url in enumerate(found.outputs, start=1)
    ]


def _kept(stored: Sequence[str], index: int) -> str | None:
    return stored[index - 1] if len(stored) >= index else None


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


def save_kept(
    location: str, stem: str, out_dir: Path, settings: Settings, *, max_bytes: int
) -> Path:
    """Save one output from its durable copy (``file://`` or ``s3://``, as the workers kept
    it: ``worker.keep_outputs``) as ``out_dir/stem.<ext>``; ``DownloadError`` when it
    cannot be read here (another host's directory, no S3 credentials ...)."""
    suffix = Path(urlsplit(location).path).suffix.lower()
    path = out_dir / f"{stem}{suffix if suffix in IMAGE_SUFFIXES else '.png'}"
    partial = out_dir / f".{stem}.part"
    try:
        with partial.open("wb") as sink:
            _read_kept(location, sink, settings, max_bytes)
        partial.replace(path)
        return path
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _read_kept(location: str, sink: BinaryIO, settings: Settings, max_bytes: int) -> None:
    shown = printable(location, 200)
    s3 = parse_s3_location(location)
    if s3 is not None:
        bucket, key = s3
        try:
            client = s3_client(settings.outputs_s3_endpoint)
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            _copy_capped(body, sink, max_bytes, shown)
        except DownloadError:
            raise
        except Exception as exc:  # noqa: BLE001 - boto3's errors: any is "not readable here"
            raise DownloadError(f"{shown}: {type(exc).__name__}: {exc}") from None
        return
    parts = urlsplit(location)
    if parts.scheme != "file":
        raise DownloadError(f"{shown}: not a location this command reads")
    try:
        with Path(unquote(parts.path)).open("rb") as source:
            _copy_capped(source, sink, max_bytes, shown)
    except OSError as exc:
        raise DownloadError(f"{shown}: {exc.strerror or exc}") from None


def _copy_capped(source: Any, sink: BinaryIO, max_bytes: int, shown: str) -> None:
    total = 0
    while chunk := source.read(64 * 1024):
        total += len(chunk)
        if total > max_bytes:
            raise DownloadError(f"{shown}: bigger than {megabytes(max_bytes)}")
        sink.write(chunk)


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
        settings = client.settings
        allow_private = settings.allow_private_image_urls
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    sources: list[str] = []
    for stem, url, kept in planned_files(found):
        if kept is not None:
            # The durable copy first: WaveSpeed deletes its outputs after 7 days.
            try:
                saved.append(save_kept(kept, stem, out_dir, settings, max_bytes=max_bytes))
                sources.append("kept")
                continue
            except (DownloadError, OSError) as exc:
                click.echo(
                    f"warning: {printable(exc, 2000)}; fetching WaveSpeed's URL instead", err=True
                )
        try:
            saved.append(
                save_output(url, stem, out_dir, max_bytes=max_bytes, allow_private=allow_private)
            )
            sources.append("wavespeed")
        except (DownloadError, OSError) as exc:
            click.echo(f"error: {printable(exc, 2000)}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
    note = unfinished_note(found)
    if as_json:
        kind = "chain_id" if isinstance(found, ChainStatus) else "job_id"
        print_json(
            {
                kind: any_id,
                "files": [str(path) for path in saved],
                "sources": sources,
                "incomplete": note,
            }
        )
    else:
        for path in saved:
            click.echo(str(path))
    if note is not None:
        click.echo(f"warning: {note}; saved the outputs there are", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_COMPLETED)
