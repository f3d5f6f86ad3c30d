"""``wavequeue status`` and ``wavequeue wait``: read a job or a chain by its id."""

from __future__ import annotations

import sys

import click

from producer.chain_status import ChainStatus
from producer.commands.common import (
    EXIT_COMPLETED,
    TIMEOUT,
    exit_code_of,
    json_option,
    make_client,
    reports_errors,
    show,
)
from worker.models import JobRecord


@click.command("status")
@click.argument("any_id", metavar="ID")
@json_option
@reports_errors
def status_command(any_id: str, as_json: bool) -> None:
    """Show a job or a chain (its state, every step, outputs and errors). Exits 0 when
    the id exists, whatever its state; 2 when it does not."""
    with make_client() as client:
        show(client.lookup(any_id), as_json=as_json)
    sys.exit(EXIT_COMPLETED)


@click.command("wait")
@click.argument("any_id", metavar="ID")
@click.option(
    "--timeout",
    type=TIMEOUT,
    default=None,
    help="Seconds to wait at most (default: until the deadline, plus a minute).",
)
@json_option
@reports_errors
def wait_command(any_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait until a job or a chain ends; exit 0 completed, 1 failed, 3 timed out."""
    with make_client() as client:
        result: JobRecord | ChainStatus
        if isinstance(client.lookup(any_id), ChainStatus):
            result = client.wait_chain(any_id, timeout)
        else:
            result = client.wait(any_id, timeout)
        show(result, as_json=as_json)
    sys.exit(exit_code_of(result))
