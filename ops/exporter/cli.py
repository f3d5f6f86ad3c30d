"""``wavequeue exporter``: serve /metrics for Prometheus until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading

import click
from prometheus_client import CollectorRegistry, start_http_server

from ops.exporter.collector import WavequeueCollector
from worker.errors import ConfigError
from worker.redis_connection import redis_client
from worker.settings import Settings

DEFAULT_PORT = 9808


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
def exporter_command(host: str, port: int) -> None:
    """Serve Prometheus metrics (queues, held countdowns, live jobs, counters, latencies)
    read from the Redis at REDIS_URL at every scrape."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        click.echo(f"wavequeue exporter: {exc}", err=True)
        sys.exit(78)  # EX_CONFIG
    server, thread = start_http_server(port, addr=host, registry=build_registry(settings))
    click.echo(f"wavequeue exporter listening on http://{host}:{server.server_port}/metrics")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)
