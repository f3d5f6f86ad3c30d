"""Every knob of wavequeue, read from the environment in one place.

``Settings.from_env()`` is the only reader of ``os.environ`` in the project;
everything else receives a ``Settings``. The API key is a ``SecretStr`` so that
printing, logging or repr-ing a ``Settings`` never shows it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from worker.errors import ConfigError

AmbiguousSubmitPolicy = Literal["fail", "resubmit"]

#: Environment variable -> field name. The README's settings table lists these.
ENV_VARS: dict[str, str] = {
    "REDIS_URL": "redis_url",
    "WAVESPEED_API_KEY": "api_key",
    "WAVESPEED_BASE_URL": "base_url",
    "WAVEQUEUE_POLL_MIN_INTERVAL": "poll_min_interval",
    "WAVEQUEUE_POLL_MAX_INTERVAL": "poll_max_interval",
    "WAVEQUEUE_DEFER_POLLS_AFTER": "defer_polls_after",
    "WAVEQUEUE_POLL_BACKOFF": "poll_backoff",
    "WAVEQUEUE_FIRST_POLL_DEFAULT": "first_poll_default",
    "WAVEQUEUE_JOB_DEADLINE": "job_deadline",
    "WAVEQUEUE_RETRY_BUDGET": "retry_budget",
    "WAVEQUEUE_RETRY_BASE_DELAY": "retry_base_delay",
    "WAVEQUEUE_RETRY_MAX_DELAY": "retry_max_delay",
    "WAVEQUEUE_VISIBILITY_TIMEOUT": "visibility_timeout",
    "WAVEQUEUE_TASK_TIME_LIMIT": "task_time_limit",
    "WAVEQUEUE_RATE_LIMIT_PER_MINUTE": "rate_limit_per_minute",
    "WAVEQUEUE_MAX_IN_FLIGHT": "max_in_flight",
    "WAVEQUEUE_AMBIGUOUS_SUBMIT": "ambiguous_submit_policy",
    "WAVEQUEUE_RECORD_TTL": "record_ttl",
    "WAVEQUEUE_CONNECT_TIMEOUT": "connect_timeout",
    "WAVEQUEUE_READ_TIMEOUT": "read_timeout",
    "WAVEQUEUE_ETA_TASK_LIMIT": "eta_task_limit",
    "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "allow_private_image_urls",
    "WAVEQUEUE_TASK_EVENTS": "task_events",
    "WAVEQUEUE_PRODUCER_SENT_EVENTS": "producer_sent_events",
    "REDIS_SENTINEL_MASTER": "redis_sentinel_master",
    "REDIS_SENTINEL_PASSWORD": "redis_sentinel_password",
    "REDIS_TLS_CA_FILE": "redis_tls_ca_file",
    "REDIS_TLS_CERT_FILE": "redis_tls_cert_file",
    "REDIS_TLS_KEY_FILE": "redis_tls_key_file",
    "WAVEQUEUE_REDIS_CONNECT_TIMEOUT": "redis_connect_timeout",
    "WAVEQUEUE_REDIS_SOCKET_TIMEOUT": "redis_socket_timeout",
    "WAVEQUEUE_REDIS_RETRY_WINDOW": "redis_retry_window",
}

#: The proxy variables requests honours; when none is set, WaveSpeed calls skip
#: reading the environment on every request.
PROXY_VARS = tuple(
    name for base in ("https_proxy", "http_proxy", "all_proxy") for name in (base, base.upper())
)


class Settings(BaseModel):
    """Frozen configuration; build it with ``from_env()`` or explicit keywords."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Left out of repr(): the URL may carry the Redis password.
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    api_key: SecretStr | None = None
    base_url: str = "https://api.wavespeed.ai"

    # Poll schedule (seconds). WaveSpeed asks for >= 2 s between image polls.
    poll_min_interval: float = Field(2.0, gt=0)
    #: Longest gap between two polls once a job is past every point of its model's
    #: latency history (those points themselves may be further apart: see ``schedule``).
    poll_max_interval: float = Field(30.0, gt=0)
    #: A poll due further ahead than this (or than ``poll_max_interval``, if smaller) is not
    #: held as a countdown message: the job waits in Redis (``DUE_POLLS_KEY``) and a
    #: worker's dispatcher sends its message when it is due.
    defer_polls_after: float = Field(15.0, gt=0)
    poll_backoff: float = Field(1.5, ge=1.0)
    #: First-poll delay for a model with no completions recorded yet.
    first_poll_default: float = Field(5.0, gt=0)

    #: A job not terminal this long after it was enqueued ends ``timed_out``.
    job_deadline: float = Field(900.0, gt=0)
    #: Error retries per job (transport errors, 5xx, 429); polls do not count.
    retry_budget: int = Field(8, ge=0)
    retry_base_delay: float = Field(1.0, gt=0)
    retry_max_delay: float = Field(60.0, gt=0)

    #: kombu restores an unacked message after this long; must exceed the longest
    #: countdown plus the task time limit (checked in ``validate_timings``).
    visibility_timeout: float = Field(600.0, gt=0)
    #: Hard limit of one task run (one HTTP call and bookkeeping, never a wait).
    task_time_limit: float = Field(120.0, gt=0)

    #: Shared token bucket across all workers (WaveSpeed images per minute).
    rate_limit_per_minute: int = Field(500, ge=1)
    #: Shared cap on predictions submitted and not yet terminal.
    max_in_flight: int = Field(300, ge=1)

    #: What to do when a submit POST may or may not have reached WaveSpeed.
    ambiguous_submit_policy: AmbiguousSubmitPolicy = "fail"
    #: Terminal job and chain records expire after this many seconds. A day: at 3,000 jobs
    #: a minute that is already ~4.3 million records; what outlives them is the daily
    #: aggregate (``DAILY_KEY``, kept ``DAILY_TTL``).
    record_ttl: int = Field(24 * 3600, ge=60)

    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    #: Countdown messages a worker holds in memory at most (``worker_eta_task_limit``).
    eta_task_limit: int = Field(5000, ge=1)
    #: Image URLs may point at loopback and private addresses (in-house image hosts,
    #: the emulator); off, only public hosts pass (see ``worker.image_refs``).
    allow_private_image_urls: bool = False
    #: Celery task events from the start. Off by default: they cost a Redis PUBLISH and
    #: CPU per run, and Flower turns them on by itself while it watches.
    task_events: bool = False
    #: Whether requests may read proxy settings from the environment for WaveSpeed
    #: calls. ``from_env`` sets it when a standard proxy variable is set; otherwise
    #: the session skips requests' per-call environment and .netrc lookups.
    proxy_from_env: bool = False
    #: The producer publishes Celery's ``task-sent`` event for every job it enqueues (a
    #: monitor then sees jobs from the moment they are queued); off, one Redis PUBLISH per
    #: job less. Workers send their own task events either way.
    producer_sent_events: bool = False

    # Redis connections (worker.redis_connection builds every one of them from these).
    #: With a ``sentinel://`` REDIS_URL: the name of the master the sentinels watch.
    redis_sentinel_master: str | None = None
    #: The sentinels' own password (``requirepass`` in sentinel.conf), if they have one;
    #: the master's password goes in REDIS_URL as usual.
    redis_sentinel_password: SecretStr | None = None
    #: TLS (``rediss://``): the CA that signed the server's certificate (unset: the
    #: system's CAs), and a client certificate and key if the server asks for one.
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_connect_timeout: float = Field(2.0, gt=0)
    #: Longest wait for one reply; above kombu's 1 s BRPOP, which shares it.
    redis_socket_timeout: float = Field(5.0, ge=2)
    #: A call that loses Redis reconnects and retries for this long, then raises.
    redis_retry_window: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _check_intervals(self) -> Settings:
        if self.poll_max_interval < self.poll_min_interval:
            raise ValueError("poll_max_interval must be >= poll_min_interval")
        if self.retry_max_delay < self.retry_base_delay:
            raise ValueError("retry_max_delay must be >= retry_base_delay")
        return self

    @model_validator(mode="after")
    def _check_redis(self) -> Settings:
        scheme = self.redis_url.partition("://")[0].lower()
        if scheme == "sentinel" and not self.redis_sentinel_master:
            raise ValueError(
                "a sentinel:// REDIS_URL needs REDIS_SENTINEL_MASTER (the master's name)"
            )
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together")
        tls_files = (self.redis_tls_ca_file, self.redis_tls_cert_file)
        if any(tls_files) and scheme != "rediss":
            raise ValueError(
                "REDIS_TLS_* settings need a rediss:// REDIS_URL "
                "(TLS through Sentinel is not supported)"
            )
        return self

    @property
    def longest_held_poll(self) -> float:
        """The longest countdown a poll is held with; later polls are deferred."""
        return min(self.defer_polls_after, self.poll_max_interval)

    @property
    def longest_countdown(self) -> float:
        """The longest delay any task reschedules itself with."""
        return max(self.poll_max_interval, self.retry_max_delay, self.first_poll_default)

    @property
    def longest_hold(self) -> float:
        """The longest a healthy worker holds a message it took: its countdown, then one run.
        The visibility timeout must exceed it; an unacked message older than this is held
        by a worker that is hung or dead (the exporter exports it for that alert)."""
        return self.longest_countdown + self.task_time_limit

    @property
    def sweeper_interval(self) -> float:
        """Seconds between sweeper passes: a tenth of the visibility timeout, 1 s to 30 s."""
        return max(1.0, min(30.0, self.visibility_timeout / 10))

    @property
    def submit_lease(self) -> float:
        """How long the right to send a submit POST lasts before another copy may judge
        the POST's outcome unknown. The threads pool does not enforce Celery's time
        limits, so the lease is kept honest by ``validate_timings``: one POST (connect plus
        one read of WaveSpeed's small answer) must end well within it."""
        return self.task_time_limit

    def validate_timings(self) -> None:
        """Refuse timings that would let kombu redeliver held countdowns, or let a submit
        POST outlive its lease."""
        needed = self.longest_hold
        if self.visibility_timeout <= needed:
            raise ConfigError(
                f"WAVEQUEUE_VISIBILITY_TIMEOUT={self.visibility_timeout:g}s must exceed the "
                f"longest countdown plus the task time limit ({needed:g}s), or kombu will "
                "redeliver messages that are only waiting for their countdown"
            )
        post = self.connect_timeout + self.read_timeout
        if post * 2 > self.submit_lease:
            raise ConfigError(
                f"WAVEQUEUE_TASK_TIME_LIMIT={self.task_time_limit:g}s (the submit lease) must be "
                f"at least twice WAVEQUEUE_CONNECT_TIMEOUT + WAVEQUEUE_READ_TIMEOUT ({post:g}s), "
                "so that a submit POST always ends before another copy may take over its job"
            )

    def require_api_key(self) -> str:
        """The API key, or a ConfigError naming the variable to set."""
        if self.api_key is None or not self.api_key.get_secret_value():
            raise ConfigError("WAVESPEED_API_KEY is not set: the worker cannot call WaveSpeed")
        return self.api_key.get_secret_value()

    def check_for_worker(self) -> None:
        """Everything a worker needs before its first job; ConfigError otherwise."""
        self.require_api_key()
        self.validate_timings()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build from environment variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            field: env[var] for var, field in ENV_VARS.items() if env.get(var, "") != ""
        }
        values["proxy_from_env"] = any(env.get(var) for var in PROXY_VARS)
        try:
            return cls(**values)
        except ValidationError as exc:
            field_to_var = {field: var for var, field in ENV_VARS.items()}
            problems = []
            for err in exc.errors():
                loc = str(err["loc"][0]) if err["loc"] else ""
                name = field_to_var.get(loc, loc or "settings")
                problems.append(f"{name}: {err['msg']}")
            raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
