"""The alert rules through ``promtool``: they load, the shipped config loads, and every
alert passes its unit tests (``ops/prometheus/tests/alerts_test.yml``), a series that
must fire and one that must not, with the real ``for:``.

Skipped, saying why, without Debian's ``prometheus`` package (``make test`` installs it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.prometheus import promtool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"
UNIT_TESTS = ROOT / "ops" / "prometheus" / "tests" / "alerts_test.yml"


def alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"]}


def alert_cases() -> list[dict[str, Any]]:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    return [case for test in tests for case in test["alert_rule_test"]]


def test_promtool_accepts_the_rules_and_the_config(tmp_path: Path) -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The config names the rules where compose mounts them; point it at the file here.
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(RULES)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(local))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    cases = alert_cases()
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fires == alert_names()
    assert quiet == alert_names()


def test_the_alert_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
