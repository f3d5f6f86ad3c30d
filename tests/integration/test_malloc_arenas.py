"""A worker process caps glibc's malloc arenas (``worker.malloc_tuning``) before its pool
threads start: with the default (2), sixteen busy threads share one arena besides the
main one; with glibc's own default (``WAVEQUEUE_MALLOC_ARENAS=0``) they get one each.

An arena other than the main one is a 64 MiB-aligned mapping of 64 MiB (glibc's
``HEAP_MAX_SIZE``), part of it usable and the rest reserved: counted from
``/proc/<pid>/maps``.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import pytest

from tests.support.stack import worker_stack

T2I = "flux-kontext-pro/text-to-image"
HEAP_MAX_SIZE = 64 * 1024 * 1024
JOBS = 48

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("c") is None or not Path("/proc/self/maps").exists(),
    reason="needs glibc and /proc",
)


def thread_arenas(pid: int) -> int:
    """Non-main malloc arenas of a process: anonymous spans of exactly HEAP_MAX_SIZE that
    start on a HEAP_MAX_SIZE boundary (the usable part and the reserved rest are two
    mappings; a thread's stack may end where an arena starts)."""
    arenas, start, end = 0, -1, -1
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(part, 16) for part in fields[0].split("-"))
        if len(fields) > 5 or (low != end and low % HEAP_MAX_SIZE != 0):
            start = end = -1  # backed by a file, [stack], [heap]..., or a gap
            continue
        if low % HEAP_MAX_SIZE == 0:
            start = low
        if start >= 0:
            end = high
            if end - start == HEAP_MAX_SIZE:
                arenas += 1
                start = end = -1
    return arenas


def busy_worker_arenas(tmp_path: Path, **env: str) -> int:
    with worker_stack(tmp_path, latency="fixed:0", workers=0) as stack:
        worker = stack.start_worker(concurrency=16, **env)
        job_ids = [stack.jobs.enqueue(T2I, prompt=f"arenas {n}") for n in range(JOBS)]
        finished = stack.jobs.wait(job_ids, timeout=120)
        assert [r.status.value for r in finished] == ["completed"] * JOBS
        assert worker.process is not None
        return thread_arenas(worker.process.pid)


def test_a_worker_keeps_its_threads_to_one_arena_by_default(tmp_path: Path) -> None:
    assert busy_worker_arenas(tmp_path / "capped") <= 1


def test_glibc_default_gives_the_threads_many_arenas(tmp_path: Path) -> None:
    """The measure above can fail: without the cap, the same work spreads over more."""
    assert busy_worker_arenas(tmp_path / "glibc", WAVEQUEUE_MALLOC_ARENAS="0") > 2
