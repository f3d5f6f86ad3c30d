"""The allocation sites that grew in one process: two of its ``tracemalloc`` snapshots
(``worker.memory_trace``), diffed by traceback, largest growth first."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from worker.memory_trace import SNAPSHOT_SUFFIX

#: Allocations of the measuring itself, left out of the diff.
IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)
TOP = 8
FRAMES_SHOWN = 4


def snapshot_path(trace_dir: Path, pid: int, label: str) -> Path | None:
    found = sorted(trace_dir.glob(f"*-{pid}-{label}{SNAPSHOT_SUFFIX}"))
    return found[0] if found else None


def top_growth(before: Path, after: Path, top: int = TOP) -> list[str]:
    """Lines naming the ``top`` sites that grew most from ``before`` to ``after``."""
    old = tracemalloc.Snapshot.load(str(before)).filter_traces(IGNORED)
    new = tracemalloc.Snapshot.load(str(after)).filter_traces(IGNORED)
    lines = []
    # compare_to orders by absolute change: the sites that shrank most would come first.
    grown = sorted(
        (diff for diff in new.compare_to(old, "traceback") if diff.size_diff > 0),
        key=lambda diff: diff.size_diff,
        reverse=True,
    )
    for diff in grown[:top]:
        lines.append(
            f"{diff.size_diff / 1024:+.1f} KiB, {diff.count_diff:+d} blocks "
            f"(now {diff.size / 1024:.1f} KiB in {diff.count}):"
        )
        # Oldest first, the allocating frame last, as in a Python traceback.
        lines.extend(
            f"    {frame.filename}:{frame.lineno}" for frame in list(diff.traceback)[-FRAMES_SHOWN:]
        )
    return lines
