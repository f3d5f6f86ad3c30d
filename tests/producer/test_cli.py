"""The ``wavequeue`` producer commands against the real stack, through click's CliRunner:
exit codes, --json, batch with its progress display, chains, status and download."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from PIL import Image

from producer.cli import main
from tests.producer.conftest import ProducerStack

Run = Callable[..., Result]


@pytest.fixture
def wavequeue(stack: ProducerStack) -> Iterator[Run]:
    """Run ``wavequeue ARGS...`` in-process with REDIS_URL pointing at the stack (whose
    emulator serves images on 127.0.0.1, so private image URLs are allowed)."""
    runner = CliRunner()

    def run(*args: str, **env: str) -> Result:
        return runner.invoke(
            main,
            list(args),
            env={
                "REDIS_URL": stack.redis_url,
                "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1",
                **env,
            },
        )

    yield run


def _job_keys(stack: ProducerStack) -> int:
    raw = redis.Redis.from_url(stack.redis_url)
    try:
        return sum(1 for _ in raw.scan_iter("wq:job:*", _type="hash"))
    finally:
        raw.close()


def test_generate_and_wait_exit_codes(stack: ProducerStack, wavequeue: Run) -> None:
    completed = wavequeue("generate", "cli: a green kite", "--seed", "5", "--wait", "--json")
    assert completed.exit_code == 0, completed.output + completed.stderr
    record = json.loads(completed.stdout)
    assert record["status"] == "completed" and record["outputs"]

    stack.emulator.configure(
        faults={"prediction_failed": {"probability": 1, "prompt_contains": "cli-boom"}}
    )
    failed = wavequeue("generate", "cli-boom: a red kite", "--wait")
    assert failed.exit_code == 1
    assert "failed" in failed.stdout and "[1403]" in failed.stdout

    queued = wavequeue("generate", "cli: a slow kite", "--json")
    assert queued.exit_code == 0
    job_id = json.loads(queued.stdout)["job_id"]
    gave_up = wavequeue("wait", job_id, "--timeout", "0.05")
    assert gave_up.exit_code == 3
    assert "timed out" in gave_up.stderr
    assert wavequeue("wait", job_id, "--timeout", "30").exit_code == 0
    status = wavequeue("status", job_id)
    assert status.exit_code == 0 and f"job {job_id} completed" in status.stdout

    # A job that outlives its deadline ends timed_out: exit 3, like a wait that ran out.
    stack.emulator.configure(latency="fixed:5")
    late = wavequeue("generate", "cli: a late kite", "--deadline", "1", "--wait", "--json")
    assert late.exit_code == 3
    assert json.loads(late.stdout)["status"] == "timed_out"


def test_bad_input_is_one_line_per_problem_and_enqueues_nothing(
    stack: ProducerStack, wavequeue: Run
) -> None:
    before = _job_keys(stack)
    bad = wavequeue(
        "generate", "  ", "--seed", "-7", "--guidance-scale", "50", "--metadata", "{nope"
    )
    assert bad.exit_code == 2
    lines = bad.stderr.strip().splitlines()
    assert sorted(line.split(":")[1].strip() for line in lines) == [
        "guidance_scale",
        "metadata",
        "prompt",
        "seed",
    ]
    assert wavequeue("edit", "no-such.png", "make it blue").exit_code == 2
    assert wavequeue("chain", "--prompt", "x").exit_code == 2  # no --step
    assert wavequeue("status", "no-such-id").exit_code == 2
    assert _job_keys(stack) == before


def _batch_file(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_batch_of_a_hundred_completes_with_progress(
    stack: ProducerStack, wavequeue: Run, tmp_path: Path
) -> None:
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "blue.png")
    lines: list[object] = [
        {"kind": "text-to-image", "prompt": f"batch picture {n}", "seed": n} for n in range(98)
    ]
    lines.append({"kind": "edit", "image": "blue.png", "prompt": "batch: make it red"})
    lines.append(
        {"kind": "multi", "images": ["blue.png"], "prompt": "batch: tile it", "priority": "high"}
    )
    result = wavequeue("batch", str(_batch_file(tmp_path / "jobs.jsonl", lines)), "--json")

    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["completed"], summary["failed"]) == (100, 100, 0)
    assert [job["line"] for job in summary["jobs"]] == list(range(1, 101))
    assert "batch: 100/100 done, 100 completed, 0 failed" in result.stderr
    assert "jobs/s" in result.stderr
    assert stack.emulator.stats()["submissions"]["total"] == 100


def test_batch_with_bad_lines_reports_each_and_enqueues_nothing(
    stack: ProducerStack, wavequeue: Run, tmp_path: Path
) -> None:
    before = _job_keys(stack)
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"kind": "text-to-image", "prompt": "fine"})
        + "\n{not json\n"
        + json.dumps({"kind": "edit", "prompt": "no image"})
        + "\n\n"
        + json.dumps({"kind": "sculpt", "prompt": "x"})
        + "\n"
        + json.dumps({"kind": "text-to-image", "prompt": "x", "guidance_scale": 0})
        + "\n"
    )
    result = wavequeue("batch", str(path))

    assert result.exit_code == 2
    errors = result.stderr.strip().splitlines()
    assert [line.split(":")[1].strip() for line in errors] == [
        "line 2",
        "line 3",
        "line 5",
        "line 6",
    ]
    assert "image" in errors[1] and "kind" in errors[2] and "guidance_scale" in errors[3]
    assert _job_keys(stack) == before
    assert stack.emulator.stats()["submissions"]["total"] == 0


def test_batch_no_wait_prints_the_ids(wavequeue: Run, tmp_path: Path) -> None:
    path = _batch_file(tmp_path / "two.jsonl", [{"kind": "text-to-image", "prompt": "nw"}] * 2)
    result = wavequeue("batch", str(path), "--no-wait", "--json")
    assert result.exit_code == 0
    jobs = json.loads(result.stdout)["jobs"]
    assert [job["line"] for job in jobs] == [1, 2]
    assert len({job["job_id"] for job in jobs}) == 2


def test_chain_status_and_download(stack: ProducerStack, wavequeue: Run, tmp_path: Path) -> None:
    created = wavequeue(
        "chain",
        "--prompt",
        "cli chain: a paper boat",
        "--step",
        "cli chain: put it on a pond",
        "--step",
        json.dumps({"prompt": "cli chain: at sunset", "guidance_scale": 4}),
        "--wait",
        "--json",
    )
    assert created.exit_code == 0, created.stderr
    chain = json.loads(created.stdout)
    assert chain["status"] == "completed" and len(chain["steps"]) == 3

    status = wavequeue("status", chain["chain_id"])
    assert status.exit_code == 0
    assert f"chain {chain['chain_id']} completed (3 steps)" in status.stdout

    out = tmp_path / "out"
    saved = wavequeue("download", chain["chain_id"], "--out", str(out))
    assert saved.exit_code == 0, saved.stderr
    names = sorted(path.stem for path in out.iterdir())
    assert names == ["step1", "step2", "step3"]
    for path in out.iterdir():
        with Image.open(path) as image:
            image.verify()


def test_chain_from_a_local_image_fails_then_retries(
    stack: ProducerStack, wavequeue: Run, tmp_path: Path
) -> None:
    Image.new("RGB", (8, 8), "white").save(tmp_path / "start.png")
    stack.emulator.configure(
        faults={"prediction_failed": {"probability": 1, "prompt_contains": "cli-retry-boom"}}
    )
    failed = wavequeue(
        "chain",
        "--image",
        str(tmp_path / "start.png"),
        "--step",
        "cli retry: draw a cat",
        "--step",
        "cli-retry-boom: add a hat",
        "--wait",
    )
    assert failed.exit_code == 1
    chain_id = failed.stdout.split()[1]
    assert "failed at step 2 of 2" in failed.stdout

    stack.emulator.configure(faults=None)
    retried = wavequeue("retry", chain_id, "--wait", "--json")
    assert retried.exit_code == 0, retried.stderr
    assert json.loads(retried.stdout)["status"] == "completed"
    assert wavequeue("retry", chain_id).exit_code == 2  # completed: nothing to retry
