"""The soak reads a traced process's resident memory without tracemalloc's own."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ops.bench.soak.sampling import MB, read_process


def test_tracing_memory_is_taken_out_of_a_traced_process(tmp_path: Path) -> None:
    untraced = read_process(os.getpid(), None)
    assert untraced is not None and untraced.heap_blocks is None and untraced.tracing_mb == 0
    figures = {"pid": os.getpid(), "blocks": 1234, "tracing_bytes": 8 * MB}
    (tmp_path / f"worker-{os.getpid()}.json").write_text(json.dumps(figures))
    traced = read_process(os.getpid(), tmp_path)
    assert traced is not None
    assert traced.heap_blocks == 1234 and traced.tracing_mb == 8
    # Read a moment apart: the process's own memory moves a little meanwhile.
    assert abs((untraced.rss_mb - traced.rss_mb) - 8) < 1


def test_malloc_figures_of_a_traced_process_leave_tracing_out(tmp_path: Path) -> None:
    figures = {
        "pid": os.getpid(),
        "blocks": 1234,
        "traced_bytes": 3 * MB,
        "tracing_bytes": 8 * MB,
        "malloc_in_use_bytes": 20 * MB,
        "malloc_free_bytes": 2 * MB,
    }
    (tmp_path / f"worker-{os.getpid()}.json").write_text(json.dumps(figures))
    traced = read_process(os.getpid(), tmp_path)
    assert traced is not None
    assert (traced.python_mb, traced.malloc_live_mb, traced.malloc_free_mb) == (3, 12, 2)
    untraced = read_process(os.getpid(), None)
    assert untraced is not None
    assert (untraced.python_mb, untraced.malloc_live_mb, untraced.malloc_free_mb) == (
        None,
        None,
        None,
    )
