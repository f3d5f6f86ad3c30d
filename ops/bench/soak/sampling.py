"""What the soak reads every few seconds: each process's resident memory, threads and
open files from ``/proc``, its Python heap blocks from its memory-trace file, and
Redis's memory and key count."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


@dataclass(frozen=True)
class ProcessSample:
    rss_mb: float
    threads: int
    fds: int
    heap_blocks: int | None  # None: the process does not trace its memory


@dataclass(frozen=True)
class Sample:
    at: float
    jobs: int  # enqueued so far
    redis_bytes: int
    redis_keys: int
    processes: dict[str, ProcessSample] = field(default_factory=dict)


def read_process(pid: int, trace_dir: Path | None) -> ProcessSample | None:
    """None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessSample(
        rss_mb=int(fields[21]) * PAGE_SIZE / MB,
        threads=int(fields[17]),
        fds=fds,
        heap_blocks=_heap_blocks(trace_dir, pid),
    )


def _heap_blocks(trace_dir: Path | None, pid: int) -> int | None:
    if trace_dir is None:
        return None
    for path in trace_dir.glob(f"*-{pid}.json"):
        try:
            return int(json.loads(path.read_text())["blocks"])
        except (OSError, ValueError, KeyError):
            return None
    return None
