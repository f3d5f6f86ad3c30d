"""The ``wavequeue`` command. Subcommands import their modules lazily, so that
``wavequeue generate`` never loads the worker runtime and ``wavequeue emulator``
never loads Celery."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

#: click's exit code for usage errors, the CLI's "bad input" (producer.commands.common).
EXIT_USAGE = 2


def usage_line(exc: click.UsageError) -> str:
    """A click usage error as the CLI's one line, ``error: field: why``: the same shape as
    every other bad input, without click's usage block."""
    param = getattr(exc, "param", None)
    if isinstance(exc, click.NoSuchOption):
        where, why = exc.option_name, "no such option"
        if exc.possibilities:
            why += f" (did you mean {' or '.join(sorted(exc.possibilities))}?)"
    elif isinstance(exc, click.BadOptionUsage):
        where, why = exc.option_name, exc.message
    elif isinstance(exc, click.MissingParameter) and param is not None:
        where, why = _name_of(param), "missing (required)"
    elif isinstance(exc, click.BadParameter) and param is not None:
        where, why = _name_of(param), exc.message
    else:
        where, why = "usage", exc.format_message()
    why = why.strip().rstrip(".")
    return f"error: {where}: {why[:1].lower()}{why[1:]}"


def _name_of(param: click.Parameter) -> str:
    if isinstance(param, click.Option):
        return max(param.opts, key=len)  # the long form: --timeout, not -t
    return param.human_readable_name


class LazyGroup(click.Group):
    """A click group whose subcommands are ``module:attribute`` strings, loaded on use."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._lazy = lazy

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """click's ``main``, with usage errors as one ``error:`` line (exit 2)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            _fail(usage_line(exc), EXIT_USAGE)
        except click.ClickException as exc:
            _fail(f"error: {exc.format_message()}", exc.exit_code)
        except click.Abort:
            _fail("error: aborted", 1)
        # Commands end with sys.exit; what returns here is --help, --version or an Exit.
        sys.exit(code if isinstance(code, int) else 0)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            import importlib  # noqa: PLC0415

            module_name, attribute = self._lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


def _fail(line: str, code: int) -> NoReturn:
    click.echo(line, err=True)
    sys.exit(code)


#: Subcommand -> where it lives. Later issues add producer, worker and ops commands.
COMMANDS: dict[str, str] = {
    "batch": "producer.commands.batch:batch_command",
    "budget": "producer.commands.spend:budget_command",
    "cancel": "producer.commands.cancel:cancel_command",
    "chain": "producer.commands.chains:chain_command",
    "download": "producer.commands.download:download_command",
    "edit": "producer.commands.submit:edit_command",
    "emulator": "emulator.cli:emulator_command",
    "exporter": "ops.exporter.cli:exporter_command",
    "generate": "producer.commands.submit:generate_command",
    "jobs": "producer.commands.listing:jobs_command",
    "retry": "producer.commands.chains:retry_command",
    "spend": "producer.commands.spend:spend_command",
    "stats": "ops.stats:stats_command",
    "status": "producer.commands.inspect:status_command",
    "up": "ops.localstack.stack:up_command",
    "wait": "producer.commands.inspect:wait_command",
    "webhooks": "worker.webhooks.cli:webhooks_command",
    "worker": "worker.cli:worker_command",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wavequeue")
def main() -> None:
    """wavequeue: offload FLUX.1 Kontext jobs to WaveSpeed through Celery on Redis."""
