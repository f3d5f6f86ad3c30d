"""Low balance with a real worker and the emulator: once the sweeper reads a balance below
WAVEQUEUE_LOW_BALANCE, submission pauses fleet-wide (the jobs keep coming back and are
told to wait, none is submitted), a metric and a log line say why; a top-up resumes it,
and every job completes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.support.stack import WorkerStack, worker_stack
from worker.constants import BALANCE_KEY
from worker.ratelimit import AccountLimiter

MAX_T2I = "flux-kontext-max/text-to-image"  # $0.08 an image


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def _counter(stack: WorkerStack, name: str) -> int:
    return stack.jobs.store.counters().get((name, ()), 0)


def test_low_balance_pauses_submission_and_a_top_up_resumes_it(tmp_path: Path) -> None:
    settings = {
        "WAVEQUEUE_LOW_BALANCE": "0.50",
        "WAVEQUEUE_BALANCE_CHECK_INTERVAL": "1",
        # One at a time, so the balance falls job by job.
        "WAVEQUEUE_MAX_IN_FLIGHT": "1",
    }
    with worker_stack(
        tmp_path, settings=settings, emulator_config={"balance": "0.70"}, concurrency=4
    ) as stack:
        store = stack.jobs.store
        job_ids = [stack.jobs.enqueue(MAX_T2I, prompt=f"balance {i}") for i in range(20)]
        _until(lambda: store.client.hget(BALANCE_KEY, "low") == "1", 90, "the low balance seen")
        limiter = AccountLimiter(store.client, per_minute=100_000, max_in_flight=1)
        assert limiter.pause_state().reason.startswith("low balance: ")
        assert _counter(stack, "low_balance_pauses") == 1
        created = stack.emulator.stats()["predictions"]["created"]
        waits = _counter(stack, "limiter_waits")
        # The jobs keep asking and are told to wait: nothing is submitted meanwhile (the
        # one granted just before the pause, at most, goes out).
        _until(lambda: _counter(stack, "limiter_waits") >= waits + 10, 60, "jobs told to wait")
        assert stack.emulator.stats()["predictions"]["created"] <= created + 1
        assert "submission paused fleet-wide: low balance" in stack.worker_logs()
        unfinished = [r for r in store.get_many(job_ids) if r is not None and not r.is_terminal]
        assert unfinished

        stack.emulator.configure(balance=100)  # a top-up
        records = stack.jobs.wait(job_ids, timeout=120)
        assert [r.status.value for r in records] == ["completed"] * 20
        assert store.client.hget(BALANCE_KEY, "low") == "0"
        assert "submission resumes" in stack.worker_logs()
        assert _counter(stack, "low_balance_pauses") == 1
        # The jobs already at WaveSpeed when the pause came were billed as usual.
        billed = stack.emulator.stats()["billing"]["billed_micros"]
        assert billed == sum(r.cost_micros or 0 for r in records) == 20 * 80_000
