"""glibc malloc tuning (``worker.malloc_tuning``): a trim gives free memory between live
blocks back to the system; the trimming thread starts only when asked."""

from __future__ import annotations

import ctypes.util
import threading
from pathlib import Path

import pytest

from worker.malloc_tuning import malloc_figures, start_trimming, trim_malloc

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("c") is None or not Path("/proc/self/statm").exists(),
    reason="needs glibc and /proc",
)


def resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def test_a_trim_returns_the_free_pages_between_live_blocks() -> None:
    # 1 KiB blocks come from malloc (not Python's small-object allocator); keeping one
    # in 64 alive leaves every page partly used, so free() alone returns almost nothing.
    blocks = [bytes(1024) for _ in range(150_000)]
    kept = blocks[::64]
    del blocks
    before = resident_mb()
    assert trim_malloc()
    after = resident_mb()
    assert before - after > 50, (before, after)
    assert len(kept) > 0


def test_trimming_thread_only_when_asked() -> None:
    assert start_trimming(0) is None
    stop = start_trimming(3600)
    assert stop is not None
    try:
        assert "wavequeue-malloc-trim" in {t.name for t in threading.enumerate()}
    finally:
        stop.set()


def test_malloc_figures_follow_live_and_freed_blocks() -> None:
    before = malloc_figures()
    if before is None:
        pytest.skip("no mallinfo2 (glibc before 2.33)")
    # 1 KiB blocks come from malloc, not Python's small-object allocator.
    blocks = [bytes(1024) for _ in range(40_000)]
    held = malloc_figures()
    assert held is not None
    assert held.in_use_bytes - before.in_use_bytes > 35 * 2**20, (before, held)
    # Every other block freed: their space stays in the heap, free between live blocks.
    del blocks[::2]
    halved = malloc_figures()
    assert halved is not None
    assert held.in_use_bytes - halved.in_use_bytes > 17 * 2**20, (held, halved)
    assert halved.free_bytes - held.free_bytes > 17 * 2**20, (held, halved)
    assert halved.heap_bytes >= halved.in_use_bytes - halved.mmap_bytes
    assert len(blocks) == 20_000
