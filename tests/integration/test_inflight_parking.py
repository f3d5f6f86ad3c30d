"""Jobs behind the in-flight cap park and are woken, they do not spin.

A real worker, the emulator, a cap of 2 and 12 jobs: the ten refused at first park with
no message; each run that ends a job wakes the one parked longest. Every job parks at
most once (a wake always finds the slot its waker freed, since nothing else arrives),
and the emulator never holds more than two predictions.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.stack import worker_stack

T2I = "flux-kontext-max/text-to-image"


def test_a_line_behind_the_cap_waits_parked_and_is_woken(tmp_path: Path) -> None:
    settings = {"WAVEQUEUE_MAX_IN_FLIGHT": "2", "WAVEQUEUE_RATE_LIMIT_PER_MINUTE": "100000"}
    with worker_stack(tmp_path, latency="fixed:0.3", settings=settings, concurrency=4) as stack:
        job_ids = [stack.jobs.enqueue(T2I, prompt=f"parked {i}") for i in range(12)]
        records = stack.jobs.wait(job_ids, timeout=90)
        assert [r.status.value for r in records] == ["completed"] * 12
        counters = stack.jobs.store.counters()
        assert counters[("parked", ())] >= 10 - 2  # most waited their turn
        waits = [int(stack.jobs.store.snapshot(j).number("inflight_waits")) for j in job_ids]
        assert max(waits) <= 1, waits
        stats = stack.emulator.stats()
        assert stats["concurrency"]["peak"] <= 2
        assert max(stack.input_submissions().values()) == 1
