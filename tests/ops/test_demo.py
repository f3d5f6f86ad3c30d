"""``make demo`` as a new user runs it: after the showcase the stack stays up, the links
it prints answer, and Ctrl-C stops everything (issue #12: it used to print Flower's URL
and stop the stack at once)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.stack import FAST_SETTINGS

pytestmark = pytest.mark.timeout(300)


def test_the_demo_keeps_the_stack_up_until_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WAVESPEED_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.demo", "--batch", "2", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env={**env, **FAST_SETTINGS, "PYTHONUNBUFFERED": "1"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while not any("Ctrl-C" in line for line in lines):
            line = process.stdout.readline()
            assert line or process.poll() is None, "the demo ended:\n" + "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines)
        # The links come on the lines after that one.
        lines += [process.stdout.readline() for _ in range(4)]
        text = "".join(lines)
        assert (tmp_path / "out" / "contact_sheet.png").is_file()
        urls = dict(re.findall(r"^  (jobs page|Flower|metrics) +(http://\S+)$", text, re.M))
        assert set(urls) == {"jobs page", "Flower", "metrics"}, text
        for url in urls.values():
            assert requests.get(url, timeout=10).status_code == 200, url
        jobs_page = requests.get(urls["jobs page"], timeout=10).text
        assert "chain" in jobs_page or "completed" in jobs_page
        assert (tmp_path / ".wavequeue" / "stack.env").is_file()
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert process.returncode == 0, text + rest
    # Stopped: its links are dead and its stack.env is gone, as it says.
    with pytest.raises(requests.ConnectionError):
        requests.get(urls["Flower"], timeout=5)
    assert not (tmp_path / ".wavequeue" / "stack.env").exists()
