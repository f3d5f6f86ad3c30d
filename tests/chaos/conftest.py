"""The chaos suite's pytest wiring: the ``chaos`` marker, run dirs, and the tables.

Tests marked ``chaos`` (the full suite, many minutes) run only when selected with
``-m chaos`` (``make chaos``); plain ``pytest`` (``make test``) skips them and runs
the small mixed scenario. Every scenario's table is printed in the terminal summary,
passed or failed, and kept in its run directory as ``report.txt``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos.report import TABLES


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-dir",
        default=None,
        help="keep each scenario's run directory (logs, Redis data, report) under this "
        "directory instead of pytest's tmp dir, which keeps only the last few sessions",
    )


@pytest.fixture
def chaos_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where this test's scenario runs keep their evidence."""
    chosen = request.config.getoption("chaos_dir")
    if chosen is None:
        return tmp_path
    root = Path(chosen) / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the full chaos suite runs with `make chaos` (-m chaos)")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TABLES:
        return
    terminalreporter.section("chaos suite")
    for table in TABLES:
        terminalreporter.write_line(table)
        terminalreporter.write_line("")
