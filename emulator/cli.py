"""``wavequeue emulator`` / ``python -m emulator``: run the WaveSpeed emulator."""

from __future__ import annotations

import logging
from typing import Any

import click

from emulator.app import EmulatorServer
from emulator.config import (
    DEFAULT_LATENCY,
    DEFAULT_PORT,
    DEFAULT_SYNC_TIMEOUT,
    FAULT_KINDS,
    EmulatorConfig,
    parse_fault_flag,
)
from emulator.errors import ConfigError

_FAULT_HELP = (
    "Inject a fault: KIND[=PROBABILITY][,count=N][,models=A|B][,prompt_contains=TEXT]"
    "[,delay=S][,retry_after=S][,code=N][,message=TEXT]. Repeatable. Kinds: "
    + ", ".join(FAULT_KINDS)
    + "."
)


def build_config(
    *,
    api_key: str | None,
    seed: int | None,
    latency: str,
    model_latency: tuple[str, ...],
    sync_timeout: float,
    faults: tuple[str, ...],
    rate_limit_per_minute: int | None,
    max_concurrency: int | None,
    image_scale: float,
    webhook_resign_retries: bool = True,
    balance: str | None = None,
) -> EmulatorConfig:
    """Turn the flags into the same partial-config mapping ``POST /_emulator/config`` takes."""
    per_model: dict[str, str] = {}
    for item in model_latency:
        model, separator, spec = item.partition("=")
        if not separator:
            raise ConfigError(f"--model-latency {item!r}: expected MODEL=SPEC")
        per_model[model.strip()] = spec.strip()
    fault_knobs: dict[str, Any] = {}
    for flag in faults:
        kind, knobs = parse_fault_flag(flag)
        fault_knobs[kind] = knobs
    changes: dict[str, Any] = {
        "seed": seed,
        "latency": latency,
        "model_latency": per_model,
        "sync_timeout": sync_timeout,
        "faults": fault_knobs,
        "rate_limit_per_minute": rate_limit_per_minute,
        "max_concurrency": max_concurrency,
        "image_scale": image_scale,
        "webhook_resign_retries": webhook_resign_retries,
    }
    if balance is not None:
        changes["balance"] = balance
    return EmulatorConfig(api_key=api_key or None).updated(changes)


@click.command("emulator", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=int, help="0 picks a free port."
)
@click.option(
    "--api-key",
    envvar="WAVESPEED_EMULATOR_API_KEY",
    help="The one accepted Bearer key (env WAVESPEED_EMULATOR_API_KEY); unset: any non-empty key.",
)
@click.option("--seed", type=int, help="Seed for latency and fault draws (reproducible runs).")
@click.option(
    "--latency",
    default=str(DEFAULT_LATENCY),
    show_default=True,
    help="Inference time for every model: fixed:S, uniform:MIN:MAX or lognormal:MEDIAN:SPREAD.",
)
@click.option(
    "--model-latency",
    multiple=True,
    metavar="MODEL=SPEC",
    help="Per-model latency, e.g. flux-kontext-pro=fixed:5. Repeatable.",
)
@click.option(
    "--sync-timeout",
    default=DEFAULT_SYNC_TIMEOUT,
    show_default=True,
    type=float,
    help="Seconds an enable_sync_mode POST waits before answering status processing, code 5004.",
)
@click.option("--fault", "faults", multiple=True, metavar="SPEC", help=_FAULT_HELP)
@click.option(
    "--rate-limit-per-minute", type=int, help="Images per minute per API key; over it: 429."
)
@click.option(
    "--max-concurrency",
    type=int,
    help="Predictions processing at once per API key; the rest queue (status created).",
)
@click.option(
    "--image-scale",
    default=1.0,
    show_default=True,
    type=float,
    help="Scale generated image sizes (e.g. 0.25 for load tests); sizes stay multiples of 16.",
)
@click.option(
    "--webhook-resign-retries/--webhook-keep-first-signature",
    default=True,
    show_default=True,
    help="Whether a webhook retry gets a new timestamp and signature, or repeats the first "
    "attempt's (then a retry sent over 5 minutes later fails a receiver's freshness check).",
)
@click.option(
    "--balance",
    default=None,
    help="The account's balance in US dollars (default 1000), debited per completed image "
    "(Kontext Pro $0.04, Max $0.08); GET /api/v3/balance reads it.",
)
@click.option("--access-log", is_flag=True, help="Log every request (off: it slows polling).")
def emulator_command(
    *,
    host: str,
    port: int,
    api_key: str | None,
    seed: int | None,
    latency: str,
    model_latency: tuple[str, ...],
    sync_timeout: float,
    faults: tuple[str, ...],
    rate_limit_per_minute: int | None,
    max_concurrency: int | None,
    image_scale: float,
    webhook_resign_retries: bool,
    balance: str | None,
    access_log: bool,
) -> None:
    """Run a WaveSpeed v3 API emulator (submit, result, media, uploads, webhooks, faults)."""
    try:
        config = build_config(
            api_key=api_key,
            seed=seed,
            latency=latency,
            model_latency=model_latency,
            sync_timeout=sync_timeout,
            faults=faults,
            rate_limit_per_minute=rate_limit_per_minute,
            max_concurrency=max_concurrency,
            image_scale=image_scale,
            webhook_resign_retries=webhook_resign_retries,
            balance=balance,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = EmulatorServer(config, host=host, port=port, access_log=access_log)
    keys = "the configured API key" if config.api_key else "any non-empty API key"

    def announce(running: EmulatorServer) -> None:
        click.echo(f"WaveSpeed emulator listening on {running.base_url} (accepting {keys})")

    try:
        server.serve_forever(on_ready=announce)
    except OSError as exc:  # the port is taken, or the host is not an interface here
        reason = exc.strerror or str(exc)
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from exc
