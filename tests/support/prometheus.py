"""A real Prometheus (Debian's ``prometheus`` package) for the alert tests.

``make test`` installs the package when it is missing (the Makefile's ``prometheus``
target); without it these tests skip and say why. The server runs on a free port with
its data in the test's directory, scrapes what the test gives it, evaluates the rules
it is given, and is asked over its HTTP API, as Grafana and Alertmanager ask it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from ops.localstack.redis_server import free_port
from ops.localstack.supervisor import ProcessService

Labels = tuple[tuple[str, str], ...]

MISSING = (
    "Debian's prometheus package (prometheus, promtool) is not installed: "
    "`make test` installs it as root (apt-get install -y prometheus)"
)


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``, or skip the test saying why."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(MISSING)
    return found


@dataclass
class Target:
    job: str
    address: str  # host:port
    metrics_path: str = "/metrics"


@dataclass
class PrometheusServer:
    """One ``prometheus`` process; ``interval`` is both the scrape and the rule interval."""

    workdir: Path
    targets: Sequence[Target]
    rule_files: Sequence[Path] = ()
    interval: str = "1s"
    port: int = field(default_factory=free_port)
    service: ProcessService | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": self.interval,
                "evaluation_interval": self.interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": target.job,
                    "metrics_path": target.metrics_path,
                    "static_configs": [{"targets": [target.address]}],
                }
                for target in self.targets
            ],
        }

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        argv = [
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.service = ProcessService(
            name="prometheus",
            address=self.url,
            argv=argv,
            env={},
            log_path=self.workdir / "prometheus.log",
            ready=lambda _s: self._ready(),
        )
        self.service.start()
        return self

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # the HTTP API ---------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's vector (or a scalar as one sample without labels)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def values(self, expr: str, at: float | None = None) -> dict[Labels, float]:
        """``{sorted labels: value}`` of an instant query."""
        return {
            tuple(sorted(item["metric"].items())): float(item["value"][1])
            for item in self.query(expr, at)
        }

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/alerts")["alerts"])

    def alert_state(self, name: str) -> str:
        """``firing``, ``pending`` or ``inactive`` (the most advanced of its instances)."""
        states = {a["state"] for a in self.alerts() if a["labels"].get("alertname") == name}
        for state in ("firing", "pending"):
            if state in states:
                return state
        return "inactive"

    def wait_for_alert(self, name: str, timeout: float, state: str = "firing") -> float:
        """Wait until alert ``name`` is ``state``; returns when it was seen so (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.alert_state(name) == state:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} not {state} within {timeout:.0f}s; alerts: {self.alerts()}"
                )
            time.sleep(0.25)

    def wait_until(self, expr: str, timeout: float, what: str = "") -> None:
        """Wait until instant query ``expr`` returns something (a filter like ``x > 0``)."""
        deadline = time.monotonic() + timeout
        while not self.query(expr):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or expr}: not true within {timeout:.0f}s")
            time.sleep(0.25)

    def targets_up(self) -> Mapping[str, str]:
        """Each scraped job's health (``up``, ``down``, ``unknown``)."""
        active = self._get("/api/v1/targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        check=False,
    )  # fmt: skip
