"""The submit rate a saturated fleet gets against the WaveSpeed limit (``python -m
ops.bench.rate_limit``).

Starts a private ``redis-server``, the emulator as its own process with
``--rate-limit-per-minute N`` (it answers 429 over N images in any sliding 60 s
window, as WaveSpeed does), and ``--workers`` real ``wavequeue worker`` processes
with ``WAVEQUEUE_RATE_LIMIT_PER_MINUTE=N``. It enqueues more jobs than the run can
submit, so the fleet stays saturated, lets it run ``--seconds`` from the first
submit, then reads every prediction's creation time (the moment its POST passed the
emulator's limit) and prints one table: the configured rate, what the limiter aims
at (N per 60 s + margin), the observed rate over the whole run and after its first
minute, the most images in any 60 s window, the closest the stream came to a 429
(the shortest span holding N + 1 images: a 429 needs it under 60 s), the 429s the
emulator answered, and how often the limiter said "wait" per grant.

Exits 1 if the emulator answered any 429 or the observed rate after the first
minute is more than 5% below the configured one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis
import requests

from ops.localstack.redis_server import RedisServer
from producer import JobClient
from worker.constants import COUNTERS_KEY
from worker.ratelimit import (
    DEFAULT_MARGIN_SECONDS,
    DEFAULT_SLACK_SECONDS,
    WINDOW_SECONDS,
)

API_KEY = "bench-rate-key"
SINGLE = "wavespeed-ai/flux-kontext-max/text-to-image"
MULTI = "wavespeed-ai/flux-kontext-pro/text-to-image"  # num_images 1-4
REPO_ROOT = Path(__file__).resolve().parents[2]
WAVEQUEUE = str(Path(sys.executable).with_name("wavequeue"))
LISTENING = re.compile(r"listening on (http://\S+)")
TOLERANCE = 0.05
#: Quick polls (the emulator answers in 0.3 s); everything else at its default, so a
#: limiter wait is honoured up to WAVEQUEUE_RETRY_MAX_DELAY (60 s) as in production.
WORKER_SETTINGS = {
    "WAVEQUEUE_POLL_MIN_INTERVAL": "0.5",
    "WAVEQUEUE_POLL_MAX_INTERVAL": "2",
    "WAVEQUEUE_FIRST_POLL_DEFAULT": "0.5",
    "WAVEQUEUE_MAX_IN_FLIGHT": "10000",
}


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds since the first arrival
    images: int


@contextmanager
def emulator_process(per_minute: int) -> Iterator[str]:
    argv = [
        sys.executable, "-m", "emulator", "--port", "0", "--api-key", API_KEY,
        "--latency", "fixed:0.3", "--image-scale", "0.1",
        "--rate-limit-per-minute", str(per_minute),
    ]  # fmt: skip
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT
    )
    try:
        assert process.stdout is not None
        match = LISTENING.search(process.stdout.readline())
        if match is None:
            raise RuntimeError("the emulator did not start")
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def worker_processes(count: int, env: dict[str, str], log_dir: Path) -> Iterator[None]:
    processes: list[subprocess.Popen[bytes]] = []
    logs = [log_dir / f"worker{index}.log" for index in range(count)]
    try:
        for index, log_path in enumerate(logs):
            argv = [
                WAVEQUEUE, "worker", "--pool", "threads", "--concurrency", "4",
                "--hostname", f"bench{index}@%h", "--without-gossip", "--without-mingle",
            ]  # fmt: skip
            with log_path.open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        deadline = time.monotonic() + 120
        while not all(" ready." in path.read_text(errors="replace") for path in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"workers did not start; see {log_dir}")
            time.sleep(0.2)
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def enqueue(client: JobClient, images_needed: int, mix: list[int]) -> int:
    """Enough jobs for ``images_needed`` images, cycling through the ``mix`` of sizes."""
    enqueued = jobs = 0
    while enqueued < images_needed:
        images = mix[jobs % len(mix)]
        if images == 1:
            client.text_to_image(f"rate bench {jobs}", model=SINGLE)
        else:
            client.text_to_image(f"rate bench {jobs}", model=MULTI, num_images=images)
        enqueued += images
        jobs += 1
    return jobs


def arrivals(base_url: str) -> list[Arrival]:
    listed = requests.get(f"{base_url}/_emulator/predictions", timeout=30).json()
    stamped = sorted(
        (
            datetime.fromisoformat(item["created_at"]).timestamp(),
            int(item["input"].get("num_images", 1)),
        )
        for item in listed
    )
    first = stamped[0][0]
    return [Arrival(at - first, images) for at, images in stamped]


def most_in_any_window(stream: list[Arrival], window: float = WINDOW_SECONDS) -> int:
    """The emulator's rule: at each arrival, images in (at - 60 s, at]."""
    most = in_window = oldest = 0
    for arrival in stream:
        in_window += arrival.images
        while stream[oldest].at <= arrival.at - window:
            in_window -= stream[oldest].images
            oldest += 1
        most = max(most, in_window)
    return most


