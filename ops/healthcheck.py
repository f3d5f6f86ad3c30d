"""``python -m ops.healthcheck [COMMAND...]``: the Docker HEALTHCHECK of every service.

One image runs the worker, Flower, the exporter, the emulator and the webhook
receiver; they differ only by command. With no arguments this reads the command of
the container's main process (PID 1) and checks what that command runs; given a
command line, it checks that instead (handy outside Docker). Exit 0 healthy, 1 not.

- worker: answers a Celery ping (by its node name, ``celery@<hostname>`` unless
  ``--hostname`` says otherwise);
- flower, emulator, webhooks: their HTTP server answers on the command's port;
- exporter: its ``/metrics`` answers and says it could read Redis
  (``wavequeue_redis_up 1``): an exporter cut off from Redis serves only that 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

#: Subcommand token -> (role, default port).
ROLES: dict[str, tuple[str, int]] = {
    "worker": ("worker", 0),
    "flower": ("flower", 5555),
    "exporter": ("exporter", 9808),
    "emulator": ("emulator", 8765),
    "webhooks": ("webhooks", 8780),
}
#: The path each HTTP service answers its health on.
HEALTH_PATHS = {"emulator": "/_emulator/health", "webhooks": "/health"}
TIMEOUT = 5.0


def main_process_argv() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


def role_of(argv: Sequence[str]) -> str | None:
    """The first token that names a service (``worker.app`` is not ``worker``)."""
    for token in argv:
        if token in ROLES:
            return ROLES[token][0]
    return None


def option(argv: Sequence[str], *names: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` (last one wins)."""
    found = None
    for index, token in enumerate(argv):
        for name in names:
            if token == name and index + 1 < len(argv):
                found = argv[index + 1]
            elif token.startswith(name + "="):
                found = token.split("=", 1)[1]
    return found


def port_of(argv: Sequence[str], role: str) -> int:
    return int(option(argv, "--port") or ROLES[role][1])


def http_answers(port: int, path: str = "/") -> bool:
    """Any HTTP answer below 500 (Flower answers 401 or 404 without credentials or
    with a URL prefix: the server is alive either way)."""
    try:
        response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT)
    except requests.RequestException:
        return False
    return response.status_code < 500


def exporter_reads_redis(port: int) -> bool:
    """The exporter's scrape could read Redis: ``wavequeue_redis_up`` is 1."""
    try:
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT)
    except requests.RequestException:
        return False
    if response.status_code != 200:
        return False
    return any(
        sample.name == "wavequeue_redis_up" and sample.value == 1
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    )


def worker_answers(argv: Sequence[str]) -> bool:
    from celery.utils.nodenames import default_nodename, host_format  # noqa: PLC0415

    from worker.app import app  # noqa: PLC0415 - only the worker check needs Celery

    name = host_format(default_nodename(option(argv, "--hostname", "-n")))
    replies = app.control.ping(destination=[name], timeout=TIMEOUT)
    return any(name in reply for reply in replies)


def healthy(argv: Sequence[str]) -> bool:
    role = role_of(argv)
    if role is None:
        raise SystemExit(f"healthcheck: no wavequeue service in {' '.join(argv)!r}")
    if role == "worker":
        return worker_answers(argv)
    if role == "exporter":
        return exporter_reads_redis(port_of(argv, role))
    return http_answers(port_of(argv, role), HEALTH_PATHS.get(role, "/"))


def main(args: Sequence[str]) -> int:
    argv = list(args) or main_process_argv()
    ok = healthy(argv)
    print("healthy" if ok else f"unhealthy: {role_of(argv)} does not answer")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
