"""``python -m emulator``: the same command as ``wavequeue emulator``."""

from emulator.cli import emulator_command

if __name__ == "__main__":
    emulator_command(prog_name="python -m emulator")
