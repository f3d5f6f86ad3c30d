"""``wavequeue webhooks``: receive WaveSpeed's completion callbacks until SIGTERM or Ctrl-C.

It needs Redis (``REDIS_URL`` and the rest of the Redis settings, like every
process), ``WAVEQUEUE_WEBHOOK_URL_KEY`` (the workers' key for callback URLs) and the
account's webhook secret: ``WAVEQUEUE_WEBHOOK_SECRET``, or else it fetches the
secret once at start from ``GET /api/v3/webhook/secret`` with ``WAVESPEED_API_KEY``
(a restart fetches it again, e.g. after a rotation). Exit status 78 on a
configuration it refuses; 1 when WaveSpeed would not give the secret.
"""

from __future__ import annotations

import logging
import sys
import time

import click

from worker.celery_config import make_app
from worker.errors import ConfigError, PermanentError, TransientError
from worker.keep_outputs import OutputKeeper
from worker.ratelimit import AccountLimiter
from worker.settings import Settings
from worker.store import JobStore
from worker.wavespeed import WaveSpeedClient
from worker.webhooks.receiver import Sender, WebhookReceiver
from worker.webhooks.server import serve_forever
from worker.webhooks.signature import Verifier, signing_key

DEFAULT_PORT = 8780
#: How long the start waits for WaveSpeed to hand out the secret.
SECRET_FETCH_WINDOW = 60.0


def fetch_secret(settings: Settings) -> str:
    """The secret from settings, else from WaveSpeed (retried for ``SECRET_FETCH_WINDOW``
    while WaveSpeed is unreachable or busy)."""
    if settings.webhook_secret is not None and settings.webhook_secret.get_secret_value():
        return settings.webhook_secret.get_secret_value()
    client = WaveSpeedClient(
        base_url=settings.base_url,
        api_key=settings.require_api_key(),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        proxy_from_env=settings.proxy_from_env,
    )
    give_up = time.monotonic() + SECRET_FETCH_WINDOW
    delay = 1.0
    try:
        while True:
            try:
                return client.webhook_secret()
            except TransientError as exc:
                if time.monotonic() + delay > give_up:
                    raise
                click.echo(f"wavequeue webhooks: no secret yet ({exc.message}); retrying", err=True)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
    finally:
        client.close()


def build_receiver(settings: Settings, secret: str) -> WebhookReceiver:
    store = JobStore.from_settings(settings)
    limiter = AccountLimiter.from_settings(store.client, settings)
    return WebhookReceiver(
        store=store,
        limiter=limiter,
        verifier=Verifier(signing_key(secret), clock=time.time),
        url_key=settings.require_webhook_url_key(),
        sender=Sender(make_app(settings), store),
        longest_countdown=settings.longest_countdown,
        keeps=OutputKeeper(settings).wants,
        persist_retry_for=settings.persist_retry_for,
    )


@click.command("webhooks", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host", default="127.0.0.1", show_default=True, envvar="WAVEQUEUE_WEBHOOKS_HOST",
    help="Interface to listen on (env WAVEQUEUE_WEBHOOKS_HOST); 0.0.0.0 in a container.",
)  # fmt: skip
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=int,
    envvar="WAVEQUEUE_WEBHOOKS_PORT",
    help="Port (env WAVEQUEUE_WEBHOOKS_PORT); 0 picks a free one.",
)  # fmt: skip
@click.option(
    "--threads", default=8, show_default=True, type=int,
    help="Callbacks handled at once (each is a few Redis round trips).",
)  # fmt: skip
def webhooks_command(host: str, port: int, threads: int) -> None:
    """Receive WaveSpeed's signed completion callbacks and apply them to their jobs."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env()
        settings.require_webhook_url_key()
        secret = fetch_secret(settings)
    except ConfigError as exc:
        click.echo(f"wavequeue webhooks: {exc}", err=True)
        sys.exit(78)  # EX_CONFIG
    except (TransientError, PermanentError) as exc:
        click.echo(f"wavequeue webhooks: cannot get the webhook secret: {exc.message}", err=True)
        sys.exit(1)
    receiver = build_receiver(settings, secret)

    def announce(bound: int) -> None:
        click.echo(
            f"wavequeue webhooks listening on http://{host}:{bound} "
            "(callbacks at /wavespeed/<job id>/<mac>)"
        )

    try:
        serve_forever(
            receiver,
            host=host,
            port=port,
            threads=threads,
            max_body=settings.webhook_max_body,
            on_ready=announce,
        )
    except OSError as exc:  # the port is taken, or the host is not an interface here
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
