"""What the soak reads every few seconds: each process's resident memory, threads and
open files from ``/proc``, its Python heap blocks from its memory-trace file, and
Redis's memory and key count.

A traced process's resident memory is read without what ``tracemalloc`` itself holds
(its traces grow with the heap they trace, and an untraced worker has none of it): the
memory judged is the process's own."""

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
    #: Of ``rss_mb`` as read from /proc, what tracemalloc held (already taken out).
    tracing_mb: float = 0.0
    #: Where resident memory lies, for a traced process (None otherwise): what Python
    #: allocated (tracemalloc), what glibc's malloc has in live blocks (tracemalloc's
    #: own taken out) and free inside its heaps (``worker.malloc_tuning``).
    python_mb: float | None = None
    malloc_live_mb: float | None = None
    malloc_free_mb: float | None = None
    #: Open files by kind (socket, pipe, anon_inode, file): what an fd trend is made of.
    fd_kinds: dict[str, int] = field(default_factory=dict)


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
        fd_kinds = _fd_kinds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    figures = _trace_figures(trace_dir, pid)
    blocks = figures.get("blocks")
    tracing_mb = float(figures.get("tracing_bytes", 0)) / MB
    live = figures.get("malloc_in_use_bytes")
    free = figures.get("malloc_free_bytes")
    traced = figures.get("traced_bytes")
    return ProcessSample(
        rss_mb=int(fields[21]) * PAGE_SIZE / MB - tracing_mb,
        threads=int(fields[17]),
        fds=sum(fd_kinds.values()),
        heap_blocks=None if blocks is None else int(blocks),
        tracing_mb=tracing_mb,
        python_mb=None if traced is None else traced / MB,
        malloc_live_mb=None if live is None else live / MB - tracing_mb,
        malloc_free_mb=None if free is None else free / MB,
        fd_kinds=fd_kinds,
    )


def _fd_kinds(pid: int) -> dict[str, int]:
    kinds: dict[str, int] = {}
    directory = f"/proc/{pid}/fd"
    for fd in os.listdir(directory):
        try:
            target = os.readlink(f"{directory}/{fd}")
        except FileNotFoundError:  # closed between the listing and the read
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _trace_figures(trace_dir: Path | None, pid: int) -> dict[str, float]:
    """The process's last memory-trace figures ({} when it does not trace)."""
    if trace_dir is None:
        return {}
    for path in trace_dir.glob(f"*-{pid}.json"):
        try:
            figures = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in figures.items() if isinstance(v, int | float)}
    return {}
