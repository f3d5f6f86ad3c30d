"""What stronger replication costs a producer (``python -m ops.bench.redis_replication``).

Under Sentinel, a failover can lose the writes the old master acknowledged but had
not yet sent to the replica. Redis has two knobs against that; this measures what
each costs the job store's own write (``JobStore.create_job``, the Lua script every
enqueue runs) on a master with one replica, both on this machine's loopback:

- ``async``: plain asynchronous replication (wavequeue's default);
- ``min-replicas 1``: ``min-replicas-to-write 1`` and ``min-replicas-max-lag 10`` on
  the master: a write is refused unless a replica acknowledged within the last 10 s;
- ``WAIT 1``: the write, then ``WAIT 1 1000``: the client blocks until one replica
  has the write (or 1 s passes).

For each: the median and 99th-percentile latency of one enqueue write from one
client, and writes per second from ``--threads`` clients at once. A last row shows
what ``min-replicas-to-write`` trades for it: with the replica stopped, how long
until the master refuses writes (``NOREPLICAS``), which a producer then sees as an
error. Loopback has no network latency: across machines, add one round trip to the
replica to every ``WAIT`` write.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from ops.localstack.redis_server import find_redis_server, free_port
from worker.models import JobRecord, JobStatus
from worker.settings import Settings
from worker.store import JobStore

MODEL = "flux-kontext-max/text-to-image"


@contextmanager
def redis_process(data_dir: Path, *args: str) -> Iterator[int]:
    """A redis-server on a free port (AOF on, as in production); yields the port."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
        "--dir", str(data_dir), "--appendonly", "yes", "--save", "",
        "--logfile", str(data_dir / "redis.log"), *args,
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def wait_in_sync(replica_port: int) -> None:
    client = redis.Redis(port=replica_port, decode_responses=True)
    while client.info("replication").get("master_link_status") != "up":
        time.sleep(0.05)
    client.close()


def record() -> JobRecord:
    now = time.time()
    return JobRecord(
        id=uuid.uuid4().hex,
        model=MODEL,
        input={"prompt": "a benchmark lighthouse", "seed": 7},
        status=JobStatus.QUEUED,
        created_at=now,
        deadline_at=now + 900,
    )


def enqueue_write(store: JobStore, wait_for_replica: bool) -> Callable[[], None]:
    def write() -> None:
        store.create_job(record())
        if wait_for_replica:
            store.client.wait(1, 1000)

    return write


def latencies(write: Callable[[], None], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        write()
        times.append(time.perf_counter() - started)
    return times


def throughput(write: Callable[[], None], threads: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    done = [0] * threads

    def loop(index: int) -> None:
        while time.monotonic() < stop:
            write()
            done[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / seconds


def refusal_delay(master_port: int, replica_port: int, lag: int) -> str:
    """Seconds from stopping the replica until the master refuses a write."""
    client = redis.Redis(port=master_port)
    redis.Redis(port=replica_port).shutdown(nosave=True)
    started = time.monotonic()
    while time.monotonic() - started < lag + 10:
        try:
            client.set("probe", "1")
        except redis.ResponseError as exc:
            if "NOREPLICAS" in str(exc):
                return f"{time.monotonic() - started:.1f}s"
            raise
        time.sleep(0.1)
    return "never"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000, help="writes for the latencies")
    parser.add_argument("--threads", type=int, default=8, help="clients for the throughput")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    args = parser.parse_args(argv)

    rows = []
    lag = 10
    min_replicas = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", str(lag))
    variants = [("async", (), False), ("min-replicas 1", min_replicas, False), ("WAIT 1", (), True)]
    refused_after = "-"
    with tempfile.TemporaryDirectory(prefix="wq-bench-") as tmp:
        for name, master_args, wait in variants:
            base = Path(tmp) / name.replace(" ", "-")
            with (
                redis_process(base / "master", *master_args) as master_port,
                redis_process(
                    base / "replica", "--replicaof", "127.0.0.1", str(master_port)
                ) as replica_port,
            ):
                wait_in_sync(replica_port)
                settings = Settings(redis_url=f"redis://127.0.0.1:{master_port}/0")
                store = JobStore.from_settings(settings)
                write = enqueue_write(store, wait)
                times = latencies(write, args.writes)
                rate = throughput(write, args.threads, args.seconds)
                cuts = statistics.quantiles(times, n=100)
                rows.append((name, cuts[49] * 1000, cuts[98] * 1000, rate))
                if master_args:
                    refused_after = refusal_delay(master_port, replica_port, lag)
                store.client.close()

    base_rate = rows[0][3]
    print(f"\nenqueue write (JobStore.create_job), master + 1 replica on loopback, "
          f"{args.writes} writes, {args.threads} clients for {args.seconds:g}s\n")  # fmt: skip
    print(f"{'variant':<16} {'p50 ms':>8} {'p99 ms':>8} {'writes/s':>10} {'vs async':>9}")
    for name, p50, p99, rate in rows:
        print(f"{name:<16} {p50:>8.2f} {p99:>8.2f} {rate:>10.0f} {rate / base_rate:>8.0%}")
    print(
        f"\nmin-replicas-to-write 1, min-replicas-max-lag {lag}: with the replica down, "
        f"the master refused writes (NOREPLICAS) after {refused_after}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
