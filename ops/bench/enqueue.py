"""What enqueueing and waiting cost one producer process (``python -m ops.bench.enqueue``).

Starts a private ``redis-server`` (AOF on, as in production) in a temporary
directory and prints one table:

- **raw send_task**: the floor, Celery alone: ``app.send_task`` by name with no
  result backend, ``ignore_result`` and no task-sent event, the same app settings
  otherwise. No record is written.
- **submit**: ``JobClient.submit`` of a checked request, one call per job (the record
  write and the publish).
- **text_to_image**: the same through the public call, checks included.
- **submit_many**: ``JobClient.submit_many`` in batches of ``--batch``.
- **wait_all CPU**: the CPU time ``wait_all`` spends waiting on ``--wait-jobs`` jobs that
  end one by one, evenly over ``--wait-spread`` seconds (each end written the way the
  worker writes it, announced on pub/sub), measured on the waiting thread only.

Nothing runs the jobs (no worker): the queue only fills. Each figure is the median of
``--rounds`` rounds, with this process's CPU time per job beside the rate (the rate moves
with the machine's load much more than the CPU time does): compare figures of one run.
The script also runs on code that has no ``submit_many`` (the row then says so), so
the same command measures a branch before and after a change.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from ops.localstack.redis_server import RedisServer
from producer import JobClient
from worker.celery_config import make_app
from worker.constants import QUEUE_NORMAL, RUN_JOB_TASK
from worker.models import JobRecord, JobStatus
from worker.settings import Settings
from worker.store import JobStore, NewJob

MODEL = "flux-kontext-max/text-to-image"


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="wq-bench-enqueue-") as tmp:
        server = RedisServer(data_dir=Path(tmp) / "redis", appendonly=True).start()
        try:
            yield server
        finally:
            server.stop()


Figure = tuple[float, float]  # (jobs per second, CPU microseconds per job)


def rate(count: int, action: Callable[[], None]) -> Figure:
    """Jobs per second of ``action`` (which enqueues ``count`` jobs), and this process's CPU
    time per job (less disturbed than the rate by other work on the machine)."""
    started, cpu = time.perf_counter(), time.process_time()
    action()
    return count / (time.perf_counter() - started), (time.process_time() - cpu) / count * 1e6


def raw_send_task(url: str, count: int) -> Figure:
    app = make_app(Settings(redis_url=url))
    app.conf.result_backend = None
    app.conf.task_send_sent_event = False
    send = app.send_task
    send(RUN_JOB_TASK, kwargs={"job_id": "warm-up"}, queue=QUEUE_NORMAL, ignore_result=True)

    def run() -> None:
        for _ in range(count):
            send(
                RUN_JOB_TASK,
                kwargs={"job_id": uuid.uuid4().hex},
                queue=QUEUE_NORMAL,
                ignore_result=True,
            )

    try:
        return rate(count, run)
    finally:
        app.close()


def submit_one_by_one(client: JobClient, count: int) -> Figure:
    prepared = [client.prepare({"kind": "text-to-image", "prompt": f"p{i}"}) for i in range(count)]
    client.submit(prepared[0])  # builds the Celery app and its connection

    def run() -> None:
        for job in prepared:
            client.submit(job)

    return rate(count, run)


def text_to_image(client: JobClient, count: int) -> Figure:
    client.text_to_image("warm-up")

    def run() -> None:
        for i in range(count):
            client.text_to_image(f"prompt {i}")

    return rate(count, run)


def submit_many(client: JobClient, count: int, batch: int) -> Figure | None:
    many = getattr(client, "submit_many", None)
    if many is None:
        return None
    prepared = [client.prepare({"kind": "text-to-image", "prompt": f"p{i}"}) for i in range(count)]
    many(prepared[:1])

    def run() -> None:
        for start in range(0, count, batch):
            many(prepared[start : start + batch])

    return rate(count, run)


def wait_all_cpu(url: str, count: int, spread: float) -> tuple[float, float]:
    """(CPU seconds of the waiting thread, wall seconds) for ``count`` jobs that end one
    after another, evenly over ``spread`` seconds, while ``wait_all`` waits for them."""
    store = JobStore.from_url(url, record_ttl=3600)
    now = store.clock()
    ids = [uuid.uuid4().hex for _ in range(count)]
    store.create_jobs(
        [
            NewJob(
                JobRecord(
                    id=job_id,
                    model=MODEL,
                    input={"prompt": "wait"},
                    status=JobStatus.QUEUED,
                    created_at=now,
                    deadline_at=now + 600,
                )
            )
            for job_id in ids
        ]
    )
    result: dict[str, float] = {}
    subscribed = threading.Event()

    def wait() -> None:
        with JobClient(redis_url=url, reread_interval=2.0) as client:
            cpu = time.thread_time()
            wall = time.perf_counter()
            subscribed.set()
            client.wait_all(ids, timeout=300)
            result["cpu"] = time.thread_time() - cpu
            result["wall"] = time.perf_counter() - wall

    waiter = threading.Thread(target=wait)
    waiter.start()
    subscribed.wait()
    time.sleep(0.5)  # the waiter has subscribed and read once
    started = time.monotonic()
    for number, job_id in enumerate(ids):
        # Endings spread evenly over ``spread`` seconds, as a worker's would be.
        time.sleep(max(0.0, started + spread * number / count - time.monotonic()))
        for status in ("submitting", "submitted", "completed"):
            store.transition(job_id, updates={"status": status})
    waiter.join()
    store.client.close()
    return result["cpu"], result["wall"]


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


def median(values: list[Figure | None]) -> Figure | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.median(v[0] for v in present), statistics.median(v[1] for v in present)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per enqueue round")
    parser.add_argument("--batch", type=int, default=1000, help="submit_many batch size")
    parser.add_argument("--wait-jobs", type=int, default=1000)
    parser.add_argument(
        "--wait-spread", type=float, default=10.0, help="seconds over which those jobs end"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rows: dict[str, list[Figure | None]] = {
        "raw send_task": [],
        "submit": [],
        "text_to_image": [],
        "submit_many": [],
    }
    waits: list[tuple[float, float]] = []
    with private_redis() as server:
        for _ in range(args.rounds):
            rows["raw send_task"].append(raw_send_task(server.url, args.jobs))
            with JobClient(redis_url=server.url) as client:
                rows["submit"].append(submit_one_by_one(client, args.jobs))
                rows["text_to_image"].append(text_to_image(client, args.jobs))
                rows["submit_many"].append(submit_many(client, args.jobs, args.batch))
            waits.append(wait_all_cpu(server.url, args.wait_jobs, args.wait_spread))
            flush(server.url)

    floor = median(rows["raw send_task"])
    print(f"{'figure':<34} {'jobs/s':>8} {'x floor':>8} {'CPU/job':>9}")
    for name, values in rows.items():
        value = median(values)
        label = f"{name} (batches of {args.batch:,})" if name == "submit_many" else name
        if value is None:
            print(f"{label:<34} {'n/a':>8}")
            continue
        ratio = f"{value[0] / floor[0]:.2f}" if floor else ""
        print(f"{label:<34} {value[0]:>8,.0f} {ratio:>8} {value[1]:>7,.0f}us")
    cpu = statistics.median(w[0] for w in waits)
    wall = statistics.median(w[1] for w in waits)
    label = f"wait_all, {args.wait_jobs:,} jobs over {args.wait_spread:g}s"
    print(f"{label:<34} {cpu:>7.2f}s CPU ({wall:.2f}s wall)")
    print(f"({args.jobs:,} jobs per round, median of {args.rounds} rounds, AOF on)")


if __name__ == "__main__":
    main()
