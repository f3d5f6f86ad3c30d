"""Daily budgets with real worker processes, the emulator and a private redis-server:
three workers racing never spend past a cap, held jobs wait with no message and go on
when the cap is raised (from the CLI), a tenant's cap holds only that tenant, and a job
that asks to fail at a spent budget fails at once without a submission."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from producer.cli import main
from tests.support.stack import WorkerStack, worker_stack
from worker.constants import HELD_KEY, QUEUES, RESERVED_KEY
from worker.models import JobRecord

PRO_T2I = "flux-kontext-pro/text-to-image"
MAX_T2I = "flux-kontext-max/text-to-image"


def _wait_until(
    stack: WorkerStack, job_ids: list[str], done: Callable[[JobRecord], bool], timeout: float
) -> list[JobRecord]:
    """The records once every one satisfies ``done`` (re-read every 50 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        records = stack.jobs.store.get_many(job_ids)
        if all(r is not None and done(r) for r in records):
            return [r for r in records if r is not None]
        if time.monotonic() > deadline:
            states = sorted(f"{r.status.value}/{r.held}" if r else "missing" for r in records)
            raise TimeoutError(f"jobs not there in {timeout}s: {states}")
        time.sleep(0.05)


def _settled(record: JobRecord) -> bool:
    return record.is_terminal or record.held == "budget"


def _cli(stack: WorkerStack, *args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env=stack.env)
    assert result.exit_code == 0, result.output
    return result


def test_three_workers_never_pass_a_cap_and_held_jobs_go_on_when_it_is_raised(
    tmp_path: Path,
) -> None:
    settings = {"WAVEQUEUE_DAILY_BUDGET": "0.40"}  # ten Kontext Pro images
    with worker_stack(tmp_path, settings=settings, workers=3, concurrency=4) as stack:
        job_ids = [stack.jobs.enqueue(PRO_T2I, prompt=f"capped {i}") for i in range(30)]
        records = _wait_until(stack, job_ids, _settled, timeout=120)

        completed = [r for r in records if r.status.value == "completed"]
        held = [r for r in records if r.held == "budget"]
        assert len(completed) == 10 and len(held) == 20
        billing = stack.emulator.stats()["billing"]
        # Not one job past the cap (the claim reserves atomically across the workers).
        assert billing["billed_micros"] == 400_000
        assert stack.emulator.stats()["predictions"]["created"] == 10
        assert all(r.status.value == "queued" and r.cost_micros is None for r in held)
        # Held with no message anywhere: no queue holds one, and each job was held once.
        client = stack.jobs.store.client
        assert client.zcard(HELD_KEY) == 20
        assert sum(client.llen(queue) for queue in QUEUES) == 0
        holds = stack.jobs.store.counters()[
            ("jobs_held", (("reason", "budget"), ("tenant", "default")))
        ]
        assert holds == 20
        shown = _cli(stack, "status", held[0].id)
        assert "held: budget" in shown.output

        raised = _cli(stack, "budget", "set", "--account", "2.00")
        assert "held job(s) sent again" in raised.output
        records = _wait_until(stack, job_ids, lambda r: r.is_terminal, timeout=120)
        assert [r.status.value for r in records] == ["completed"] * 30
        assert all(r.held is None and r.cost_micros == 40_000 for r in records)
        assert stack.emulator.stats()["billing"]["billed_micros"] == 1_200_000
        assert max(stack.input_submissions().values()) == 1
        spend = json.loads(_cli(stack, "spend", "--days", "2", "--json").output)
        total = sum(row["billed_micros"] for row in spend["rows"] if row["tenant"] == "(all)")
        assert total == 1_200_000
        assert client.hget(RESERVED_KEY, "total") == "0"


def test_a_tenant_cap_holds_that_tenant_only(tmp_path: Path) -> None:
    settings = {"WAVEQUEUE_TENANT_BUDGETS": "acme=0.16"}  # two Kontext Max images
    with worker_stack(tmp_path, settings=settings, workers=1, concurrency=4) as stack:
        acme = [stack.jobs.enqueue(MAX_T2I, prompt=f"acme {i}", tenant="acme") for i in range(5)]
        beta = [stack.jobs.enqueue(MAX_T2I, prompt=f"beta {i}", tenant="beta") for i in range(5)]
        records = _wait_until(stack, acme + beta, _settled, timeout=90)
        by_id = {r.id: r for r in records}
        assert all(by_id[j].status.value == "completed" for j in beta)
        assert sorted(by_id[j].status.value for j in acme) == ["completed"] * 2 + ["queued"] * 3

        shown = json.loads(_cli(stack, "budget", "show", "--tenant", "acme", "--json").output)
        assert shown["remaining_micros"] == 0
        assert shown["tenant_budget"]["cap_micros"] == 160_000
        assert shown["held_jobs"] == 3
        spend = json.loads(_cli(stack, "spend", "--tenant", "acme", "--json").output)
        assert spend["rows"][0]["billed_micros"] == 160_000  # today, acme

        _cli(stack, "budget", "set", "--tenant", "acme", "1")
        records = _wait_until(stack, acme, lambda r: r.is_terminal, timeout=90)
        assert [r.status.value for r in records] == ["completed"] * 5


def test_a_job_that_asks_to_fail_at_a_spent_budget_fails_at_once(tmp_path: Path) -> None:
    settings = {"WAVEQUEUE_DAILY_BUDGET": "0"}
    with worker_stack(tmp_path, settings=settings, workers=1) as stack:
        job_id = stack.jobs.enqueue(PRO_T2I, prompt="no money", on_budget="fail")
        [record] = stack.jobs.wait([job_id], timeout=60)
        assert record.status.value == "failed"
        assert record.error is not None and record.error.code == "budget_exceeded"
        assert "daily budget of $0.00" in record.error.message
        assert record.cost_micros == 0
        assert stack.emulator.stats()["submissions"]["total"] == 0
