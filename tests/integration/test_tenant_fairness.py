"""Tenant fairness with real Celery queues: a big tenant's backlog does not starve a small one.

Tenant A enqueues 2,000 jobs, then tenant B enqueues 20, through the producer (each job's
record and its message in one step, so A's 2,000 messages sit ahead of B's 20 in the
FIFO queue). With the shared limit at 100 submissions a minute, every one of B's jobs
must reach WaveSpeed before A's 200th: the emulator's record of predictions, in the order
they were created, is the judge. Without the fair line, B's jobs would take slots at the
end of A's schedule, 20 minutes on.
"""

from __future__ import annotations

import time
from pathlib import Path

from producer import JobClient
from tests.support.stack import worker_stack
from worker.settings import Settings

T2I = "flux-kontext-max/text-to-image"
A_JOBS = 2000
B_JOBS = 20
#: B must be done before A's 200th submission.
A_BOUND = 200


def _tenant_of(prediction: dict[str, object]) -> str:
    prompt = str(prediction["input"]["prompt"])  # type: ignore[index]
    return prompt.split()[1]


def test_a_small_tenant_is_not_starved_by_a_big_backlog(tmp_path: Path) -> None:
    settings = {"WAVEQUEUE_RATE_LIMIT_PER_MINUTE": "100", "WAVEQUEUE_JOB_DEADLINE": "3600"}
    with (
        worker_stack(tmp_path, latency="fixed:0.2", settings=settings, concurrency=8) as stack,
        JobClient(Settings.from_env(stack.env)) as client,
    ):
        a_jobs = client.submit_many(
            client.prepare_many(
                [
                    {"kind": "text-to-image", "prompt": f"tenant a {i}", "tenant": "a"}
                    for i in range(A_JOBS)
                ]
            )
        )
        b_jobs = client.submit_many(
            client.prepare_many(
                [
                    {"kind": "text-to-image", "prompt": f"tenant b {i}", "tenant": "b"}
                    for i in range(B_JOBS)
                ]
            )
        )
        assert len(a_jobs) == A_JOBS and len(b_jobs) == B_JOBS
        # Until every B job is submitted, or A reaches its 200th (then B lost).
        deadline = time.monotonic() + 600
        while True:
            order = [_tenant_of(p) for p in stack.emulator.predictions()]
            if order.count("b") == B_JOBS or order.count("a") >= A_BOUND:
                break
            assert time.monotonic() < deadline, f"stuck: {order.count('a')} A, {order.count('b')} B"
            time.sleep(1.0)
        assert order.count("b") == B_JOBS, f"A reached {A_BOUND} first: {order}"
        a_before_last_b = order[: len(order) - order[::-1].index("b")].count("a")
        assert a_before_last_b < A_BOUND, order
        # Each B job went to WaveSpeed once.
        b_records = client.get_many(b_jobs)
        assert all(r.tenant == "b" and r.attempts == 1 for r in b_records)
        assert all(n == 1 for n in stack.input_submissions().values())
        print(f"B's last submission came after {a_before_last_b} of A's")
