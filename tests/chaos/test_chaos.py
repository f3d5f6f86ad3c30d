"""The chaos suite: each scenario alone, then all faults mixed (``make chaos``), and a
small mixed run that ``make test`` includes. See ``scenarios.py`` for what each one
breaks and ``checks.py`` for what must hold; any violation fails the test, and
lost or double-submitted jobs always do."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.scenario import Scenario, run_scenario
from tests.chaos.scenarios import FULL, SMALL


def _run(scenario: Scenario, chaos_dir: Path) -> None:
    outcome = run_scenario(scenario, chaos_dir / scenario.name)
    summary = outcome.summary
    assert summary.lost == 0 and summary.double_submitted == 0, outcome.table
    assert not outcome.violations, outcome.table


@pytest.mark.timeout(600)
def test_small_mixed_run(chaos_dir: Path) -> None:
    _run(SMALL, chaos_dir)


@pytest.mark.chaos
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("scenario", FULL, ids=[s.name for s in FULL])
def test_scenario(scenario: Scenario, chaos_dir: Path) -> None:
    _run(scenario, chaos_dir)
