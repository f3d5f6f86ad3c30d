"""``wavequeue batch FILE.jsonl``: many jobs from a file, all checked before any is sent.

The file holds one request per line, a JSON object (blank lines are skipped)::

    {"kind": "text-to-image", "prompt": "a lighthouse at dusk", "seed": 7}
    {"kind": "edit", "image": "photos/cat.png", "prompt": "make it a watercolour"}
    {"kind": "multi", "images": ["a.png", "https://example.com/b.png"], "prompt": "merge"}

``kind`` is ``text-to-image``, ``edit`` or ``multi``; ``model`` is optional (the
kind's default); ``priority``, ``deadline``, ``metadata``, ``idempotency_key``,
``callback_url``, ``tenant`` and ``keep_outputs``
are the job options; every other key is a WaveSpeed field of the model.
Relative image paths start at the batch file's folder. If any line is bad, every
bad line is reported with its number and nothing is enqueued. A file holds at most
``MAX_BATCH_LINES`` requests (``--max-lines``), each line at most
``MAX_BATCH_LINE_BYTES`` (``--max-line-bytes``), and all its requests together at most
``MAX_BATCH_BYTES`` (``--max-bytes``); the defaults are in ``worker.limits``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import click

from producer.client import JobClient
from producer.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_TIMED_OUT,
    TIMEOUT,
    error_text,
    json_option,
    make_client,
    print_json,
    reports_errors,
)
from producer.errors import ValidationError, WaitTimeoutError
from producer.prepare import PreparedJob
from worker.limits import MAX_BATCH_BYTES, MAX_BATCH_LINE_BYTES, MAX_BATCH_LINES, megabytes
from worker.models import JobRecord, JobState, JobStatus, request_size
from worker.outside_text import printable


def read_batch(
    path: Path,
    client: JobClient,
    *,
    max_lines: int = MAX_BATCH_LINES,
    max_line_bytes: int = MAX_BATCH_LINE_BYTES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> tuple[list[tuple[int, PreparedJob]], list[str]]:
    """Every line checked: (line number, prepared job) for the good ones, and one
    message per problem (``line N: field: why``) for the bad ones.

    The file is read line by line: a line over ``max_line_bytes`` is reported without
    being held in memory, reading stops past ``max_lines`` requests, and the checked
    requests together may hold at most ``max_bytes`` (local images inlined), since all
    of them wait in memory until every line has passed."""
    prepared: list[tuple[int, PreparedJob]] = []
    problems: list[str] = []
    requests = 0
    total_bytes = 0
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(_read_lines(handle, max_line_bytes), start=1):
                if raw is None:
                    problems.append(
                        f"line {number}: longer than {_size(max_line_bytes)} (one request "
                        "per line; pass big images by URL or file path, or raise "
                        "--max-line-bytes)"
                    )
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    problems.append(f"line {number}: not UTF-8 text")
                    continue
                if not line.strip():
                    continue
                requests += 1
                if requests > max_lines:
                    problems.append(
                        f"{path}: more than {max_lines:,} requests; split the file "
                        "(or raise --max-lines)"
                    )
                    break
                job = _check_line(number, line, path, client, problems)
                if job is None:
                    continue
                prepared.append((number, job))
                total_bytes += request_size(job.body)
                if total_bytes > max_bytes:
                    problems.append(
                        f"line {number}: the requests so far hold more than "
                        f"{_size(max_bytes)}; split the file or pass images by URL "
                        "(or raise --max-bytes)"
                    )
                    break
    except OSError as exc:
        return [], [f"{path}: cannot read: {exc}"]
    if not prepared and not problems:
        problems.append(f"{path}: no requests (one JSON object per line)")
    return prepared, problems


def _size(count: int) -> str:
    return f"{count:,} bytes" if count < 1024 * 1024 else megabytes(count)


def _read_lines(handle: BinaryIO, max_bytes: int) -> Iterator[bytes | None]:
    """Each line without its newline, or None for a line over ``max_bytes`` (whose
    rest is skipped in chunks, never held whole)."""
    while True:
        line = handle.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = handle.readline(1024 * 1024)
            yield None
            continue
        yield line.rstrip(b"\r\n")


def _check_line(
    number: int, line: str, path: Path, client: JobClient, problems: list[str]
) -> PreparedJob | None:
    try:
        request = json.loads(line)
    except ValueError as exc:
        problems.append(f"line {number}: not valid JSON: {exc}")
        return None
    try:
        return client.prepare(request, image_base=path.parent)
    except ValidationError as exc:
        problems.extend(f"line {number}: {field}: {why}" for field, why in exc.problems.items())
        return None


class ProgressLine:
    """Completed and failed counts and throughput on stderr while the batch runs.

    On a terminal the line is redrawn in place; otherwise (a log, a pipe) a line is
    printed when the counts change, at most once per ``interval`` seconds, and at the end.
    """

    def __init__(
        self,
        total: int,
        *,
        started: float,
        stream: TextIO | None = None,
        interval: float = 1.0,
    ) -> None:
        self.total = total
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.interval = interval
        #: When enqueueing began (``time.monotonic()``): throughput counts from there.
        self.started = started
        self._last_printed = 0.0
        self._last_counts: tuple[int, int] | None = None
        self._width = 0

    def update(self, finished: list[JobRecord]) -> None:
        completed = sum(record.status is JobStatus.COMPLETED for record in finished)
        counts = (completed, len(finished) - completed)
        now = time.monotonic()
        line = self._line(counts, now - self.started)
        if self.live:
            self._width = max(self._width, len(line))
            self.stream.write("\r" + line.ljust(self._width))
            self.stream.flush()
        elif counts != self._last_counts and (
            now - self._last_printed >= self.interval or sum(counts) == self.total
        ):
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_printed = now
            self._last_counts = counts

    def finish(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

    def _line(self, counts: tuple[int, int], elapsed: float) -> str:
        completed, failed = counts
        done = completed + failed
        rate = done / elapsed if elapsed > 0 else 0.0
        return (
            f"batch: {done}/{self.total} done, {completed} completed, {failed} failed, "
            f"{rate:.1f} jobs/s, {elapsed:.0f}s"
        )


def _summary(
    lines_and_ids: list[tuple[int, str]],
    records: Mapping[str, JobState | None],
    elapsed: float,
) -> dict[str, Any]:
    """The ``--json`` summary: counts by status, and every job (``job_id``, ``status``,
    ``outputs``, ``error``) with its line; a job not known to have ended is listed with
    its status if known, else as ``unfinished``."""
    jobs = []
    for line, job_id in lines_and_ids:
        record = records.get(job_id)
        jobs.append(
            {
                "line": line,
                "job_id": job_id,
                "status": record.status.value if record else "unfinished",
                "outputs": record.outputs if record else [],
                "error": record.error.model_dump() if record and record.error else None,
            }
        )
    counts = Counter(job["status"] for job in jobs)
    return {
        "total": len(jobs),
        "completed": counts["completed"],
        "failed": counts["failed"],
        "timed_out": counts["timed_out"],
        "cancelled": counts["cancelled"],
        "unfinished": len(jobs)
        - sum(counts[s] for s in ("completed", "failed", "timed_out", "cancelled")),
        "seconds": round(elapsed, 3),
        "jobs": jobs,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    rate = summary["total"] / summary["seconds"] if summary["seconds"] else 0.0
    click.echo(
        f"{summary['total']} jobs: {summary['completed']} completed, {summary['failed']} failed, "
        f"{summary['timed_out']} timed out, {summary['cancelled']} cancelled, "
        f"{summary['unfinished']} unfinished "
        f"in {summary['seconds']:.1f}s ({rate:.1f} jobs/s)"
    )
    for job in summary["jobs"]:
        if job["status"] != "completed":
            error = job["error"]
            reason = error_text(error["code"], error["message"]) if error else ""
            click.echo(f"  line {job['line']}: job {job['job_id']} {job['status']} {reason}")


@click.command("batch")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Show progress until every job ends, or only enqueue.",
)
@click.option(
    "--timeout",
    type=TIMEOUT,
    default=None,
    help="Seconds to wait at most (default: until the last deadline, plus a minute).",
)
@click.option(
    "--max-lines",
    type=click.IntRange(min=1),
    default=MAX_BATCH_LINES,
    show_default=True,
    help="Refuse a file with more requests than this (nothing is enqueued).",
)
@click.option(
    "--max-line-bytes",
    type=click.IntRange(min=1),
    default=MAX_BATCH_LINE_BYTES,
    show_default=True,
    help="Refuse a line longer than this many bytes (nothing is enqueued).",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=MAX_BATCH_BYTES,
    show_default=True,
    help="Refuse a file whose requests (local images inlined) hold more than this.",
)
@json_option
@reports_errors
def batch_command(
    file: Path,
    *,
    wait: bool,
    timeout: float | None,
    max_lines: int,
    max_line_bytes: int,
    max_bytes: int,
    as_json: bool,
) -> None:
    """Enqueue every request in FILE (JSON Lines), then show progress until all end.
    Exits 0 all completed, 1 some failed, 2 bad lines (nothing enqueued), 3 timed out."""
    with make_client() as client:
        prepared, problems = read_batch(
            file, client, max_lines=max_lines, max_line_bytes=max_line_bytes, max_bytes=max_bytes
        )
        if problems:
            for problem in problems:
                # A problem can quote the line (a field name): escaped, one line each.
                click.echo(f"error: {printable(problem, 2000)}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        started = time.monotonic()
        # One pipeline per thousand jobs: records and their messages together.
        job_ids_in_order = client.submit_many([job for _, job in prepared])
        lines_and_ids = [
            (line, job_id) for (line, _), job_id in zip(prepared, job_ids_in_order, strict=True)
        ]
        job_ids = [job_id for _, job_id in lines_and_ids]
        if not wait:
            if as_json:
                # The summary's shape, as with --wait: each job as it stands now.
                now = dict(zip(job_ids, client.get_states(job_ids), strict=True))
                print_json(_summary(lines_and_ids, now, time.monotonic() - started))
            else:
                click.echo(f"enqueued {len(job_ids)} jobs")
                for line, job_id in lines_and_ids:
                    click.echo(f"  line {line}: job {job_id}")
            sys.exit(EXIT_COMPLETED)
        progress = ProgressLine(len(set(job_ids)), started=started)
        finished: dict[str, JobRecord] = {}

        def on_progress(records: list[JobRecord]) -> None:
            finished.update((record.id, record) for record in records)
            progress.update(records)

        timed_out = False
        try:
            client.wait_all(job_ids, timeout, on_progress=on_progress)
        except WaitTimeoutError:
            timed_out = True
        progress.finish()
    summary = _summary(lines_and_ids, finished, time.monotonic() - started)
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)
    if timed_out:
        click.echo("error: timed out before every job ended (they keep running)", err=True)
        sys.exit(EXIT_TIMED_OUT)
    all_completed = summary["completed"] == summary["total"]
    sys.exit(EXIT_COMPLETED if all_completed else EXIT_FAILED)
