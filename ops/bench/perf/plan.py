"""How big each scenario is: the full run (``make bench``) and the quick one.

The quick run (``make bench-quick``, inside ``make test``) goes through the same code
paths with small numbers and shorter latencies, to keep the harness working; its
figures are not the goals' figures.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The models the scenarios use. Each keeps its own latency history in Redis, so a
#: scenario's poll schedule is learned from its own latency, not another scenario's.
MAIN_MODEL = "flux-kontext-max/text-to-image"
EDIT_MODEL = "flux-kontext-pro"
#: The 0 s scenario (no history: 0 s samples teach nothing) and then the long one.
SIDE_MODEL = "flux-kontext-pro/text-to-image"


@dataclass(frozen=True)
class Plan:
    name: str
    #: Plain jobs at 0 s latency (and raw Celery floor jobs of the same shape).
    zero_jobs: int
    #: The main scenario: jobs at ``main_latency`` (an emulator latency spec).
    main_jobs: int
    main_latency: str
    #: Chains of three steps (text-to-image, two edits), every step at ``main_latency``.
    chains: int
    #: Jobs held in flight at once, at ``long_latency`` (fixed: none ends before all started).
    inflight_jobs: int
    long_latency: str
    #: Enqueue rates: jobs per measurement.
    enqueue_jobs: int
    #: Jobs run before the measured scenarios so the workers have a latency history.
    warmup_jobs: int
    #: Worker processes of the scaling rows (the main scenario runs with the first).
    scaling: tuple[int, ...]
    #: Jobs the blocking SDK runs (as many as the main scenario in the full run).
    sdk_jobs: int
    #: Jobs at 0 s run with ``MONITOR`` on, to count what clients send.
    monitor_jobs: int = 300
    #: Worker settings that differ from the defaults in this plan only.
    worker_env: tuple[tuple[str, str], ...] = ()


FULL = Plan(
    name="full",
    zero_jobs=3000,
    main_jobs=1000,
    main_latency="lognormal:5:0.3",
    chains=300,
    inflight_jobs=10_000,
    long_latency="fixed:120",
    enqueue_jobs=3000,
    warmup_jobs=30,
    scaling=(1, 2, 4),
    sdk_jobs=1000,
)

QUICK = Plan(
    name="quick",
    zero_jobs=100,
    main_jobs=60,
    main_latency="lognormal:1:0.3",
    chains=10,
    inflight_jobs=200,
    long_latency="fixed:3",
    enqueue_jobs=300,
    warmup_jobs=6,
    scaling=(1, 2, 4),
    sdk_jobs=16,
    monitor_jobs=30,
    # Polls every 0.5 s at least (2 s by default) and a first poll after 1 s for a model
    # with no history (5 s): the defaults would make the waits most of a quick run.
    worker_env=(
        ("WAVEQUEUE_POLL_MIN_INTERVAL", "0.5"),
        ("WAVEQUEUE_FIRST_POLL_DEFAULT", "1"),
    ),
)
