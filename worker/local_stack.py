"""The file through which ``wavequeue up`` (and ``make demo``) tell other processes where
the local stack's Redis is: ``.wavequeue/stack.env``.

It holds ``NAME=value`` lines (``export $(cat .wavequeue/stack.env)`` works in a shell):
``REDIS_URL``, ``WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS`` when the emulator runs, and
``WAVEQUEUE_STACK_PID``, the pid of the ``wavequeue up`` process that wrote it. The stack
deletes the file when it stops; a file left behind by a stack that was killed names a
pid that is gone, and is ignored.

``Settings.from_env`` reads it only when ``REDIS_URL`` is not set, so a CLI command or a
backend started in the project's folder while the stack runs uses the stack's Redis,
and without a running stack nothing writes to a Redis that nobody named. Defined here,
in ``worker``, because both sides need it: ``ops.localstack`` writes it, the settings
read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: Where ``wavequeue up`` writes it by default (relative to the working directory, like
#: the rest of the stack's data under ``./.wavequeue/``).
STACK_ENV_PATH = Path(".wavequeue") / "stack.env"
#: The variable in the file that names the process of the stack that wrote it.
PID_VARIABLE = "WAVEQUEUE_STACK_PID"


def write_stack_env(path: Path, values: Mapping[str, str], *, pid: int | None = None) -> None:
    """Write the file, owner-only (a REDIS_URL may carry a password)."""
    lines = {**values, PID_VARIABLE: str(os.getpid() if pid is None else pid)}
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("".join(f"{name}={value}\n" for name, value in lines.items()))


def remove_stack_env(path: Path, *, pid: int | None = None) -> None:
    """Delete the file if it is still this process's (a newer stack may have replaced it)."""
    values = _parse(path)
    if values is not None and values.get(PID_VARIABLE) == str(os.getpid() if pid is None else pid):
        path.unlink(missing_ok=True)


def running_stack_env(path: Path = STACK_ENV_PATH) -> dict[str, str] | None:
    """The variables of a running stack's file (without the pid), or None when there is
    no file or the stack that wrote it is gone."""
    values = _parse(path)
    if values is None:
        return None
    pid = values.pop(PID_VARIABLE, "")
    if not pid.isdigit() or not _alive(int(pid)):
        return None
    return values


def _parse(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            values[name] = value
    return values


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
