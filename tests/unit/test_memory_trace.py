"""The memory trace (``worker.memory_trace``): cheap figures always, allocation tracing
and snapshots only when sites are asked for."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from worker.malloc_tuning import malloc_figures
from worker.memory_trace import MemoryTrace, request_snapshots


def test_figures_without_sites_leave_tracemalloc_off(tmp_path: Path) -> None:
    assert not tracemalloc.is_tracing()
    trace = MemoryTrace(tmp_path, "worker", sites=False)
    trace.write_figures()
    request_snapshots(tmp_path, "warm")
    trace.serve_requests()
    assert not tracemalloc.is_tracing()
    [written] = tmp_path.glob("worker-*.json")
    figures = json.loads(written.read_text())
    assert figures["blocks"] > 0
    assert "traced_bytes" not in figures and "tracing_bytes" not in figures
    if malloc_figures() is not None:
        assert figures["malloc_in_use_bytes"] > 0 and figures["malloc_free_bytes"] >= 0
    assert not list(tmp_path.glob("*.tracemalloc"))


def test_sites_trace_allocations_and_serve_each_snapshot_once(tmp_path: Path) -> None:
    tracemalloc.start(1)
    try:
        trace = MemoryTrace(tmp_path, "worker", sites=True)
        trace.write_figures()
        figures = json.loads(next(tmp_path.glob("worker-*.json")).read_text())
        assert figures["traced_bytes"] > 0 and figures["tracing_bytes"] > 0
        request_snapshots(tmp_path, "warm")
        trace.serve_requests()
        trace.serve_requests()
        [snapshot] = tmp_path.glob("worker-*-warm.tracemalloc")
        assert tracemalloc.Snapshot.load(str(snapshot)).traces
        assert (
            json.loads(next(tmp_path.glob("worker-*-warm.gc.json")).read_text())["collected"] >= 0
        )
    finally:
        tracemalloc.stop()


@pytest.fixture(autouse=True)
def _no_tracing_left() -> None:
    if tracemalloc.is_tracing():
        tracemalloc.stop()
