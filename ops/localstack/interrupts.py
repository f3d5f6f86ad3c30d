"""Ctrl-C and SIGTERM as one KeyboardInterrupt, held back while a child is spawned.

``wavequeue up`` and the demo unwind through their cleanup on either signal,
whatever they are doing (starting a child, waiting for one, watching), and stop
the children, which run in their own process groups and never see the signal.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class _Interrupts:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, except inside ``deferred_interrupts()``."""

    deferring = False
    pending = False


def _on_signal(_signum: int, _frame: object) -> None:
    if _Interrupts.deferring:
        _Interrupts.pending = True
        return
    raise KeyboardInterrupt


def interrupt_on_signals() -> None:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt, so that whatever the
    supervisor is doing (starting a child, waiting, watching) it unwinds through
    its cleanup and stops the children, which run in their own process groups."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold an interrupt until the block ends. Around a Popen: an interrupt between
    the fork and the assignment would leave a child nobody knows to stop."""
    _Interrupts.deferring = True
    try:
        yield
    finally:
        _Interrupts.deferring = False
        if _Interrupts.pending:
            _Interrupts.pending = False
            raise KeyboardInterrupt
