"""Text from outside (WaveSpeed's error messages, a user's field names) is escaped and
capped before it is logged, stored as an error or printed (issue #15 item 4: a message
holding a newline and ANSI escapes started fake lines in the worker's log and cleared
the terminal when ``wavequeue status`` printed it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from producer.cli import main
from producer.client import JobClient
from tests.producer.conftest import ProducerStack
from worker.models import JobStatus

#: A line that looks like one of the worker's own, after a newline; then "clear screen".
FAKE_LINE = "[2026-01-01 00:00:00,000: WARNING/MainProcess] job 0000 completed in 0.1s"
HOSTILE = f"cannot fetch image\n{FAKE_LINE}\r\x1b[2J\x1b]0;owned\x07\u202eevil" + "x" * 5000
CONTROL = [chr(c) for c in (*range(0x20), 0x7F, 0x9B)] + ["\u202e", "\u2028"]

Run = Callable[..., Result]


@pytest.fixture
def wavequeue(stack: ProducerStack) -> Run:
    runner = CliRunner()

    def run(*args: str) -> Result:
        env = {"REDIS_URL": stack.redis_url, "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1"}
        return runner.invoke(main, list(args), env=env)

    return run


def _no_control(text: str, allowed: str = "") -> None:
    found = sorted({repr(c) for c in text if c in CONTROL and c not in allowed})
    assert not found, found


def test_a_hostile_error_message_is_escaped_stored_logged_and_printed(
    stack: ProducerStack, stack_client: JobClient, wavequeue: Run
) -> None:
    stack.emulator.configure(
        faults={
            "prediction_failed": {
                "probability": 1,
                "code": 1402,
                "message": HOSTILE,
                "prompt_contains": "hostile-text",
            }
        }
    )
    job_id = stack_client.text_to_image("hostile-text: a kite")
    record = stack_client.wait(job_id, timeout=60)
    assert record.status is JobStatus.FAILED
    assert record.error is not None

    stored = record.error.message
    _no_control(stored)
    assert stored.startswith("cannot fetch image\\n[2026-01-01")
    assert "\\x1b[2J" in stored and "\\u202e" in stored
    assert len(stored) <= 400, len(stored)

    status = wavequeue("status", job_id)
    assert status.exit_code == 0, status.stderr
    _no_control(status.stdout, allowed="\n")
    error_lines = [line for line in status.stdout.splitlines() if "error" in line]
    assert len(error_lines) == 1 and FAKE_LINE in error_lines[0]

    log = stack.worker.log()
    assert f"\n{FAKE_LINE}" not in log
    _no_control(log, allowed="\n")
    assert any(job_id in line and "\\x1b[2J" in line for line in log.splitlines())


def test_a_hostile_field_name_in_a_batch_line_is_printed_escaped(
    stack: ProducerStack, wavequeue: Run, tmp_path: Path
) -> None:
    line = {"kind": "text-to-image", "prompt": "x", "\x1b[2Jclear\nerror: line 9: fake": 1}
    batch = tmp_path / "jobs.jsonl"
    batch.write_text(json.dumps(line) + "\n")

    result = wavequeue("batch", str(batch))

    assert result.exit_code == 2
    _no_control(result.stderr, allowed="\n")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: line 1: \\x1b[2Jclear\\nerror")
