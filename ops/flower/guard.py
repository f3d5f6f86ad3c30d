"""The rules ``flowerconfig.py`` applies, as plain functions that tests can call.

Flower reads its options in three passes: ``FLOWER_*`` environment variables,
then the command line, then the config file, then the command line again. The
config file therefore sees env and command-line values already applied and must
carry them forward rather than overwrite them: each of our defaults applies only
where an option still holds Flower's own default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from worker.errors import ConfigError
from worker.settings import Settings

#: Where Flower keeps its state when nothing else is said (relative to the working
#: directory, like the rest of the local stack's data under ``./.wavequeue/``).
DEFAULT_DB = Path(".wavequeue") / "flower" / "flower.db"
#: Tasks kept in memory (and in the state file). Flower's own default (100 000)
#: lets a busy day grow Flower's memory and its shelve file without bound.
MAX_TASKS = 10_000
#: Save state every minute too, not only at a clean shutdown (ms, Flower's unit).
STATE_SAVE_INTERVAL_MS = 60_000
#: Forget workers offline this long (seconds): scaled-down containers would
#: otherwise stay on the workers page forever.
PURGE_OFFLINE_WORKERS = 600
#: Columns of the tasks page, what an operator looks for first: the job id (args) and its
#: model and run (kwargs: ``flux-kontext-pro poll 3``) as ``worker.messages`` labels every
#: run_job message, then its state and queue. Arguments are ids only, never secrets.
TASKS_COLUMNS = "name,args,kwargs,state,routing_key,received,started,runtime,worker,uuid"

EX_CONFIG = 78


class FlowerConfigError(Exception):
    """Flower must not start with this configuration."""


def is_loopback(address: str) -> bool:
    """True when ``address`` is reachable from this machine only.

    The empty address means every interface (tornado's ``bind_sockets``).
    """
    if address in ("localhost",):
        return True
    if address == "":
        return False
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it resolves to something reachable


def check_basic_auth(entries: Sequence[str]) -> None:
    """Every entry must be ``user:password`` with both parts non-empty."""
    for entry in entries:
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            # Never echo the entry: it is (part of) a credential.
            raise FlowerConfigError(
                "FLOWER_BASIC_AUTH must be user:password (several: comma-separated), "
                "each with a non-empty user and password"
            )


def check_exposure(address: str, basic_auth: Sequence[str], oauth: str) -> None:
    """Refuse to listen beyond localhost without authentication."""
    check_basic_auth(basic_auth)
    if is_loopback(address) or basic_auth or oauth:
        return
    shown = address or "all interfaces"
    raise FlowerConfigError(
        f"refusing to listen on {shown} without authentication: "
        "set FLOWER_BASIC_AUTH=user:password (or --basic-auth), "
        "or listen on 127.0.0.1 (FLOWER_ADDRESS)"
    )


def require_login_for_metrics() -> None:
    """Flower serves ``/metrics`` to anyone, whatever its login: wrap the handler so it asks
    for the same login as every page (basic auth or OAuth; none on localhost without auth).
    Flower's app takes its handlers from ``flower.urls.handlers`` when it starts, after the
    config file ran, so replacing the entry there is enough. ``/healthcheck`` stays open:
    it says "OK" and nothing else (the container's HEALTHCHECK reads it)."""
    from flower import urls  # noqa: PLC0415 - Flower's own modules, only in its process
    from flower.views import monitor  # noqa: PLC0415
    from tornado.web import authenticated  # noqa: PLC0415

    class LoggedInMetrics(monitor.Metrics):  # type: ignore[misc]
        @authenticated
        async def get(self) -> None:
            await super().get()

    for index, handler in enumerate(urls.handlers):
        if isinstance(handler, tuple) and handler[1] is monitor.Metrics:
            urls.handlers[index] = (handler[0], LoggedInMetrics, *handler[2:])


def check_redis(settings: Settings) -> None:
    """Flower needs the workers' Redis; without one named, Celery would try AMQP."""
    try:
        settings.require_redis_url()
    except ConfigError as exc:
        raise FlowerConfigError(str(exc)) from None


def normalize_prefix(prefix: str | None) -> str:
    """``/flower/`` and ``flower`` mean the same prefix; Flower wants no slashes."""
    return (prefix or "").strip().strip("/")


def prepare_db(db: str) -> str:
    """Create the state file's directory (shelve does not) and return the path."""
    Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return db
