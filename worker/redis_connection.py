"""Every Redis connection wavequeue opens, built from ``Settings`` in one place.

``REDIS_URL`` is one of:

- ``redis://[:password@]host:port/db``: one Redis;
- ``rediss://...``: the same over TLS. The CA (and a client certificate, if the
  server asks for one) come from ``REDIS_TLS_CA_FILE`` / ``REDIS_TLS_CERT_FILE`` /
  ``REDIS_TLS_KEY_FILE``, never from URL parameters; the server's certificate and
  host name are always checked;
- ``sentinel://[:password@]host:port[/db];sentinel://host:port;...``: Redis
  Sentinel, spelled as Celery spells it, with the master's name in
  ``REDIS_SENTINEL_MASTER``. Password and db come from the first URL and are the
  master's; the sentinels' own password, if any, is ``REDIS_SENTINEL_PASSWORD``.

With Sentinel the job store's client comes from ``Sentinel.master_for``: every new
connection asks the sentinels where the master is, so each Lua script and
pipeline lands on the new master after a failover. Celery gets the same facts
through ``celery_options`` (``worker.celery_config`` puts them in place).

**How long a call can block.** Every connection has a connect timeout
(``WAVEQUEUE_REDIS_CONNECT_TIMEOUT``) and a reply timeout
(``WAVEQUEUE_REDIS_SOCKET_TIMEOUT``). A command that cannot reach Redis reconnects
and tries again, with a short backoff, until ``WAVEQUEUE_REDIS_RETRY_WINDOW`` seconds
have passed since it started (``RetryWithin``); then it raises. So against a Redis
that stays down a command blocks at most the window plus one connect timeout (12 s
with the defaults; with Sentinel, add one connect timeout per sentinel that does
not answer); a Redis that accepts connections and then never answers adds one reply
timeout. A call of several commands raises at its first command that gives up.

Nothing here puts a password in a message: ``redact`` and ``describe`` name a Redis
without its credentials, and ``unavailable`` turns a redis-py or kombu error into a
``BrokerUnavailableError`` that says what to check.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from worker.errors import BrokerUnavailableError
from worker.redis_urls import redact
from worker.settings import Settings

T = TypeVar("T")

SENTINEL_SCHEME = "sentinel"
TLS_SCHEME = "rediss"
DEFAULT_SENTINEL_PORT = 26379
#: Backoff between attempts while Redis is away: 0.1 s, 0.2 s, 0.4 s, then 1 s.
RETRY_BACKOFF_BASE = 0.1
RETRY_BACKOFF_CAP = 1.0

_deadlines = threading.local()


class RetryWithin(Retry):
    """redis-py's ``Retry``, bounded by time rather than by count.

    redis-py nests retries (a command retries, and its reconnect retries inside it);
    the outermost call on a thread sets the deadline and nested calls keep it, so the
    window is never counted twice. A refused password is never retried.
    """

    def __init__(self, window: float) -> None:
        super().__init__(ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE), -1)
        self.window = window

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        outermost = getattr(_deadlines, "give_up_at", None) is None
        if outermost:
            _deadlines.give_up_at = time.monotonic() + self.window
        try:
            return self._attempts(do, fail, is_retryable, with_failure_count)
        finally:
            if outermost:
                _deadlines.give_up_at = None

    def _attempts(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None,
        with_failure_count: bool,
    ) -> T:
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if isinstance(error, redis.AuthenticationError):
                    raise
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                delay = self._backoff.compute(failures)
                if time.monotonic() + delay > _deadlines.give_up_at:
                    raise
                time.sleep(delay)


@dataclass(frozen=True)
class SentinelTarget:
    """A ``sentinel://`` REDIS_URL, taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None


def is_sentinel(settings: Settings) -> bool:
    return _scheme(settings.redis_url) == SENTINEL_SCHEME


def uses_tls(settings: Settings) -> bool:
    return _scheme(settings.redis_url) == TLS_SCHEME


def sentinel_target(settings: Settings) -> SentinelTarget:
    """The sentinels, master name, db and master credentials of a ``sentinel://`` URL."""
    parts = [urlsplit(chunk.strip()) for chunk in settings.redis_url.split(";") if chunk.strip()]
    first = parts[0]
    path = first.path.strip("/")
    return SentinelTarget(
        sentinels=tuple(
            (part.hostname or "127.0.0.1", part.port or DEFAULT_SENTINEL_PORT) for part in parts
        ),
        master=settings.redis_sentinel_master or "",
        db=int(path) if path.isdigit() else 0,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
    )


