"""``wavequeue exporter``: serve /metrics for Prometheus, and the jobs page at /jobs, until
SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import sys

import click
import tornado.httpserver
import tornado.netutil
from prometheus_client import CollectorRegistry
from tornado.ioloop import IOLoop

from ops.exporter.collector import WavequeueCollector
from ops.exporter.server import make_app
from ops.jobs_page.auth import JobsPageConfigError, check_exposure, parse_credentials
from worker.errors import ConfigError
from worker.redis_connection import redis_client
from worker.settings import Settings

DEFAULT_PORT = 9808
EX_CONFIG = 78


def build_registry(settings: Settings) -> CollectorRegistry:
    """A registry with only the wavequeue collector (no process metrics: the exporter's
    own CPU and memory are not what anyone monitors wavequeue for)."""
    # One attempt per scrape: a scrape that waits out a Redis outage would time out in
    # Prometheus, where wavequeue_redis_up 0 says what is wrong.
    client = redis_client(settings, retry_window=0)
    registry = CollectorRegistry()
    registry.register(WavequeueCollector(client, settings))
    return registry


@click.command("exporter", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host", default="127.0.0.1", show_default=True, envvar="WAVEQUEUE_EXPORTER_HOST",
    help="Interface to listen on (env WAVEQUEUE_EXPORTER_HOST); 0.0.0.0 in a container.",
)  # fmt: skip
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=int,
    envvar="WAVEQUEUE_EXPORTER_PORT", help="Port of /metrics (env WAVEQUEUE_EXPORTER_PORT).",
)  # fmt: skip
@click.option(
    "--jobs-page/--no-jobs-page", default=True, show_default=True,
    envvar="WAVEQUEUE_JOBS_PAGE",
    help="Serve the jobs page at /jobs on the same port (env WAVEQUEUE_JOBS_PAGE).",
)  # fmt: skip
@click.option(
    "--basic-auth", "basic_auth", default=None, envvar="WAVEQUEUE_JOBS_BASIC_AUTH",
    metavar="USER:PASSWORD",
    help="Login of the jobs page, several comma-separated. Give it in the environment "
    "(WAVEQUEUE_JOBS_BASIC_AUTH): a command line is visible to every user of the host.",
)  # fmt: skip
def exporter_command(host: str, port: int, jobs_page: bool, basic_auth: str | None) -> None:
    """Serve Prometheus metrics (queues, held countdowns, live jobs, counters, latencies)
    read from the Redis at REDIS_URL at every scrape, and the jobs page at /jobs.

    Beyond 127.0.0.1 the jobs page asks for a login, WAVEQUEUE_JOBS_BASIC_AUTH=user:password
    (several: comma-separated); without one the exporter refuses to start (or run it with
    --no-jobs-page). /metrics asks none."""
    try:
        settings = Settings.from_env()
        registry = build_registry(settings)
        credentials: list[str] = []
        if jobs_page:
            credentials = parse_credentials(basic_auth)
            check_exposure(host, credentials)
        app = make_app(settings, registry, jobs_page=jobs_page, credentials=credentials)
    except (ConfigError, JobsPageConfigError) as exc:
        click.echo(f"wavequeue exporter: {exc}", err=True)
        sys.exit(EX_CONFIG)
    sockets = tornado.netutil.bind_sockets(port, address=host)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]  # with port 0: the one picked
    page = f" and http://{host}:{bound}/jobs" if jobs_page else ""
    click.echo(f"wavequeue exporter listening on http://{host}:{bound}/metrics{page}")
    loop = IOLoop.current()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()
    server.stop()
