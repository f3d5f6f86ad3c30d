"""``wavequeue worker``: a Celery worker with the project's defaults.

Pool and concurrency: every run is a short HTTP call plus a few Redis commands
(no run ever waits on the model), so the work is I/O-bound and light on CPU.
The ``threads`` pool with 16 threads gives many concurrent calls per process
at a fraction of prefork's memory; scale out with more worker processes or
containers. Any extra arguments go to ``celery worker`` unchanged, e.g.
``wavequeue worker --pool prefork --concurrency 4``.

Exit status: 0 after a requested stop (SIGTERM, Ctrl-C), 78 when the configuration
is refused before start, and the worker's own non-zero status when it stops on an
error (celery's "Unrecoverable error" is 1), so a supervisor that restarts on
failure restarts it. ``app.worker_main`` would drop that status and exit 0.
"""

from __future__ import annotations

import sys

import click

from worker.constants import WORKER_QUEUES
from worker.errors import ConfigError
from worker.http_pool import environment_proxy
from worker.settings import Settings

DEFAULT_POOL = "threads"
DEFAULT_CONCURRENCY = 16


@click.command(
    "worker",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option("--pool", default=DEFAULT_POOL, show_default=True, help="Celery pool.")
@click.option(
    "--concurrency", "-c", default=DEFAULT_CONCURRENCY, show_default=True, type=int,
    help="Runs at once per worker process.",
)  # fmt: skip
@click.option(
    "--queues", "-Q", default=",".join(WORKER_QUEUES), show_default=True,
    help="Queues to consume, comma-separated.",
)  # fmt: skip
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(
    pool: str, concurrency: int, queues: str, loglevel: str, celery_args: tuple[str, ...]
) -> None:
    """Start a worker that runs wavequeue jobs (extra arguments go to `celery worker`)."""
    try:
        settings = Settings.from_env()
        settings.check_for_worker()
        if settings.proxy_from_env:  # a proxy that cannot be used stops the start, not each job
            environment_proxy(settings.base_url)
    except ConfigError as exc:
        click.echo(f"wavequeue worker: {exc}", err=True)
        sys.exit(78)  # EX_CONFIG
    from celery.bin.celery import celery  # noqa: PLC0415 - import celery's CLI only to run it

    argv = [
        "--app=worker.app",  # imported by celery only now that the config is known good
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--loglevel={loglevel}",
        *celery_args,
    ]
    # celery's own command line, as `celery worker` runs it, minus its sys.exit: in
    # non-standalone mode click returns the status that `celery worker` exits with.
    status = celery.main(args=argv, prog_name="wavequeue", standalone_mode=False)
    sys.exit(status if isinstance(status, int) else 0)
