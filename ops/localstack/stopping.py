"""Stopping a child process: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import contextlib
import subprocess


def terminate_then_kill(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float
) -> None:
    """Ask ``process`` to stop; kill it if it has not within ``timeout`` seconds. Returns
    once it has exited (nothing to do if it already had)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
