"""``make soak`` keeps working: a short run of the real stack end to end, traced, with a
warm-up, prints its table, keeps only the measured load's samples, and names
allocation sites when asked.

No verdict is asserted: twenty seconds is warm-up, not a measurement (the verdict is
``make soak``'s business). What is checked is the harness: the warm-up's samples are
not judged, every process has its figures, the snapshots are diffed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_short_traced_soak_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench.soak",
            *("--minutes", "0.35", "--rate", "10", "--workers", "1"),
            *("--sample-every", "1", "--warmup-jobs", "60", "--warmup-rate", "30"),
            *("--trace", "--no-flower", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=380,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-5000:]
    table = out.read_text()
    assert table.strip() in done.stdout
    assert "a warm-up of 60 jobs at 30 jobs/s (not sampled)" in table
    assert "after the load: every job ended and every message acked" in table
    for name in ("worker-0", "producer", "exporter"):
        assert f"| {name} (" in table
    # Traced: Python's heap and malloc's figures, shown for the worker.
    for measure in ("heap blocks", "Python MB", "malloc live MB", "malloc free MB"):
        assert f"| {measure} |" in table, measure
    samples = json.loads((tmp_path / "samples.json").read_text())
    # Only the measured load is sampled: 210 jobs at 10/s, none of the warm-up's 60.
    jobs = [sample["jobs"] for sample in samples]
    # (A sample taken during the warm-up would say 0 jobs.)
    assert jobs == sorted(jobs) and jobs[0] >= 1 and jobs[-1] == 210, jobs
    assert len(samples) >= 15
    worker = samples[-1]["processes"]["worker-0"]
    assert worker["heap_blocks"] > 0 and worker["malloc_live_mb"] > 0
    assert worker["fd_kinds"].get("socket", 0) > 0
    # Snapshots at a quarter of the measured load and at its end, one per traced process.
    snapshots = sorted(
        p.name.rsplit("-", 1)[-1] for p in (tmp_path / "work" / "trace").glob("*.tracemalloc")
    )
    assert snapshots == ["end.tracemalloc"] * 2 + ["warm.tracemalloc"] * 2, snapshots
