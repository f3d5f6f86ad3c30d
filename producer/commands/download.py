"""``wavequeue download``: save a job's or a chain's output images to a folder.

WaveSpeed deletes outputs after 7 days; this is the way to keep them. Files are
named by position: a job's ``output1.png``, ``output2.png``...; a chain's
``step1.png``, ``step2.png``... (a step with several outputs adds ``step1-2.png``).
"""

from __future__ import annotations

import base64
import mimetypes
import sys
from pathlib import Path
from urllib.parse import urlparse

import click
import requests

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
from worker.models import JobRecord, JobStatus
from worker.outside_text import printable

DOWNLOAD_TIMEOUT = (5.0, 60.0)
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


def fetch(url: str, stem: str, out_dir: Path, session: requests.Session) -> Path:
    """Save one output as ``out_dir/stem.<ext>``; the extension from the URL, else the type."""
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        mime = head.removeprefix("data:").split(";")[0]
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:
            raise DownloadError(f"{stem}: the output is a data URI that is not base64") from None
        suffix = mimetypes.guess_extension(mime) or ".png"
    else:
        try:
            response = session.get(url, timeout=DOWNLOAD_TIMEOUT)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise DownloadError(f"{stem}: cannot fetch {url}: {exc}") from None
        data = response.content
        suffix = Path(urlparse(url).path).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            suffix = mimetypes.guess_extension(content_type) or ".png"
    path = out_dir / f"{stem}{suffix}"
    path.write_bytes(data)
    return path


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
@json_option
@reports_errors
def download_command(any_id: str, out_dir: Path, as_json: bool) -> None:
    """Save the outputs of a job or a chain into --out. Exits 0 when every output of a
    completed job or chain was saved, 1 when it did not complete (what exists is
    saved), 4 when a download failed."""
    with make_client() as client:
        found = client.lookup(any_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with requests.Session() as session:
        for stem, url in planned_files(found):
            try:
                saved.append(fetch(url, stem, out_dir, session))
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
