"""The producer's subcommands of ``wavequeue``, one module per concern."""
