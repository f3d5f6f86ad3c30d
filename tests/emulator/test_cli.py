"""``python -m emulator`` and ``wavequeue emulator``: flags, startup, a result, clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from emulator.cli import build_config, emulator_command
from emulator.errors import ConfigError
from producer.cli import main as wavequeue_main
from tests.emulator.conftest import T2I_MAX

FLAGS = (
    "--host",
    "--port",
    "--api-key",
    "--seed",
    "--latency",
    "--model-latency",
    "--sync-timeout",
    "--fault",
    "--rate-limit-per-minute",
    "--max-concurrency",
    "--image-scale",
    "--access-log",
)
LISTENING = re.compile(r"WaveSpeed emulator listening on (http://127\.0\.0\.1:(\d+)) ")


@dataclass
class EmulatorProcess:
    process: subprocess.Popen[str]
    base_url: str
    first_line: str


@contextmanager
def emulator_process(*args: str, env: dict[str, str] | None = None) -> Iterator[EmulatorProcess]:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        match = LISTENING.match(first_line)
        assert match, f"unexpected first line {first_line!r}; stderr: {process.stderr}"
        yield EmulatorProcess(process, match.group(1), first_line)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_help_lists_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )

    assert result.stdout.startswith("Usage: python -m emulator [OPTIONS]")
    for flag in FLAGS:
        assert flag in result.stdout
    assert "submit_drop_after_create" in result.stdout  # the fault kinds are listed


def test_wavequeue_emulator_is_the_same_command() -> None:
    result = CliRunner().invoke(wavequeue_main, ["emulator", "--help"])

    assert result.exit_code == 0
    for flag in FLAGS:
        assert flag in result.output


def test_started_as_a_subprocess_it_serves_a_result_and_stops_on_sigterm() -> None:
    with emulator_process("--api-key", "cli-key", "--latency", "fixed:0.1") as running:
        headers = {"Authorization": "Bearer cli-key"}
        submitted = requests.post(
            f"{running.base_url}/api/v3/wavespeed-ai/{T2I_MAX}",
            json={"prompt": "from the CLI"},
            headers=headers,
            timeout=10,
        ).json()["data"]
        deadline = time.monotonic() + 10
        while True:
            data = requests.get(submitted["urls"]["get"], headers=headers, timeout=10).json()[
                "data"
            ]
            if data["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)

        assert data["status"] == "completed"
        assert requests.get(data["outputs"][0], timeout=10).status_code == 200
        assert "cli-key" not in running.first_line  # the key is never printed
        assert "accepting the configured API key" in running.first_line

        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(10) == 0


def test_sigint_stops_it_cleanly_too() -> None:
    with emulator_process() as running:
        running.process.send_signal(signal.SIGINT)

        assert running.process.wait(10) == 0
        assert "accepting any non-empty API key" in running.first_line


def test_api_key_comes_from_the_environment_and_faults_from_flags() -> None:
    env = {"WAVESPEED_EMULATOR_API_KEY": "env-key"}
    flags = ("--fault", "submit_503=1,count=1", "--latency", "fixed:0.1")
    with emulator_process(*flags, env=env) as running:
        url = f"{running.base_url}/api/v3/wavespeed-ai/{T2I_MAX}"

        def submit(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            response = requests.post(url, json={"prompt": "x"}, headers=headers, timeout=10)
            return response.status_code

        assert submit("wrong-key") == 401
        assert submit("env-key") == 503
        assert submit("env-key") == 200
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(10) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency", "bogus:1"], "latency distribution must be fixed, uniform or lognormal"),
        (["--fault", "explode=1"], "unknown fault kind 'explode'"),
        (["--model-latency", "flux-kontext-pro"], "expected MODEL=SPEC"),
        (["--max-concurrency", "0"], "max_concurrency must be >= 1"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(emulator_command, args)

    assert result.exit_code == 2
    assert message in result.output


def test_a_busy_port_is_a_clear_error() -> None:
    with emulator_process() as running:
        port = running.base_url.rsplit(":", 1)[1]
        result = CliRunner().invoke(emulator_command, ["--port", port])

        assert result.exit_code == 1
        assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_flags_build_the_same_config_as_the_config_endpoint() -> None:
    config = build_config(
        api_key="k",
        seed=3,
        latency="uniform:1:4",
        model_latency=("flux-kontext-pro=fixed:5",),
        sync_timeout=12.0,
        faults=(
            "submit_503=0.1",
            "prediction_failed=1,count=2,code=1402,models=flux-kontext-pro|flux-kontext-max,"
            "prompt_contains=step 2",
            "nsfw",
        ),
        rate_limit_per_minute=500,
        max_concurrency=300,
        image_scale=0.25,
    )

    shown = config.to_json()
    assert shown["latency"] == "uniform:1:4"
    assert shown["model_latency"] == {"wavespeed-ai/flux-kontext-pro": "fixed:5"}
    assert shown["faults"]["submit_503"]["probability"] == pytest.approx(0.1)
    assert shown["faults"]["prediction_failed"] == {
        "probability": 1.0,
        "count": 2,
        "models": ["wavespeed-ai/flux-kontext-pro", "wavespeed-ai/flux-kontext-max"],
        "prompt_contains": "step 2",
        "code": 1402,
        "message": "Media not reachable",
    }
    assert shown["faults"]["nsfw"]["probability"] == 1.0
    assert (shown["seed"], shown["sync_timeout"], shown["image_scale"]) == (3, 12.0, 0.25)
    assert (shown["rate_limit_per_minute"], shown["max_concurrency"]) == (500, 300)
    with pytest.raises(ConfigError, match="expected knob=value"):
        build_config(
            api_key=None,
            seed=None,
            latency="fixed:1",
            model_latency=(),
            sync_timeout=1.0,
            faults=("submit_503=1,count",),
            rate_limit_per_minute=None,
            max_concurrency=None,
            image_scale=1.0,
        )
