"""The soak's producer, a process of its own so that its memory is measured like the
workers': ``python -m ops.bench.soak.load '<json plan>'``.

It first enqueues a burst (``burst`` jobs at once, so that every pool the workers
grow on demand, their threads and their Redis and broker connections, reaches the size
the load can ever need while the run is still warming up), then enqueues text-to-image
jobs at a steady rate through ``JobClient`` (as a backend
does) and, on a thread, waits for one job in ``wait_every`` with ``wait_all``, in
batches, as a backend that reports results would. Every second it writes its progress
(jobs enqueued, jobs waited for) to ``progress_path``; at the end it adds the ids of
the last jobs it waited for, whose records the harness measures, and stays until
``release_path`` exists (so the harness can sample it and take its last heap
snapshot after the load, not during it).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from producer import JobClient
from worker.memory_trace import start as start_memory_trace
from worker.settings import Settings

MODEL = "flux-kontext-pro/text-to-image"
#: Ids kept for the record-size measurement.
SAMPLE_IDS = 200
WAIT_BATCH = 20
WAIT_TIMEOUT = 300.0
#: Longest stay after the load when the harness never releases the producer.
LINGER = 300.0


class SampleWaiter:
    """Waits for the jobs handed to it, ``WAIT_BATCH`` at a time, on its own thread."""

    def __init__(self, client: JobClient) -> None:
        self._client = client
        self._pending: queue.Queue[str | None] = queue.Queue()
        self.waited = 0
        self.unfinished = 0
        self.recent: list[str] = []
        self._thread = threading.Thread(target=self._run, name="soak-waiter", daemon=True)
        self._thread.start()

    def add(self, job_id: str) -> None:
        self._pending.put(job_id)

    def finish(self) -> None:
        self._pending.put(None)
        self._thread.join()

    def _run(self) -> None:
        done = False
        while not done:
            batch: list[str] = []
            while len(batch) < WAIT_BATCH:
                job_id = self._pending.get()
                if job_id is None:
                    done = True
                    break
                batch.append(job_id)
            if batch:
                self._wait(batch)

    def _wait(self, batch: list[str]) -> None:
        try:
            self._client.wait_all(batch, timeout=WAIT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
            self.unfinished += len(batch)
            print(f"soak producer: a wait ended early ({exc})", file=sys.stderr)
            return
        self.waited += len(batch)
        self.recent = (self.recent + batch)[-SAMPLE_IDS:]


def write_progress(path: Path, progress: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(progress))
    partial.replace(path)


def steady_load(
    client: JobClient,
    waiter: SampleWaiter,
    *,
    rate: float,
    seconds: float,
    wait_every: int,
    report: Callable[[int], None],
    label: str,
) -> int:
    """Enqueue ``rate`` jobs a second for ``seconds``, handing one in ``wait_every`` to
    the waiter and reporting the count every second; the jobs enqueued."""
    total = round(seconds * rate)  # 100 jobs at 30/s: 3.33 s, and 100 jobs, not 99
    started = time.monotonic()
    enqueued, next_report = 0, 0.0
    while (now := time.monotonic() - started) < seconds:
        due = min(int(now * rate) + 1, total)  # jobs due by now
        while enqueued < due:
            job_id = client.text_to_image(f"{label} {enqueued}", model=MODEL)
            if enqueued % wait_every == 0:
                waiter.add(job_id)
            enqueued += 1
        if now >= next_report:
            report(enqueued)
            next_report = now + 1.0
        time.sleep(max(0.0, (enqueued / rate) - (time.monotonic() - started)))
    report(enqueued)
    return enqueued


def run(plan: dict[str, Any]) -> None:
    settings = Settings(redis_url=plan["redis_url"])
    if plan.get("memory_trace_dir"):
        start_memory_trace(
            plan["memory_trace_dir"], "producer", sites=bool(plan.get("memory_trace_sites"))
        )
    progress_path = Path(plan["progress_path"])
    rate, seconds, wait_every = float(plan["rate"]), float(plan["seconds"]), int(plan["wait_every"])
    client = JobClient(settings)
    waiter = SampleWaiter(client)
    for n in range(int(plan.get("burst", 0))):
        client.text_to_image(f"soak burst {n}", model=MODEL)
    warmup_jobs = int(plan.get("warmup_jobs", 0))
    if warmup_jobs:
        warmup_seconds = warmup_jobs / float(plan["warmup_rate"])
        steady_load(
            client,
            waiter,
            rate=float(plan["warmup_rate"]),
            seconds=warmup_seconds,
            wait_every=wait_every,
            report=lambda n: write_progress(progress_path, {"warmup": n, "enqueued": 0}),
            label="soak warm-up",
        )
    enqueued = steady_load(
        client,
        waiter,
        rate=rate,
        seconds=seconds,
        wait_every=wait_every,
        report=lambda n: write_progress(
            progress_path, {"enqueued": n, "waited": waiter.waited, "measured": True}
        ),
        label="soak job",
    )
    waiter.finish()
    write_progress(
        progress_path,
        {
            "enqueued": enqueued,
            "waited": waiter.waited,
            "unfinished_waits": waiter.unfinished,
            "sample_ids": waiter.recent,
            "measured": True,
            "done": True,
        },
    )
    client.close()
    release, until = Path(plan["release_path"]), time.monotonic() + LINGER
    while not release.exists() and time.monotonic() < until:
        time.sleep(0.2)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
