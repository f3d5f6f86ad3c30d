"""``wavequeue cancel ID...``: cancel jobs and chains by id."""

from __future__ import annotations

import sys
from typing import Any

import click

from producer.chain_status import ChainStatus
from producer.client import JobClient
from producer.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_COMPLETED,
    json_option,
    make_client,
    print_json,
    record_json,
    reports_errors,
)
from producer.errors import JobNotFoundError
from worker.models import JobRecord


@click.command("cancel")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@json_option
@reports_errors
def cancel_command(ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel jobs and chains (any mix of ids). A job not yet submitted is never
    submitted; one already at WaveSpeed ends cancelled at once and its result is ignored
    (WaveSpeed has no cancel endpoint: it may still be billed). A chain's remaining
    steps are cancelled. Idempotent: what ended already keeps its ending. Exits 0 when
    every id was found, 2 when one was not (the others are cancelled all the same)."""
    results: list[dict[str, Any]] = []
    missing = False
    with make_client() as client:
        for any_id in dict.fromkeys(ids):
            ended = _cancel_one(client, any_id)
            if ended is None:
                missing = True
                click.echo(
                    f"error: no job or chain {any_id!r} (never created, or expired)", err=True
                )
                continue
            results.append(_as_json(ended))
            if not as_json:
                click.echo(_line(ended))
    if as_json:
        print_json({"cancelled": results})
    sys.exit(EXIT_BAD_INPUT if missing else EXIT_COMPLETED)


def _cancel_one(client: JobClient, any_id: str) -> JobRecord | ChainStatus | None:
    try:
        return client.cancel(any_id)
    except JobNotFoundError:
        pass
    try:
        return client.cancel_chain(any_id)
    except JobNotFoundError:
        return None


def _line(ended: JobRecord | ChainStatus) -> str:
    if isinstance(ended, ChainStatus):
        return f"chain {ended.id} {ended.state.value}"
    line = f"job {ended.id} {ended.status.value}"
    if ended.error is not None and ended.status.value == "cancelled":
        line += f": {ended.error.message}"
    return line


def _as_json(ended: JobRecord | ChainStatus) -> dict[str, Any]:
    if isinstance(ended, ChainStatus):
        return ended.to_json()
    return record_json(ended)
