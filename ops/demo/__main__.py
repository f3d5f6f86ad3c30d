"""``python -m ops.demo [--no-keep] [--batch N] [--out DIR]`` (``make demo``).

After the showcase the stack stays up until Ctrl-C, and the demo says where to look
(Flower, the jobs page, metrics): links that answer. ``--no-keep`` (scripts, CI) stops it
at once and prints no link."""

from __future__ import annotations

from pathlib import Path

import click

from ops.demo.showcase import ShowcaseError, run_showcase
from ops.localstack.interrupts import interrupt_on_signals
from ops.localstack.stack import LocalStack, StackOptions
from ops.localstack.supervisor import StackError
from producer import JobClient, WavequeueError
from worker.errors import ConfigError
from worker.settings import Settings


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--keep/--no-keep",
    default=True,
    show_default=True,
    help="Keep the stack up afterwards until Ctrl-C, to look at it in Flower and the jobs "
    "page; --no-keep stops it at once (scripts, CI).",
)
@click.option("--batch", "batch_size", default=20, show_default=True, help="Batch size.")
@click.option(
    "--out", "out_dir", default=Path("out"), show_default=True,
    type=click.Path(file_okay=False, path_type=Path), help="Where the images go.",
)  # fmt: skip
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the jobs.")
def main(keep: bool, batch_size: int, out_dir: Path, timeout: float) -> None:
    """Bring the local stack up, run a chain and a batch, write out/contact_sheet.png."""
    interrupt_on_signals()
    try:
        settings = Settings.from_env(stack_env=None)  # it starts a stack of its own
        stack = LocalStack(StackOptions(), settings, click.echo)
        endpoints = stack.start()
    except (StackError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    code = 0
    try:
        where = "the emulator" if endpoints.emulated else endpoints.base_url
        click.echo(f"Running the showcase against {where} ...")
        if endpoints.emulated:
            # The emulator serves its images on 127.0.0.1; producers may edit them.
            settings = settings.model_copy(update={"allow_private_image_urls": True})
        with JobClient(settings, redis_url=endpoints.redis_url) as client:
            result = run_showcase(
                client, out_dir, batch_size=batch_size, timeout=timeout, say=click.echo
            )
        click.echo(f"batch: {result.batch_completed} completed, {result.batch_failed} failed")
        for path in result.chain_images:
            click.echo(f"  {path}")
        click.echo(f"Contact sheet: {result.contact_sheet}")
        if keep:
            click.echo(
                "The stack stays up so you can look around until you press Ctrl-C:\n"
                f"  jobs page  {endpoints.jobs_url}\n"
                f"  Flower     {endpoints.flower_url}\n"
                f"  metrics    {endpoints.exporter_url}\n"
                f"  producers  export REDIS_URL={endpoints.redis_url}  (or run in this "
                "folder: .wavequeue/stack.env is read while the stack runs)"
            )
            stack.watch()
        else:
            click.echo("--no-keep: stopping the stack.")
    except KeyboardInterrupt:
        code = 0 if keep else 130  # with --keep, Ctrl-C is how it ends
    except (StackError, ShowcaseError, WavequeueError) as exc:
        click.echo(f"demo: {exc}", err=True)
        code = 1
    finally:
        stack.stop()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
