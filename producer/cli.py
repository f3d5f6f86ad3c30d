"""The ``wavequeue`` command. Subcommands import their modules lazily, so that
``wavequeue generate`` never loads the worker runtime and ``wavequeue emulator``
never loads Celery."""

from __future__ import annotations

import click


class LazyGroup(click.Group):
    """A click group whose subcommands are ``module:attribute`` strings, loaded on use."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._lazy = lazy

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
