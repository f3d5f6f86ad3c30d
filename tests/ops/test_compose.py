"""docker-compose.yml, the Dockerfile and .env.example, checked without a Docker engine.

Every project service's command is run with ``--help`` (so it is a real entry
point taking those options), every variable set for a project service is one the
code reads, and .env.example covers every variable compose interpolates.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
import redis
import yaml
from flower.options import default_options as flower_options

from emulator.cli import emulator_command
from ops.exporter.cli import exporter_command
from ops.healthcheck import port_of, role_of
from ops.localstack.redis_server import free_port
from worker.keep_outputs import BOTO3_ENV_VARS
from worker.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PROJECT = sorted(name for name, spec in SERVICES.items() if "build" in spec)
DOCKERFILE = (ROOT / "Dockerfile").read_text()
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?+][^}]*)?\}")


def envvars_of(command: click.Command) -> set[str]:
    found: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            found.add(envvar)
        elif envvar:
            found |= set(envvar)
    return found


def flower_envvars() -> set[str]:
    # Flower maps FLOWER_<OPTION> to each of its options (flower/command.py).
    return {"FLOWER_" + name.replace("-", "_").upper() for name in flower_options._options}


def run_help(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The command exactly as compose runs it, plus --help, from the installed scripts."""
    executable = str(BIN / argv[0])
    return subprocess.run(
        [executable, *argv[1:], "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_services_and_profiles() -> None:
    assert set(SERVICES) == {
        "redis", "worker", "flower", "exporter", "emulator", "prometheus", "grafana",
        "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3", "webhooks",
    }  # fmt: skip
    assert PROJECT == ["emulator", "exporter", "flower", "webhooks", "worker"]
    assert SERVICES["emulator"]["profiles"] == ["dev"]
    assert SERVICES["webhooks"]["profiles"] == ["webhooks"]
    assert SERVICES["prometheus"]["profiles"] == ["monitoring"]
    assert SERVICES["grafana"]["profiles"] == ["monitoring"]
    for name in ("redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert SERVICES[name]["profiles"] == ["ha"]
    for name in ("redis", "worker", "flower", "exporter"):
        assert "profiles" not in SERVICES[name]
    # One image for every project service: they differ by command only.
    assert {SERVICES[name]["image"] for name in PROJECT} == {"wavequeue:latest"}
    assert {SERVICES[name]["build"] for name in PROJECT} == {"."}


def test_redis_is_durable_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    # noeviction without maxmemory does nothing (issue #12).
    assert "--maxmemory ${REDIS_MAXMEMORY:-1gb}" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert COMPOSE["volumes"] is not None and "redis-data" in COMPOSE["volumes"]


def test_no_secret_is_on_a_command_line() -> None:
    """`ps` on the host and `docker inspect` show every argument (issue #12)."""
    secrets = ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "WAVESPEED_API_KEY", "GRAFANA_ADMIN")
    for name, service in SERVICES.items():
        command = service.get("command", [])
        text = " ".join(command) if isinstance(command, list) else str(command)
        for secret in secrets:
            # Compose interpolates ${VAR} into the argv; $$VAR is the shell's, expanded
            # into a file by printf (a shell builtin: no process of its own).
            assert not re.search(r"(?<!\$)\$\{" + secret, text), (
                f"{name} puts {secret} on its command line"
            )


def interpolated(command: str, **values: str) -> str:
    """A compose command string as compose hands it to the container: ${VAR:-default}
    replaced, $$ unescaped."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2) or ""
        return values.get(name, default.removeprefix(":-").removeprefix("-"))

    return re.sub(r"\$\{([A-Z0-9_]+)((?::?-)[^}]*)?\}", value, command).replace("$$", "$")


@pytest.mark.parametrize("service", ["redis", "redis-replica"])
def test_redis_runs_its_command_with_the_password_in_a_file(service: str, tmp_path: Path) -> None:
    """The service's command, run by a real shell and redis-server as the container runs it
    (on a free port, files under tmp_path): the password works, is in no argv, and
    maxmemory is set."""
    password = "compose-test-password-7f3a"
    script = interpolated(SERVICES[service]["command"][2]).replace(
        "/tmp/redis-auth.conf", str(tmp_path / "auth.conf")
    )
    script = script.replace("--replicaof redis 6379", "").replace(
        "--replica-announce-ip", f"--port {free_port()} --dir {tmp_path} --replica-announce-ip"
    )
    port = int(re.search(r"--port (\d+)", script).group(1))  # type: ignore[union-attr]
    process = subprocess.Popen(
        ["sh", "-c", script], env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": password}
    )
    try:
        client = redis.Redis(
            port=port, password=password, socket_connect_timeout=1, decode_responses=True
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).set("x", 1)
        assert client.config_get("maxmemory") == {"maxmemory": str(1024**3)}
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        argv = (Path("/proc") / str(process.pid) / "cmdline").read_bytes().decode()
        assert "redis-server" in argv and password not in argv
        assert oct((tmp_path / "auth.conf").stat().st_mode & 0o777) == "0o600"
        client.close()
    finally:
        process.terminate()
        process.wait(10)


def test_ha_profile_one_replica_three_sentinels_quorum_two() -> None:
    replica = " ".join(SERVICES["redis-replica"]["command"])
    assert "--replicaof redis 6379" in replica
    assert "--appendonly yes" in replica
    assert "masterauth" in replica
    # The first master can be demoted by a failover: it must be able to follow the new one.
    assert "masterauth" in " ".join(SERVICES["redis"]["command"])
    commands = {
        name: SERVICES[name]["command"][-1] for name in SERVICES if name.startswith("sentinel-")
    }
    assert len(commands) == 3
    for command in commands.values():
        assert "'sentinel monitor wavequeue redis 6379 2'" in command
        assert "sentinel auth-pass wavequeue $$REDIS_PASSWORD" in command
        assert command.endswith("exec redis-server /tmp/sentinel.conf --sentinel")
    # Workers, Flower and the exporter are pointed at the sentinels through .env.
    for name in PROJECT:
        environment = SERVICES[name].get("environment", {})
        if "REDIS_URL" in environment:
            assert environment["REDIS_URL"].startswith("${REDIS_URL:-redis://")
            assert environment["REDIS_SENTINEL_MASTER"] == "${REDIS_SENTINEL_MASTER:-}"
    example = (ROOT / ".env.example").read_text()
    documented = next(line for line in example.splitlines() if line.startswith("# REDIS_URL="))
    sentinels = documented.removeprefix("# REDIS_URL=").split(";")
    assert [url.split("@")[-1].removeprefix("sentinel://") for url in sentinels] == [
        "sentinel-1:26379", "sentinel-2:26379", "sentinel-3:26379",
    ]  # fmt: skip
    assert "# REDIS_SENTINEL_MASTER=wavequeue" in example


def test_worker_scales() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "WAVESPEED_API_KEY" in worker["environment"]
    # Only the worker gets the key.
    for name in ("flower", "exporter", "emulator"):
        assert "WAVESPEED_API_KEY" not in SERVICES[name].get("environment", {})


def test_flower_requires_auth_and_keeps_state() -> None:
    flower = SERVICES["flower"]
    assert "--address=0.0.0.0" in flower["command"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["environment"]["FLOWER_DB"].startswith("/data/")
    assert any(volume.endswith(":/data") for volume in flower["volumes"])


@pytest.mark.parametrize("service", PROJECT)
def test_commands_are_real_entry_points(service: str) -> None:
    command = SERVICES[service]["command"]
    assert command[0] in {"wavequeue", "celery"}
    done = run_help(command)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    if command[0] == "celery":
        assert command[1:4] == ["-A", "worker.app", "flower"]
        for arg in command[4:]:
            name, _, value = arg.removeprefix("--").partition("=")
            assert name in flower_options._options, f"Flower has no option --{name}"
            if name == "conf":
                assert (ROOT / value).is_file()


@pytest.mark.parametrize("service", PROJECT)
def test_environment_is_read_by_the_code(service: str) -> None:
    allowed = (
        set(ENV_VARS)
        | flower_envvars()
        | envvars_of(emulator_command)
        | envvars_of(exporter_command)
        # The S3 target's credentials: boto3 reads them (worker.keep_outputs).
        | set(BOTO3_ENV_VARS)
    )
    variables = set(SERVICES[service].get("environment", {}))
    assert variables <= allowed, f"{service} sets unknown {sorted(variables - allowed)}"


def test_env_example_covers_every_interpolation() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = set(INTERPOLATION.findall(text))
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert referenced <= example, f".env.example lacks {sorted(referenced - example)}"
    assert example <= referenced, f".env.example has unused {sorted(example - referenced)}"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_mounted_files_exist() -> None:
    for name in ("prometheus", "grafana"):
        for volume in SERVICES[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_prometheus_scrapes_the_compose_services() -> None:
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]
    }
    exporter_port = port_of(SERVICES["exporter"]["command"], "exporter")
    flower_port = port_of(SERVICES["flower"]["command"], "flower")
    assert targets == {
        "wavequeue-exporter": f"exporter:{exporter_port}",
        "flower": f"flower:{flower_port}",
    }
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    # Flower's /metrics asks for its login: the credentials come from files compose writes.
    flower = next(job for job in config["scrape_configs"] if job["job_name"] == "flower")
    assert flower["basic_auth"]["username"] == "__FLOWER_USER__"
    command = SERVICES["prometheus"]["command"][0]
    assert f"> {flower['basic_auth']['password_file']}" in command


def test_dev_emulator_outputs_open_from_the_host() -> None:
    emulator = SERVICES["emulator"]
    public = emulator["environment"]["WAVESPEED_EMULATOR_PUBLIC_URL"]
    assert public == "http://127.0.0.1:${EMULATOR_PORT:-8765}"
    assert emulator["ports"] == ["127.0.0.1:${EMULATOR_PORT:-8765}:8765"]


def test_dockerfile() -> None:
    assert re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE) == ["python:3.11-slim"]
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert user and user[-1] not in {"root", "0"}
    assert "HEALTHCHECK" in DOCKERFILE
    assert 'CMD ["python", "-m", "ops.healthcheck"]' in DOCKERFILE
    assert importlib.util.find_spec("ops.healthcheck") is not None
    for source in re.findall(r"^COPY (\S+) ", DOCKERFILE, re.MULTILINE):
        assert (ROOT / source).exists(), source
    default = re.findall(r'^CMD \["(.+)"\]$', DOCKERFILE, re.MULTILINE)[-1].split('", "')
    done = run_help(default)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("service", PROJECT)
def test_healthcheck_knows_every_service(service: str) -> None:
    command = SERVICES[service]["command"]
    assert role_of(command) == service
    assert port_of(command, service) > 0 or service == "worker"


def test_prometheus_scrapes_flower_with_its_first_login(tmp_path: Path) -> None:
    """The prometheus service's command, run by a real shell against the repository's
    prometheus.yml (paths moved under tmp_path): the config it starts with names Flower's
    first user, the password sits in an owner-only file, and promtool accepts it."""
    command = SERVICES["prometheus"]["command"][0]
    script = (
        interpolated(command)
        .replace("> /prometheus/", f"> {tmp_path}/")
        .replace("/etc/prometheus/prometheus.yml", str(ROOT / "ops/prometheus/prometheus.yml"))
    )
    script = script.split("&& exec ")[0] + "&& true"
    env = {"PATH": os.environ["PATH"], "FLOWER_BASIC_AUTH": "ops:pa:ss-word,viewer:other"}
    subprocess.run(["sh", "-c", script], env=env, check=True, timeout=30)
    assert (tmp_path / "flower_password").read_text() == "pa:ss-word"
    assert oct((tmp_path / "flower_password").stat().st_mode & 0o777) == "0o600"
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    flower = next(job for job in config["scrape_configs"] if job["job_name"] == "flower")
    assert flower["basic_auth"] == {
        "username": "ops", "password_file": "/prometheus/flower_password",
    }  # fmt: skip
    assert "pa:ss-word" not in (tmp_path / "prometheus.yml").read_text()
    odd = {**env, "FLOWER_BASIC_AUTH": "o/ps:pw"}
    refused = subprocess.run(["sh", "-c", script], env=odd, capture_output=True, text=True,
                             timeout=30, check=False)  # fmt: skip
    assert refused.returncode == 78 and "must be letters" in refused.stderr
