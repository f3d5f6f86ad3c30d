"""What the fair line costs per submit (``python -m ops.bench.fair_gate``).

Runs the shared limiter's script against a private ``redis-server`` with an explicit
clock (minutes of traffic in seconds, nothing depends on the machine's speed), the way
workers call it: every job asks when its message runs, comes back when told (capped at
``WAVEQUEUE_RETRY_MAX_DELAY``, 60 s, as the runner caps it) or, in the fair line, when a
call gives it a slot (its message is sent then, with a countdown to the slot).

Two scenarios, each with this version's limiter and, with ``--before REF``, with the
limiter of that git revision (loaded from ``git show REF:worker/ratelimit.py``):

* ``idle``: one job at a time on an idle account (every submit granted at once);
* ``backlog``: ``--jobs`` jobs of two tenants asking at once at ``--rate`` a minute,
  run until ``--grants`` submits are granted.

For each it prints, per granted submit: limiter calls (each is a run of ``run_job`` in
a worker, about a millisecond of its CPU and three more Redis round trips), Redis
commands (``INFO commandstats``, the commands inside the scripts included) and Redis
CPU (``INFO cpu``, user + sys).
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ops.localstack.redis_server import RedisServer
from worker import ratelimit
from worker.fairness import line_member

T0 = 3_000_000.0
REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_WAIT = 60.0


@dataclass
class Cost:
    label: str
    grants: int
    calls: int
    commands: int
    cpu_seconds: float

    def row(self) -> str:
        per = max(1, self.grants)
        return (
            f"| {self.label} | {self.grants} | {self.calls / per:.2f} | "
            f"{self.commands / per:.1f} | {self.cpu_seconds / per * 1e6:.0f} |"
        )


def _old_module(ref: str) -> types.ModuleType:
    """The limiter of ``ref``, loaded under another name (its constants inlined if they
    have left ``worker.constants`` since)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:worker/ratelimit.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    source = source.replace(
        "from worker.constants import IN_FLIGHT_KEY, KEY_PREFIX, PARKED_KEY, RATE_BUCKET_KEY, "
        "WAKING_KEY",
        "from worker.constants import IN_FLIGHT_KEY, KEY_PREFIX, RATE_BUCKET_KEY\n"
        'PARKED_KEY = KEY_PREFIX + "ratelimit:parked"\n'
        'WAKING_KEY = KEY_PREFIX + "ratelimit:waking"',
    )
    path = Path(tempfile.mkdtemp()) / "old_ratelimit.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_ratelimit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _stats(client: redis.Redis) -> tuple[int, float]:
    commands = sum(int(v["calls"]) for v in client.info("commandstats").values())
    cpu = client.info("cpu")
    return commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _measure(client: redis.Redis, label: str, run: Callable[[], tuple[int, int]]) -> Cost:
    client.flushall()
    client.config_resetstat()
    before = _stats(client)
    grants, calls = run()
    after = _stats(client)
    # INFO itself and CONFIG RESETSTAT are not the limiter's: two INFO calls per reading.
    return Cost(label, grants, calls, after[0] - before[0] - 2, after[1] - before[1])


def _idle(
    module: types.ModuleType, client: redis.Redis, jobs: int
) -> Callable[[], tuple[int, int]]:
    def run() -> tuple[int, int]:
        limiter = module.AccountLimiter(client, per_minute=500, max_in_flight=10_000)
        grants = 0
        for index in range(jobs):
            # One job every 10 s: the account is idle each time.
            permit = limiter.acquire(f"j{index}", images=1, slot_ttl=600, now=T0 + index * 10)
            grants += permit.granted
        return grants, jobs

    return run


def _backlog(
    module: types.ModuleType, client: redis.Redis, jobs: int, rate: int, grants_wanted: int
) -> Callable[[], tuple[int, int]]:
    fair = hasattr(module.AccountLimiter, "give_out")

    def run() -> tuple[int, int]:
        limiter = module.AccountLimiter(client, per_minute=rate, max_in_flight=10_000)
        due = [(0.0, f"{'a' if i % 10 else 'b'}{i:06}") for i in range(jobs)]
        heapq.heapify(due)
        grants = calls = 0
        while due and grants < grants_wanted:
            at, job_id = heapq.heappop(due)
            calls += 1
            kwargs: dict[str, Any] = {}
            if fair:
                kwargs["member"] = line_member(job_id, tenant=job_id[0], order=int(job_id[1:]))
            permit = limiter.acquire(job_id, images=1, slot_ttl=3600, now=T0 + at, **kwargs)
            for admitted in getattr(permit, "admitted", ()):
                heapq.heappush(due, (at + min(admitted.wait, MAX_WAIT), admitted.job_id))
            if permit.granted:
                grants += 1
            elif not getattr(permit, "in_line", False):
                heapq.heappush(due, (at + min(permit.wait, MAX_WAIT), job_id))
        return grants, calls

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--grants", type=int, default=500)
    parser.add_argument("--idle-jobs", type=int, default=2000)
    parser.add_argument("--before", default=None, help="a git revision to compare with")
    args = parser.parse_args(argv)
    versions = [("this version", ratelimit)]
    if args.before:
        versions.insert(0, (args.before, _old_module(args.before)))
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(data_dir=Path(scratch)).start()
        try:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            costs = []
            for name, module in versions:
                costs.append(
                    _measure(client, f"{name}: idle", _idle(module, client, args.idle_jobs))
                )
                backlog = _backlog(module, client, args.jobs, args.rate, args.grants)
                label = f"{name}: backlog of {args.jobs} at {args.rate}/min"
                costs.append(_measure(client, label, backlog))
        finally:
            server.stop()
    print(
        "| limiter, scenario | grants | limiter calls / submit | Redis commands / submit "
        "| Redis CPU µs / submit |"
    )
    print("|---|---:|---:|---:|---:|")
    for cost in costs:
        print(cost.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
