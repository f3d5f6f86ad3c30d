"""Headless Chromium from the command line: ``--dump-dom`` and ``--screenshot``.

Flower's tasks table fills through an ajax call after the page loads;
``--virtual-time-budget`` lets the page's scripts and requests run (virtual time
only advances while nothing is pending) before the DOM is dumped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
BUDGET_MS = 8000


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    def __init__(self, binary: str, profiles: Path) -> None:
        self.binary = binary
        self.profiles = profiles
        self._runs = 0

    def _run(self, url: str, *extra: str) -> str:
        self._runs += 1
        # A fresh profile per run: nothing cached, no credentials remembered.
        profile = self.profiles / f"profile{self._runs}"
        argv = [
            self.binary, *FLAGS, f"--user-data-dir={profile}",
            f"--virtual-time-budget={BUDGET_MS}", *extra, url,
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, timeout=90, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr.decode()[-2000:]}")
        return done.stdout.decode(errors="replace")

    def dom(self, url: str) -> str:
        return self._run(url, "--dump-dom")

    def screenshot(self, url: str, path: Path) -> Path:
        self._run(url, f"--screenshot={path}", "--window-size=1600,900", "--hide-scrollbars")
        return path
