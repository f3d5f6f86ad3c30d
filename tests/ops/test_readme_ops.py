"""The README's ops sections ("Run it locally", "Deploy with docker compose",
"Monitor it") against the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

import click
import yaml

from ops.demo.__main__ import main as demo_command
from ops.exporter.catalogue import COUNTERS, GAUGES, HISTOGRAMS, MONEY_COUNTERS, PREFIX
from ops.exporter.cli import DEFAULT_PORT
from ops.localstack.stack import PREFERRED_REDIS_PORT, StackOptions, up_command
from tests.ops.test_metric_names import alert_rules, flower_metric_names

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def options_of(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}


def test_run_it_locally_matches_the_stack() -> None:
    text = section("Run it locally")
    defaults = StackOptions()
    assert f"redis://127.0.0.1:{PREFERRED_REDIS_PORT}/0" in text
    assert f"http://127.0.0.1:{defaults.emulator_port}" in text
    assert f"http://127.0.0.1:{defaults.flower_port}/" in text
    assert f"http://127.0.0.1:{defaults.exporter_port}/metrics" in text
    assert f"with {defaults.concurrency} threads" in text
    for flag in re.findall(r"`(--[a-z-]+)`", text):
        assert flag in options_of(up_command) | options_of(demo_command), flag
    assert "make demo" in text and "DEMO_ARGS=--keep" in text
    assert "out/contact_sheet.png" in text


def test_deploy_matches_compose() -> None:
    text = section("Deploy with docker compose")
    for name, service in COMPOSE["services"].items():
        assert f"`{name}`" in text
        if "build" in service:
            assert " ".join(service["command"]) in text, name


def test_monitor_it_lists_every_exported_metric() -> None:
    text = section("Monitor it")
    table = text[text.index("<!-- exporter-metrics -->") : text.index("<!-- /exporter-metrics -->")]
    listed = set(re.findall(r"^\| `(wavequeue_[a-z_]+)", table, re.MULTILINE))
    exported = (
        {PREFIX + name for name in GAUGES}
        | {f"{PREFIX}{name}_total" for name in COUNTERS}
        | {f"{PREFIX}{name}_total" for name in MONEY_COUNTERS}
        | {PREFIX + name for name in HISTOGRAMS}
    )
    assert listed == exported
    assert f"--port {DEFAULT_PORT}" in text


def test_monitor_it_names_flower_metrics_and_every_alert() -> None:
    text = section("Monitor it")
    flower_families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in flower_metric_names()}
    named = set(re.findall(r"`(flower_[a-z_]+)`", text))
    assert named and named <= flower_families
    alerts = {rule["alert"] for rule in alert_rules()}
    assert set(re.findall(r"^\| `(Wavequeue[A-Za-z]+)`", text, re.MULTILINE)) == alerts
