"""``make bench-quick`` keeps working: the harness runs the real stack end to end and
prints every row of its table with numbers in it.

No timing assertions: what the figures are is the benchmark's business (``make bench``),
not a test's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ops.bench.perf.table import ROW_NAMES

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def table_rows(text: str) -> dict[str, list[str]]:
    """First cell -> cells of every body row of the markdown table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| figure"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_quick_prints_every_row_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "quick.md"
    done = subprocess.run(
        [sys.executable, "-m", "ops.bench.perf", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    table = out.read_text()
    assert table.strip() in done.stdout
    assert "Machine: " in table
    rows = table_rows(table)
    assert len(rows) == len(ROW_NAMES)
    for name in ROW_NAMES:
        [cells] = [cells for first, cells in rows.items() if first.startswith(f"{name} (")]
        _figure, value, floor, _goal, met = cells
        assert "nan" not in value + floor, cells
        assert NUMBER.search(value), cells
        for number in NUMBER.findall(value):
            float(number.replace(",", ""))
        assert met in {"yes", "**no**", "—"}, cells
