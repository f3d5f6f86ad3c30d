"""Every knob of wavequeue, read from the environment in one place.

``Settings.from_env()`` is the only reader of ``os.environ`` in the project;
everything else receives a ``Settings``. The proxy variables are the exception: they
say only ``proxy_from_env`` here, and ``worker.http_pool`` (WaveSpeed calls) and
requests (callbacks) read the rest, so that proxy credentials never sit in a
``Settings``. The API key is a ``SecretStr`` so that
printing, logging or repr-ing a ``Settings`` never shows it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.errors import ConfigError
from worker.local_stack import STACK_ENV_PATH, running_stack_env
from worker.money import parse_tenant_amounts, usd_to_micros
from worker.redis_urls import check_redis_url
from worker.tenants import parse_weights

#: WaveSpeed deletes outputs after 7 days: a copy is tried at most until a day before.
MAX_PERSIST_RETRY_FOR = 6 * 24 * 3600.0

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
    "WAVEQUEUE_LOCAL_IMAGES": "local_images",
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
    "WAVEQUEUE_WEBHOOK_URL": "webhook_url",
    "WAVEQUEUE_WEBHOOK_SECRET": "webhook_secret",
    "WAVEQUEUE_WEBHOOK_URL_KEY": "webhook_url_key",
    "WAVEQUEUE_WEBHOOK_POLL_FACTOR": "webhook_poll_factor",
    "WAVEQUEUE_WEBHOOK_POLL_MAX": "webhook_poll_max",
    "WAVEQUEUE_WEBHOOK_ORPHAN_WINDOW": "webhook_orphan_window",
    "WAVEQUEUE_WEBHOOK_MAX_BODY": "webhook_max_body",
    "WAVEQUEUE_CALLBACK_SECRET": "callback_secret",
    "WAVEQUEUE_CALLBACK_TIMEOUT": "callback_timeout",
    "WAVEQUEUE_CALLBACK_RETRY_BASE_DELAY": "callback_retry_base_delay",
    "WAVEQUEUE_CALLBACK_RETRY_MAX_DELAY": "callback_retry_max_delay",
    "WAVEQUEUE_CALLBACK_RETRY_FOR": "callback_retry_for",
    "WAVEQUEUE_TENANT_WEIGHTS": "tenant_weights",
    "WAVEQUEUE_KEEP_OUTPUTS": "keep_outputs",
    "WAVEQUEUE_OUTPUTS_DIR": "outputs_dir",
    "WAVEQUEUE_OUTPUTS_S3_BUCKET": "outputs_s3_bucket",
    "WAVEQUEUE_OUTPUTS_S3_ENDPOINT": "outputs_s3_endpoint",
    "WAVEQUEUE_OUTPUTS_S3_PREFIX": "outputs_s3_prefix",
    "WAVEQUEUE_PERSIST_RETRY_BASE_DELAY": "persist_retry_base_delay",
    "WAVEQUEUE_PERSIST_RETRY_MAX_DELAY": "persist_retry_max_delay",
    "WAVEQUEUE_PERSIST_RETRY_FOR": "persist_retry_for",
    "WAVEQUEUE_DAILY_BUDGET": "daily_budget_micros",
    "WAVEQUEUE_TENANT_BUDGETS": "tenant_budgets_micros",
    "WAVEQUEUE_LOW_BALANCE": "low_balance_micros",
    "WAVEQUEUE_BALANCE_CHECK_INTERVAL": "balance_check_interval",
    "WAVEQUEUE_RECYCLE_AFTER_RUNS": "recycle_after_runs",
    "WAVEQUEUE_RECYCLE_ABOVE_RSS_MB": "recycle_above_rss_mb",
    "WAVEQUEUE_MEMORY_TRACE": "memory_trace_dir",
    "WAVEQUEUE_MEMORY_TRACE_SITES": "memory_trace_sites",
    "WAVEQUEUE_MALLOC_ARENAS": "malloc_arenas",
    "WAVEQUEUE_MALLOC_TRIM_INTERVAL": "malloc_trim_interval",
}

#: The standard proxy variables; when none is set at start, WaveSpeed calls and
#: callbacks connect directly and nothing reads proxy settings from the environment.
PROXY_VARS = tuple(
    name for base in ("https_proxy", "http_proxy", "all_proxy") for name in (base, base.upper())
)


#: Standard Webhooks secrets start with this; the rest is the key, base64-encoded.
CALLBACK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def callback_key(secret: SecretStr) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` + base64 of 24-64 bytes)."""
    text = secret.get_secret_value()
    if not text.startswith(CALLBACK_SECRET_PREFIX):
        raise ValueError("must start with whsec_ (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(text.removeprefix(CALLBACK_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("must encode 24 to 64 random bytes")
    return key


class Settings(BaseModel):
    """Frozen configuration; build it with ``from_env()`` or explicit keywords."""

    # hide_input_in_errors: a refused value (a REDIS_URL with its password, a key)
    # never appears in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: Left out of repr(): the URL may carry the Redis password. No default on purpose:
    #: wavequeue never writes to a Redis that nobody named (``require_redis_url``).
    redis_url: str | None = Field(None, repr=False)
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
    #: Which local image files a producer reads: ``refuse``, ``any`` or an absolute
    #: directory (only files under it). Unset: the Python API refuses them (a backend
    #: passes its users' strings), the CLI reads any (its user names their own files).
    local_images: str | None = None
    #: Celery task events from the start. Off by default: they cost a Redis PUBLISH and
    #: CPU per run, and Flower turns them on by itself while it watches.
    task_events: bool = False
    #: Whether outgoing HTTP may go through a proxy named in the environment: WaveSpeed
    #: calls (``worker.http_pool`` reads the variables once, at start) and callbacks
    #: (requests' ``trust_env``). ``from_env`` sets it when a standard proxy variable is
    #: set; it holds no proxy URL, so proxy credentials never sit in ``Settings``.
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

    # Long runs (``worker.recycle``, ``worker.memory_trace``).
    #: A worker stops itself gracefully after this many task runs (a job is a submit
    #: and its polls, about 3 runs): Celery's warm shutdown, exit status 0, and its
    #: supervisor starts a fresh one. Unset: never. The threads pool has no
    #: ``worker_max_tasks_per_child`` (prefork only); this stands in for it.
    recycle_after_runs: int | None = Field(None, ge=1)
    #: ... or once its resident memory is above this many MB (read after each run).
    recycle_above_rss_mb: float | None = Field(None, gt=0)
    #: A directory: the process writes its heap figures there every 2 s (Python's heap
    #: blocks, glibc's malloc figures; cheap). The soak benchmark sets it.
    memory_trace_dir: str | None = None
    #: With ``memory_trace_dir``, also trace every Python allocation (``tracemalloc``)
    #: and dump snapshots when asked, to name allocation sites. Costs CPU and memory per
    #: allocation, and its own allocations move the resident size it would judge: for
    #: measurements, not production.
    memory_trace_sites: bool = False
    #: glibc malloc arenas a worker process may use (``worker.malloc_tuning``); 0: glibc's
    #: default (8 per core). Threads that share the GIL gain little from more arenas,
    #: and each keeps its own free memory.
    malloc_arenas: int = Field(2, ge=0)
    #: Seconds between two ``malloc_trim`` calls in a worker (free memory given back to the
    #: system: ``worker.malloc_tuning``); 0: never.
    malloc_trim_interval: float = Field(60.0, ge=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_usable(cls, value: str | None) -> str | None:
        if value is not None:  # None: nobody named a Redis (require_redis_url says so)
            check_redis_url(value)  # ValueError in words, the password masked
        return value

    @field_validator("local_images")
    @classmethod
    def _local_images_form(cls, value: str | None) -> str | None:
        if value in (None, "refuse", "any") or (value is not None and value.startswith("/")):
            return value
        raise ValueError("must be refuse, any or an absolute directory path")

    # WaveSpeed webhooks (``worker.webhooks``). Off unless ``webhook_url`` is set.
    #: The public base URL of ``wavequeue webhooks``; every submit then asks WaveSpeed to
    #: call ``<webhook_url>/wavespeed/<job id>/<MAC>`` when the prediction ends.
    webhook_url: str | None = None
    #: The account's webhook signing secret (``whsec_...``); unset, the receiver fetches it
    #: once at start from ``GET /api/v3/webhook/secret`` with the API key.
    webhook_secret: SecretStr | None = None
    #: A local secret that MACs the job id in each callback URL, so nobody can guess the
    #: URL of a job they were not told about. Workers and the receiver share it.
    webhook_url_key: SecretStr | None = None
    #: With webhooks on, a job's first poll comes this many times the model's typical
    #: latency after its submit (the poll is then only the safety net).
    webhook_poll_factor: float = Field(4.0, ge=1.0)
    #: ... but never later than this (s). A poll this far ahead is deferred (it waits in
    #: Redis, not in a held message), so it costs no worker memory while it waits.
    webhook_poll_max: float = Field(300.0, gt=0)
    #: How long a job whose submit outcome is unknown waits for a webhook to prove its
    #: prediction before the ambiguous-submit policy applies (s). Unset: the same delay as
    #: its first poll in webhook mode.
    webhook_orphan_window: float | None = Field(None, gt=0)
    #: The receiver refuses bodies larger than this (bytes): WaveSpeed's callback is the
    #: bare prediction (output URLs, not images).
    webhook_max_body: int = Field(1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _check_webhooks(self) -> Settings:
        if self.webhook_url is not None:
            scheme = self.webhook_url.partition("://")[0].lower()
            if scheme not in ("http", "https") or "://" not in self.webhook_url:
                raise ValueError("webhook_url must be an http(s) URL")
        window = self.webhook_orphan_window
        if window is not None and window > self.webhook_poll_max:
            raise ValueError("webhook_orphan_window must be <= webhook_poll_max")
        return self

    # Callbacks to the backend (worker.callbacks).
    #: The key callbacks are signed with (Standard Webhooks: ``whsec_`` + base64 of 24 to
    #: 64 random bytes). Shared with the backends that verify them; never stored.
    callback_secret: SecretStr | None = None
    #: Connect and read timeout of one callback POST (each).
    callback_timeout: float = Field(10.0, gt=0)
    #: Delay before the second attempt; each next one doubles, up to the max delay.
    callback_retry_base_delay: float = Field(10.0, gt=0)
    callback_retry_max_delay: float = Field(3600.0, gt=0)
    #: Attempts stop (``callback_failed_at``) once this long has passed since the first.
    callback_retry_for: float = Field(8 * 3600.0, gt=0)

    # Tenants (``worker.fairness``).
    #: Round-robin weights of tenants with work waiting: ``acme=3,beta=1``; a tenant not
    #: named weighs 1.
    tenant_weights: str | None = None

    @field_validator("tenant_weights")
    @classmethod
    def _weights_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_weights(value)  # ValueError in words
        return value

    @property
    def tenant_weight_map(self) -> dict[str, int]:
        return parse_weights(self.tenant_weights or "")

    # Keeping outputs (``worker.keep_outputs``).
    #: Copy every job's outputs to durable storage before it completes, unless the job
    #: says otherwise (``keep_outputs=False``); off, only jobs that ask are copied.
    keep_outputs: bool = False
    #: The directory target (the default): outputs go to ``<dir>/<job id>/output<N>.<ext>``.
    outputs_dir: str = ".wavequeue/outputs"
    #: With a bucket, outputs go to S3-compatible storage instead (boto3; credentials from
    #: the environment as boto3 reads them): ``s3://<bucket>/<prefix><job id>/output<N>.<ext>``.
    outputs_s3_bucket: str | None = None
    #: The S3 endpoint (MinIO, R2, a moto server ...); unset: AWS's own.
    outputs_s3_endpoint: str | None = None
    outputs_s3_prefix: str = "wavequeue/"
    #: A failed copy is tried again after this long, doubling up to the max delay ...
    persist_retry_base_delay: float = Field(10.0, gt=0)
    persist_retry_max_delay: float = Field(600.0, gt=0)
    #: ... until this long after the prediction completed; then the job completes with
    #: WaveSpeed's URLs only and ``persist_error`` says so.
    persist_retry_for: float = Field(86400.0, gt=0, le=MAX_PERSIST_RETRY_FOR)

    @model_validator(mode="after")
    def _check_persist(self) -> Settings:
        if self.persist_retry_max_delay < self.persist_retry_base_delay:
            raise ValueError("persist_retry_max_delay must be >= persist_retry_base_delay")
        return self

    @field_validator("callback_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # The value is never echoed: a refused secret is still a secret.
        if value is None or not value.get_secret_value():
            return None
        try:
            callback_key(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return value

    # Cost and budgets (worker.budgets, worker.balance). The environment gives US dollars
    # ("250", "12.50"); the fields hold whole micro-dollars (an int is taken as such).
    #: The whole account's daily cap (UTC day); unset, no cap.
    daily_budget_micros: int | None = None
    #: Per-tenant daily caps, ``acme=50,beta=12.50``; ``*=5`` caps every tenant that has no
    #: cap of its own. ``wavequeue budget set`` overrides them at run time.
    tenant_budgets_micros: dict[str, int] = Field(default_factory=dict)
    #: Below this account balance (read by the sweeper), submission pauses fleet-wide;
    #: unset, the balance is not read.
    low_balance_micros: int | None = None
    #: How often the sweeper reads the account balance (s).
    balance_check_interval: float = Field(60.0, ge=1.0)

    @field_validator("daily_budget_micros", "low_balance_micros", mode="before")
    @classmethod
    def _amount(cls, value: object) -> object:
        if value is None:
            return None
        plain_int = isinstance(value, int) and not isinstance(value, bool)
        micros = int(value) if plain_int else usd_to_micros(value)  # type: ignore[call-overload]
        if micros < 0:
            raise ValueError("must not be negative")
        return micros

    @field_validator("tenant_budgets_micros", mode="before")
    @classmethod
    def _tenant_amounts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return parse_tenant_amounts(value)

    @model_validator(mode="after")
    def _check_intervals(self) -> Settings:
        if self.poll_max_interval < self.poll_min_interval:
            raise ValueError("poll_max_interval must be >= poll_min_interval")
        if self.retry_max_delay < self.retry_base_delay:
            raise ValueError("retry_max_delay must be >= retry_base_delay")
        return self

    @model_validator(mode="after")
    def _check_redis(self) -> Settings:
        scheme = (self.redis_url or "").partition("://")[0].lower()
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

    def require_callback_secret(self) -> bytes:
        """The HMAC key of the callback secret, or a ConfigError naming the variable."""
        if self.callback_secret is None:
            raise ConfigError(
                "WAVEQUEUE_CALLBACK_SECRET is not set: callbacks cannot be signed "
                "(a Standard Webhooks secret, whsec_ followed by base64)"
            )
        return callback_key(self.callback_secret)

    @property
    def callback_lease(self) -> float:
        """How long the right to POST one callback lasts: two full POSTs (connect and read
        timeouts) and a margin, so no second copy POSTs while the first may still."""
        return 4 * self.callback_timeout + 5.0

    @property
    def webhooks_enabled(self) -> bool:
        return self.webhook_url is not None

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
        if self.callback_retry_for > self.record_ttl:
            raise ConfigError(
                f"WAVEQUEUE_CALLBACK_RETRY_FOR={self.callback_retry_for:g}s must not exceed "
                f"WAVEQUEUE_RECORD_TTL={self.record_ttl}s: the record a callback delivers "
                "would expire while it is still being retried"
            )
        post = self.connect_timeout + self.read_timeout
        if post * 2 > self.submit_lease:
            raise ConfigError(
                f"WAVEQUEUE_TASK_TIME_LIMIT={self.task_time_limit:g}s (the submit lease) must be "
                f"at least twice WAVEQUEUE_CONNECT_TIMEOUT + WAVEQUEUE_READ_TIMEOUT ({post:g}s), "
                "so that a submit POST always ends before another copy may take over its job"
            )

    def require_redis_url(self) -> str:
        """The Redis URL, or a ConfigError that says how to name one."""
        if not self.redis_url:
            raise ConfigError(
                "REDIS_URL is not set and no local stack is running: set "
                "REDIS_URL=redis://host:6379/0 to name your Redis (or pass redis_url= to "
                "JobClient), or start the local stack with `wavequeue up` in this folder, "
                f"whose {STACK_ENV_PATH} is then read"
            )
        return self.redis_url

    def require_api_key(self) -> str:
        """The API key, or a ConfigError naming the variable to set."""
        if self.api_key is None or not self.api_key.get_secret_value():
            raise ConfigError("WAVESPEED_API_KEY is not set: the worker cannot call WaveSpeed")
        return self.api_key.get_secret_value()

    def require_webhook_url_key(self) -> bytes:
        """The key that MACs callback URLs, or a ConfigError naming the variable to set."""
        if self.webhook_url_key is None or not self.webhook_url_key.get_secret_value():
            raise ConfigError(
                "WAVEQUEUE_WEBHOOK_URL_KEY is not set: with WAVEQUEUE_WEBHOOK_URL, workers and "
                "`wavequeue webhooks` need the same secret to sign and check callback URLs"
            )
        return self.webhook_url_key.get_secret_value().encode()

    def check_for_worker(self) -> None:
        """Everything a worker needs before its first job; ConfigError otherwise."""
        self.require_redis_url()
        self.require_api_key()
        self.validate_timings()
        if self.webhooks_enabled:
            self.require_webhook_url_key()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        stack_env: Path | None = STACK_ENV_PATH,
    ) -> Settings:
        """Build from environment variables; unset ones keep their defaults.

        Without ``REDIS_URL``, the variables of a running local stack's ``stack_env``
        file (``worker.local_stack``) apply beneath the environment's; ``stack_env=None``
        (``wavequeue up`` itself) never reads one. With neither, ``redis_url`` stays
        unset and anything that needs Redis raises ``ConfigError``.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        if env.get("REDIS_URL", "") == "" and stack_env is not None:
            stack = running_stack_env(stack_env)
            if stack is not None:
                env = {**stack, **{k: v for k, v in env.items() if v != ""}}
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
                problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
            raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
