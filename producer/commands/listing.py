"""``wavequeue jobs``: find jobs by status, model, tenant and time, a page at a time."""

from __future__ import annotations

import datetime
import re
import sys
from typing import Any

import click

from producer.commands.common import (
    EXIT_COMPLETED,
    json_option,
    make_client,
    print_json,
    reports_errors,
)
from worker.job_listing import DEFAULT_PAGE, MAX_PAGE
from worker.models import JobState, JobStatus

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``90``, ``90s``, ``15m``, ``1h``, ``2d``: a time span, in seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime.timedelta):
            return value
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not found:
            self.fail(f"{value!r} is not a duration like 90s, 15m, 1h or 2d", param, ctx)
        number, unit = found.groups()
        return datetime.timedelta(seconds=float(number) * _UNITS[unit or "s"])


def job_json(state: JobState) -> dict[str, Any]:
    """A listed job: its state (no request), the id as ``job_id`` like every ``--json``."""
    data = state.model_dump(mode="json")
    return {"job_id": data.pop("id"), **data}


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def job_line(state: JobState, now: float) -> str:
    error = f"[{state.error.code}]" if state.error is not None else ""
    return (
        f"{state.id}  {state.status.value:<10} {state.model:<32} {state.tenant:<12} "
        f"{_age(now - state.created_at):>5} {state.polls:>5}  {error}"
    ).rstrip()


@click.command("jobs")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in JobStatus]),
    help="Only jobs in this status (repeat for several).",
)
@click.option("--model", "models", multiple=True, help="Only this model (repeatable).")
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable).")
@click.option(
    "--since",
    type=Duration(),
    default=None,
    help="Only jobs that entered their status within this span: 90s, 15m, 1h, 2d.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE),
    default=DEFAULT_PAGE,
    show_default=True,
    help="Jobs per page.",
)
@click.option("--cursor", default=None, help="Where the previous page ended (it prints it).")
@json_option
@reports_errors
def jobs_command(
    *,
    statuses: tuple[str, ...],
    models: tuple[str, ...],
    tenants: tuple[str, ...],
    since: datetime.timedelta | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List jobs, the most recent status change first: id, status, model, tenant, age
    and polls. Finished jobs are listed as long as their records are kept."""
    with make_client() as client:
        page = client.list(
            status=statuses or None,
            model=models or None,
            tenant=tenants or None,
            since=since,
            limit=limit,
            cursor=cursor,
        )
        now = client.store.clock()
    if as_json:
        print_json(
            {"jobs": [job_json(state) for state in page.jobs], "next_cursor": page.next_cursor}
        )
        sys.exit(EXIT_COMPLETED)
    if not page.jobs:
        click.echo("no jobs")
    else:
        click.echo(
            f"{'job':<32}  {'status':<10} {'model':<32} {'tenant':<12} {'age':>5} {'polls':>5}"
        )
        for state in page.jobs:
            click.echo(job_line(state, now))
    if page.next_cursor is not None:
        click.echo(f"more: add --cursor {page.next_cursor}")
    sys.exit(EXIT_COMPLETED)