def closest_call(stream: list[Arrival], per_minute: int) -> float | None:
    """The shortest span holding more than ``per_minute`` images (None if none does)."""
    shortest: float | None = None
    end = total = 0
    for first in stream:
        while end < len(stream) and total <= per_minute:
            total += stream[end].images
            end += 1
        if total <= per_minute:
            break
        span = stream[end - 1].at - first.at
        shortest = span if shortest is None else min(shortest, span)
        total -= first.images
    return shortest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-minute", type=int, default=120, help="the limit, both sides")
    parser.add_argument("--seconds", type=float, default=180, help="run length from 1st submit")
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument(
        "--mix",
        default="1",
        help="num_images of successive jobs, cycled, e.g. 1,1,1,1,1,1,1,1,1,3",
    )
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this directory")
    args = parser.parse_args()
    mix = [int(value) for value in args.mix.split(",")]
    schedule = WINDOW_SECONDS + DEFAULT_MARGIN_SECONDS + DEFAULT_SLACK_SECONDS
    target = args.per_minute * WINDOW_SECONDS / schedule
    print(
        f"{args.workers} workers x 4 threads, limit {args.per_minute}/min on both sides, "
        f"{args.seconds:.0f}s saturated, jobs of {args.mix} images; {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{value:.2f}' for value in os.getloadavg())}",
        flush=True,
    )
    with ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rate-bench-")))
        redis_server = RedisServer(data_dir=data_dir / "redis").start()
        stack.callback(redis_server.stop)
        base_url = stack.enter_context(emulator_process(args.per_minute))
        env = {
            "REDIS_URL": redis_server.url,
            "WAVESPEED_API_KEY": API_KEY,
            "WAVESPEED_BASE_URL": base_url,
            "WAVEQUEUE_RATE_LIMIT_PER_MINUTE": str(args.per_minute),
            **WORKER_SETTINGS,
        }
        log_dir = args.logs or data_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(worker_processes(args.workers, env, log_dir))
        client = stack.enter_context(JobClient(redis_url=redis_server.url))
        images_needed = int(args.per_minute * (args.seconds / 60 + 0.5)) + 10
        jobs = enqueue(client, images_needed, mix)
        print(f"enqueued {jobs} jobs ({images_needed}+ images)", flush=True)
        stats_url = f"{base_url}/_emulator/stats"
        while requests.get(stats_url, timeout=10).json()["predictions"]["created"] == 0:
            time.sleep(0.05)
        time.sleep(args.seconds)
        stats = requests.get(stats_url, timeout=10).json()
        stream = [a for a in arrivals(base_url) if a.at < args.seconds]
        counters = redis.Redis.from_url(redis_server.url, decode_responses=True).hgetall(
            COUNTERS_KEY
        )

    images = sum(arrival.images for arrival in stream)
    after_first = sum(a.images for a in stream if a.at >= WINDOW_SECONDS)
    overall = images / args.seconds * 60
    steady = after_first / (args.seconds - WINDOW_SECONDS) * 60
    waits = int(counters.get("limiter_waits", 0))
    closest = closest_call(stream, args.per_minute)
    rejected = int(stats["rate_limited"])
    print()
    print(
        "| limit/min | limiter aims at | observed, whole run | observed, after 1st minute "
        "| most in any 60 s | N+1 images in at least | 429s | limiter waits per submit |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.per_minute} | {target:.1f} ({target / args.per_minute:.1%}) "
        f"| {overall:.1f} ({overall / args.per_minute:.1%}) "
        f"| {steady:.1f} ({steady / args.per_minute:.1%}) "
        f"| {most_in_any_window(stream)} "
        f"| {'-' if closest is None else f'{closest:.2f}s'} "
        f"| {rejected} | {waits / max(1, len(stream)):.2f} |"
    )
    passed = rejected == 0 and steady >= (1 - TOLERANCE) * args.per_minute
    print(
        f"\n{images} images in {len(stream)} submits over {args.seconds:.0f}s; "
        f"{'within' if passed else 'OUTSIDE'} the target (no 429, rate within "
        f"{TOLERANCE:.0%} of the limit)."
    )
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