def ssl_options(settings: Settings) -> dict[str, Any] | None:
    """The TLS options as Celery's ``broker_use_ssl`` / ``redis_backend_use_ssl`` and
    redis-py take them; None without TLS."""
    if not uses_tls(settings):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = settings.redis_tls_cert_file
        options["ssl_keyfile"] = settings.redis_tls_key_file
    return options


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves (Celery's ``sentinel_kwargs``)."""
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
    }
    if settings.redis_sentinel_password is not None:
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    return kwargs


def celery_options(settings: Settings) -> dict[str, Any]:
    """What Celery's broker and result backend need beyond the URL: timeouts, Sentinel's
    transport options (in both option dicts) and TLS (both ``*_use_ssl`` settings)."""
    transport: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
    }
    if is_sentinel(settings):
        transport["master_name"] = settings.redis_sentinel_master
        transport["sentinel_kwargs"] = sentinel_kwargs(settings)
    tls = ssl_options(settings)
    return {
        "transport_options": transport,
        "broker_use_ssl": tls,
        "redis_backend_use_ssl": tls,
        "redis_socket_connect_timeout": settings.redis_connect_timeout,
        "redis_socket_timeout": settings.redis_socket_timeout,
        # A send retries about as long as a Redis command does: kombu bounds the whole
        # reconnect of a publish by this "connection timeout" (and by the retry policy).
        "broker_connection_timeout": max(
            settings.redis_connect_timeout, settings.redis_retry_window
        ),
        "task_publish_retry_policy": publish_retry_policy(settings.redis_retry_window),
    }


def publish_retry_policy(window: float) -> dict[str, float]:
    """kombu's publish retry (0 s, 0.5 s, then 1 s apart), as many tries as fit the window."""
    return {
        "max_retries": max(1, int(window + 0.5) + 1),
        "interval_start": 0.0,
        "interval_step": 0.5,
        "interval_max": 1.0,
    }


def redis_client(
    settings: Settings, *, decode_responses: bool = True, retry_window: float | None = None
) -> redis.Redis:
    """A client for the job store (or anything else that reads wavequeue's keys).

    ``retry_window`` overrides ``WAVEQUEUE_REDIS_RETRY_WINDOW`` (0: one attempt, as an
    exporter scrape wants).
    """
    window = settings.redis_retry_window if retry_window is None else retry_window
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "retry": RetryWithin(window),
        "health_check_interval": 30,
    }
    if is_sentinel(settings):
        target = sentinel_target(settings)
        # One quick try per sentinel: discovery moves on to the next sentinel instead.
        sentinel_options = {**sentinel_kwargs(settings), "retry": Retry(NoBackoff(), 0)}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=sentinel_options
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.master,
            db=target.db,
            username=target.username,
            password=target.password,
            **common,
        )
        return client
    return redis.Redis.from_url(settings.redis_url, **common, **(ssl_options(settings) or {}))


def describe(settings: Settings) -> str:
    """The Redis in words, without credentials: for messages and logs."""
    if is_sentinel(settings):
        target = sentinel_target(settings)
        where = ", ".join(f"{host}:{port}" for host, port in target.sentinels)
        return f"Redis master {target.master!r} (Sentinel at {where}, db {target.db})"
    return f"Redis at {redact(settings.redis_url)}"


#: What a caller can do once Redis is back (the default ending of the message).
REPEAT_ADVICE = "the call can be repeated (an enqueue with the same idempotency key runs once)"


def unavailable(
    settings: Settings, error: BaseException, *, advice: str = REPEAT_ADVICE
) -> BrokerUnavailableError:
    """The ``BrokerUnavailableError`` for a redis-py or kombu error: one line, what to do."""
    target = describe(settings)
    reason = _first_line(error)
    if isinstance(error, redis.AuthenticationError) or "AUTH" in reason.upper():
        message = (
            f"{target} refused the credentials ({reason}): check the password in REDIS_URL"
            + (" and REDIS_SENTINEL_PASSWORD" if is_sentinel(settings) else "")
        )
    elif "CERTIFICATE" in reason.upper() or "SSL" in reason.upper():
        message = (
            f"cannot open TLS to {target} ({reason}): check REDIS_TLS_CA_FILE (the CA that "
            "signed the server's certificate), the host name in REDIS_URL, and "
            "REDIS_TLS_CERT_FILE / REDIS_TLS_KEY_FILE if the server asks for a client certificate"
        )
    else:
        check = "the sentinels and REDIS_SENTINEL_MASTER" if is_sentinel(settings) else "REDIS_URL"
        message = (
            f"cannot reach {target} after retrying for {settings.redis_retry_window:g}s "
            f"({reason}): check that Redis is up and {check}; {advice}"
        )
    return BrokerUnavailableError(message, target=target)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    # redis-py and kombu name host and port, never the password; keep it so anyway.
    return redact(reason)


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()
