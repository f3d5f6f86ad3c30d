"""One soak run: the perf harness's stack (private Redis, the emulator, ``wavequeue
worker`` processes) under a steady load for ``minutes``, every process sampled every
``sample_every`` seconds, then drained and judged (``ops.bench.soak.report``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ops.bench.perf.harness import Stack
from ops.bench.soak.allocations import snapshot_path, top_growth
from ops.bench.soak.report import ProcessTrends, Report, process_trends, redis_figures
from ops.bench.soak.sampling import Sample, read_process
from ops.bench.soak.sidecars import Child, Producer, Scraper, start_exporter, start_flower
from worker.constants import JOB_KEY, LIVE_KEY, QUEUES, REQUEST_KEY
from worker.memory_trace import request_snapshots

Say = Callable[[str], None]

#: The emulator of an operator's long run: 1-3 s per prediction and ~5% faults, mixed.
LATENCY = "uniform:1:3"
FAULT_MIX: dict[str, dict[str, Any]] = {
    "submit_503": {"probability": 0.01},
    "submit_429": {"probability": 0.005},
    "result_503": {"probability": 0.01},
    "result_drop": {"probability": 0.005},
    "result_slow": {"probability": 0.01, "delay": 2},
    "prediction_failed": {"probability": 0.01},
}
#: Jobs enqueued at once before the steady load, per worker process: eight per pool
#: thread (the default 16), so that every pool thread, Redis connection and broker
#: connection a worker opens on demand is opened during the warm-up half, not in the
#: judged one (a pool reaching a new high-water mark is not a leak, but looks like one).
BURST_PER_WORKER = 8 * 16
#: One job in this many is waited for by the producer.
WAIT_EVERY = 20
#: Jobs run at 60 a second after the burst and before the measured load. The workers'
#: resident memory settles with the jobs they churn through (malloc's free space and
#: Python's arenas reach their working shape), not with time: measured from the start,
#: a worker still rose ~0.05 MB per 1,000 jobs between 4,500 and 9,000 jobs and half
#: that between 13,500 and 27,000 (README "Memory over long runs").
DEFAULT_WARMUP_JOBS = 6000
#: After the load, every job must end and every message be acked within this.
DRAIN_TIMEOUT = 180.0
#: Snapshots are taken at a quarter of the run (warm-up done, before the judged half
#: starts, so the snapshot's own allocations do not tilt it) and after the load.
WARM, END = "warm", "end"


@dataclass(frozen=True)
class SoakOptions:
    minutes: float
    rate: float
    workers: int
    sample_every: float
    out_dir: Path
    trace: bool
    flower: bool
    #: Jobs enqueued at ``warmup_rate`` after the burst and before the measured load.
    warmup_jobs: int = DEFAULT_WARMUP_JOBS
    warmup_rate: float = 60.0
    #: A traced run names the allocation sites of these processes (None: of those that
    #: grow in it).
    sites_for: frozenset[str] | None = None


def run_soak(options: SoakOptions, say: Say) -> Report:
    work = options.out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    log_dir, trace_dir = work / "logs", work / "trace"
    trace_dir.mkdir(parents=True)
    # Every process writes its heap figures; only a traced run traces allocation sites.
    worker_env = {"WAVEQUEUE_MEMORY_TRACE": str(trace_dir)}
    if options.trace:
        worker_env["WAVEQUEUE_MEMORY_TRACE_SITES"] = "true"
    with Stack(worker_env=worker_env, log_dir=log_dir, data_dir=work / "data", say=say) as stack:
        stack.emulator.configure(latency=LATENCY, faults=FAULT_MIX)
        fleet = stack.fleet(options.workers)
        env = {"REDIS_URL": stack.settings.require_redis_url()}
        sidecars: list[Child] = []
        try:
            exporter, metrics_url = start_exporter(env, log_dir)
            sidecars.append(exporter)
            scraper = Scraper(metrics_url).start()
            if options.flower:
                sidecars.append(start_flower(env, log_dir))
            plan = {
                "redis_url": env["REDIS_URL"],
                "rate": options.rate,
                "seconds": options.minutes * 60,
                "wait_every": WAIT_EVERY,
                "burst": BURST_PER_WORKER * options.workers,
                "warmup_jobs": options.warmup_jobs,
                "warmup_rate": options.warmup_rate,
                "memory_trace_dir": str(trace_dir),
                "memory_trace_sites": options.trace,
            }
            producer = Producer.start(plan, work, log_dir)
            sidecars.append(producer.child)
            pids = {f"worker-{i}": pid for i, pid in enumerate(fleet.pids)}
            judged = set(pids) | {"producer"}
            pids["producer"] = producer.child.pid
            pids.update({child.name: child.pid for child in sidecars if child.name != "producer"})
            say(f"load: {options.rate:g} jobs/s for {options.minutes:g} min; sampling {pids}")
            samples = _sample_load(
                stack, producer=producer, pids=pids, trace_dir=trace_dir, options=options, say=say
            )
            if options.trace:
                request_snapshots(trace_dir, END)
                _wait_for_snapshots(trace_dir, [pids[name] for name in judged], END)
            final = producer.progress()
            producer.release()
            scraper.stop()
            drained_in = _drain(stack.probe.client)
            record_bytes = _record_bytes(stack.probe.client, final.get("sample_ids", []))
        finally:
            for child in sidecars:
                child.stop()
    # The samples behind the table, for a second look at a trend (``samples.json``).
    (options.out_dir / "samples.json").write_text(
        json.dumps([dataclasses.asdict(sample) for sample in samples])
    )
    processes = [
        found
        for name in pids
        if (found := process_trends(name, samples, judged=name in judged)) is not None
    ]
    report = Report(
        title=f"Soak: {options.minutes:g} min at {options.rate:g} jobs/s, "
        f"{options.workers} worker processes",
        processes=processes,
        redis=redis_figures(samples, record_bytes),
        facts=[
            f"{final.get('enqueued', 0)} jobs enqueued; the producer waited for "
            f"{final.get('waited', 0)} (one in {WAIT_EVERY}), "
            f"{final.get('unfinished_waits', 0)} of them not finished in time",
            f"emulator latency {LATENCY}, faults {', '.join(FAULT_MIX)} (~5% together); "
            f"exporter scraped every 5 s ({scraper.scrapes} scrapes, {scraper.failures} failed)"
            + ("; Flower running" if options.flower else ""),
            f"after the load: every job ended and every message acked in {drained_in:.1f} s",
            f"{len(samples)} samples of the measured load, one every "
            f"{options.sample_every:g} s; heap blocks are sys.getallocatedblocks(), malloc "
            "figures glibc's mallinfo2 (WAVEQUEUE_MEMORY_TRACE)"
            + (
                "; allocations traced (tracemalloc, WAVEQUEUE_MEMORY_TRACE_SITES): a traced "
                "process's RSS and malloc figures are read without tracemalloc's own memory ("
                + ", ".join(
                    f"{name} {p.tracing_mb:.1f} MB at the end"
                    for name, p in samples[-1].processes.items()
                    if p.tracing_mb
                )
                + ")"
                if options.trace
                else "; allocations not traced"
            ),
        ],
    )
    if options.warmup_jobs:
        report.facts.insert(
            1,
            f"before the measured load: a burst of {BURST_PER_WORKER * options.workers} jobs, "
            f"then a warm-up of {options.warmup_jobs} jobs at {options.warmup_rate:g} jobs/s "
            "(not sampled)",
        )
    if options.trace:
        for proc in processes:
            if _wants_sites(proc, options.sites_for):
                before = snapshot_path(trace_dir, pids[proc.name], WARM)
                after = snapshot_path(trace_dir, pids[proc.name], END)
                if before and after:
                    report.allocations[proc.name] = top_growth(before, after)
    return report


def _wants_sites(proc: ProcessTrends, sites_for: frozenset[str] | None) -> bool:
    """Whether a traced run names ``proc``'s allocation sites: those asked for (a run
    that follows a judged one), else those that grow in this run."""
    if sites_for is not None:
        return proc.name in sites_for
    return proc.grows or (proc.judged and proc.heap_grows())


def _sample_load(
    stack: Stack,
    *,
    producer: Producer,
    pids: dict[str, int],
    trace_dir: Path,
    options: SoakOptions,
    say: Say,
) -> list[Sample]:
    samples: list[Sample] = []
    started = time.monotonic()
    warm_asked = False
    next_say = 0.0
    ticks = 0
    measured_since: float | None = None
    while True:
        progress = producer.progress()
        sample = _sample(stack.probe.client, int(progress["enqueued"]), pids, trace_dir)
        if progress.get("measured"):  # the warm-up's samples are not judged
            samples.append(sample)
        elapsed = time.monotonic() - started
        if progress.get("measured") and measured_since is None:
            measured_since = time.monotonic()
        measured_for = 0.0 if measured_since is None else time.monotonic() - measured_since
        if options.trace and not warm_asked and measured_for >= options.minutes * 60 / 4:
            request_snapshots(trace_dir, WARM)
            warm_asked = True
        if elapsed >= next_say:
            rss = {name: f"{p.rss_mb:.1f}" for name, p in sample.processes.items()}
            jobs = (
                f"{progress['enqueued']} jobs"
                if progress.get("measured")
                else (f"warm-up, {progress.get('warmup', 0)} jobs")
            )
            say(f"{elapsed:5.0f}s {jobs}, RSS MB {rss}")
            next_say = elapsed + 60
        if progress.get("done"):
            return samples
        if not producer.child.alive():
            raise RuntimeError(f"the producer stopped; see {producer.child.log_path}")
        ticks += 1
        time.sleep(max(0.0, started + ticks * options.sample_every - time.monotonic()))


def _sample(client: redis.Redis, jobs: int, pids: dict[str, int], trace_dir: Path) -> Sample:
    memory = client.info("memory")
    processes = {
        name: found
        for name, pid in pids.items()
        if (found := read_process(pid, trace_dir)) is not None
    }
    return Sample(
        at=time.time(),
        jobs=jobs,
        redis_bytes=int(memory["used_memory"]),
        redis_keys=int(client.dbsize()),
        processes=processes,
    )


def _wait_for_snapshots(trace_dir: Path, pids: list[int], label: str) -> None:
    deadline = time.monotonic() + 120
    while any(snapshot_path(trace_dir, pid, label) is None for pid in pids):
        if time.monotonic() > deadline:
            return  # the report says which process has no diff
        time.sleep(0.5)


def _drain(client: redis.Redis) -> float:
    """Seconds until no message is queued or unacked and no job is live."""
    started = time.monotonic()
    while True:
        pipe = client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
        pipe.hlen("unacked")
        pipe.hvals(LIVE_KEY)
        *counts, live = pipe.execute()
        if sum(counts) == 0 and sum(int(v) for v in live) == 0:
            return time.monotonic() - started
        if time.monotonic() - started > DRAIN_TIMEOUT:
            raise TimeoutError(f"not drained in {DRAIN_TIMEOUT:.0f}s: {counts}, live {live}")
        time.sleep(0.5)


def _record_bytes(client: redis.Redis, job_ids: list[str]) -> float | None:
    """Mean MEMORY USAGE of a finished job's record and request."""
    if not job_ids:
        return None
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.memory_usage(JOB_KEY.format(job_id=job_id), samples=0)
        pipe.memory_usage(REQUEST_KEY.format(job_id=job_id), samples=0)
    sizes = [int(size or 0) for size in pipe.execute()]
    return sum(sizes) / len(job_ids)
