"""``JobClient``: what a backend uses to enqueue jobs and chains, read and wait for them.

Enqueueing writes the job record (status ``queued``) and pushes its first
``wavequeue.run_job`` message in one atomic script (``producer.outgoing`` builds the
message as Celery's ``send_task`` would), so a worker never receives a message for a
record that does not exist, and no record waits for a message that was never sent.
The message carries the job id only; the request itself lives in the record. The
producer never imports ``worker.tasks`` and never needs the WaveSpeed API key: it
drops the key from its settings.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import functools
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

import redis

from producer.chain_spec import EditSpec, FirstStep, PreparedStep, prepare_chain
from producer.chain_status import ChainStatus, derive_chain_status
from producer.errors import (
    ChainNotRetryableError,
    JobNotFoundError,
    NotRetryableError,
    ValidationError,
)
from producer.images import DEFAULT_MAX_INLINE_BYTES, REFUSE, LocalFiles
from producer.job_waiter import JobsWaiter, Progress
from producer.options import JobOptions
from producer.prepare import Limits, PreparedJob, prepare_from_mapping, prepare_job
from producer.waiting import DEFAULT_REREAD_INTERVAL, Check, wait_for
from worker.budgets import Budgets, BudgetStatus, DaySpend, last_days, wake_held
from worker.constants import DEFAULT_TENANT, TENANT_PATTERN
from worker.errors import ConfigError
from worker.inline_images import marker_ids, with_images
from worker.job_listing import DEFAULT_PAGE, JobPage, check_filter, list_jobs
from worker.models import (
    DEFAULT_EDIT_MODEL,
    DEFAULT_MULTI_MODEL,
    DEFAULT_TEXT_TO_IMAGE_MODEL,
    EndpointKind,
    JobRecord,
    JobState,
    JobStatus,
    Priority,
    price_of,
    validate_request,
)
from worker.money import ANY_TENANT, usd_to_micros
from worker.redis_connection import unavailable
from worker.settings import Settings
from worker.store import JobStore, NewJob, request_fingerprint

if TYPE_CHECKING:
    from celery import Celery

    from producer.outgoing import RunJobMessages

#: Bookkeeping field on chain step records: the step's own deadline in seconds,
#: so that ``retry_chain`` gives a retried step the same time budget.
STEP_DEADLINE_FIELD = "step_deadline"
#: Bookkeeping field the worker reads: this step's ``image`` is the previous output.
AWAITING_IMAGE_FIELD = "awaiting_image"
#: Bookkeeping field the store reads: the step's chain has a callback.
CHAIN_CALLBACK_FIELD = "chain_callback"
#: Default extra time ``wait`` allows past the last deadline of what it waits for.
DEFAULT_WAIT_GRACE = 60.0
#: Each priority's queue, looked up once (``Priority.queue`` is an enum property: slow).
QUEUE_OF = {priority: priority.queue for priority in Priority}
#: ``submit_many`` writes this many jobs per round trip.
SUBMIT_MANY_CHUNK = 1000

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _redis_errors_mapped(method: Callable[P, R]) -> Callable[P, R]:
    """Redis lost for the whole retry window (or the password refused) raises
    ``BrokerUnavailableError``, naming the Redis without its password."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            client = args[0]
            assert isinstance(client, JobClient)
            raise unavailable(client.settings, exc) from exc

    return wrapper


def _options_of(options: JobOptions) -> dict[str, Any]:
    """The options that make two requests with one idempotency key the same request."""
    return {
        "priority": options.priority.value,
        "deadline": options.deadline,
        "metadata": dict(options.metadata),
        "tenant": options.tenant,
        "callback_url": options.callback_url,
        "on_budget": str(options.on_budget),
    }


def _retry_key(job_id: str) -> str:
    """The idempotency key of the one retry of a failed job (or chain step)."""
    return f"wavequeue.retry:{job_id}"


def _check_timeout(timeout: float | None) -> None:
    """A wait's timeout is seconds from now: ``ValidationError`` for a negative one."""
    if timeout is not None and not timeout >= 0:  # NaN too
        raise ValidationError({"timeout": f"must be >= 0 seconds, not {timeout!r}"})


class _Built(NamedTuple):
    """A job ready to create, and its ``task-sent`` event (when the producer sends them)."""

    job: NewJob
    sent_event: dict[str, Any] | None


class JobOptionsInput(NamedTuple):
    """The per-job options as a caller gave them (checked by ``prepare_job``)."""

    priority: Priority | str
    deadline: float | None
    metadata: Mapping[str, Any] | None
    idempotency_key: str | None
    callback_url: str | None = None
    tenant: str | None = None
    keep_outputs: bool | None = None
    on_budget: str | None = None


class JobClient:
    """Enqueue FLUX.1 Kontext jobs and chains; read their status; wait for them.

    Build it from ``Settings`` (``JobClient(Settings.from_env())``, or simply
    ``JobClient.from_env()``) or from explicit arguments
    (``JobClient(redis_url="redis://redis:6379/0")``). Thread-safe for use from
    many request handlers; ``close()`` (or ``with``) releases the connections.

    While Redis is unreachable (restarting, failing over, a network cut) a call keeps
    reconnecting for ``WAVEQUEUE_REDIS_RETRY_WINDOW`` seconds (10 by default) and then
    raises ``BrokerUnavailableError``: against a Redis that stays down it blocks at most
    that window plus one connect timeout (see ``worker.redis_connection``).

    Local image files: by default a client reads none, and a string that is not an
    http(s) URL or a data URI is refused rather than read from this machine's disk (a
    backend passes its users' strings on). ``local_images="any"`` reads any file the
    process can; a directory (``local_images=Path("/srv/uploads")``) reads only files
    under it, symlinks resolved; ``WAVEQUEUE_LOCAL_IMAGES`` sets the same.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        job_deadline: float | None = None,
        record_ttl: int | None = None,
        max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES,
        reread_interval: float = DEFAULT_REREAD_INTERVAL,
        wait_grace: float = DEFAULT_WAIT_GRACE,
        local_images: str | os.PathLike[str] | None = None,
    ) -> None:
        base = settings if settings is not None else Settings()
        overrides = {
            name: value
            for name, value in (
                ("redis_url", redis_url),
                ("job_deadline", job_deadline),
                ("record_ttl", record_ttl),
                ("local_images", None if local_images is None else os.fspath(local_images)),
            )
            if value is not None
        }
        # The API key is left out on purpose: only workers talk to WaveSpeed.
        self.settings = Settings(**{**base.model_dump(exclude={"api_key"}), **overrides})
        try:
            # Unset, a client refuses local paths: its strings may be its users' input.
            self.local_files = LocalFiles.parse(self.settings.local_images or REFUSE)
        except ValueError as exc:
            raise ConfigError(f"invalid configuration: WAVEQUEUE_LOCAL_IMAGES: {exc}") from None
        self.store = JobStore.from_settings(self.settings)
        self.max_inline_bytes = max_inline_bytes
        self.reread_interval = reread_interval
        self.wait_grace = wait_grace
        self._app: Celery | None = None
        self._app_lock = threading.Lock()
        self._run_job_messages: RunJobMessages | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> JobClient:
        """A client configured by ``REDIS_URL``, ``WAVEQUEUE_JOB_DEADLINE`` and friends."""
        return cls(Settings.from_env(), **overrides)

    # lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
        self.store.client.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # single jobs --------------------------------------------------------------

    def text_to_image(
        self,
        prompt: str,
        *,
        model: str = DEFAULT_TEXT_TO_IMAGE_MODEL,
        seed: int | None = None,
        guidance_scale: float | None = None,
        aspect_ratio: str | None = None,
        num_images: int | None = None,
        safety_tolerance: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        tenant: str | None = None,
        keep_outputs: bool | None = None,
        on_budget: str | None = None,
    ) -> str:
        """Enqueue a generation; returns the job id. ``num_images`` and
        ``safety_tolerance`` exist on ``flux-kontext-pro/text-to-image`` only.
        ``tenant``: who the job is for (spend and budgets count per tenant; default
        ``default``); ``on_budget``: ``wait`` (default) or ``fail`` when a daily budget
        has no room for it."""
        fields = {
            "prompt": prompt,
            "seed": seed,
            "guidance_scale": guidance_scale,
            "aspect_ratio": aspect_ratio,
            "num_images": num_images,
            "safety_tolerance": safety_tolerance,
        }
        options = JobOptionsInput(
            priority,
            deadline,
            metadata,
            idempotency_key,
            callback_url,
            tenant,
            keep_outputs,
            on_budget,
        )
        return self._enqueue(EndpointKind.TEXT_TO_IMAGE, model, fields, options)

    def edit(
        self,
        image: str | os.PathLike[str],
        prompt: str,
        *,
        model: str = DEFAULT_EDIT_MODEL,
        seed: int | None = None,
        guidance_scale: float | None = None,
        aspect_ratio: str | None = None,
        safety_tolerance: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        tenant: str | None = None,
        keep_outputs: bool | None = None,
        on_budget: str | None = None,
    ) -> str:
        """Enqueue an edit of one image (URL, data URI or local file); returns the job id.
        ``flux-kontext-pro`` takes ``safety_tolerance``; ``flux-kontext-max`` takes
        ``seed`` and ``aspect_ratio``."""
        fields = {
            "image": image,
            "prompt": prompt,
            "seed": seed,
            "guidance_scale": guidance_scale,
            "aspect_ratio": aspect_ratio,
            "safety_tolerance": safety_tolerance,
        }
        options = JobOptionsInput(
            priority,
            deadline,
            metadata,
            idempotency_key,
            callback_url,
            tenant,
            keep_outputs,
            on_budget,
        )
        return self._enqueue(EndpointKind.EDIT, model, fields, options)

    def multi_edit(
        self,
        images: Sequence[str | os.PathLike[str]],
        prompt: str,
        *,
        model: str = DEFAULT_MULTI_MODEL,
        seed: int | None = None,
        guidance_scale: float | None = None,
        aspect_ratio: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        tenant: str | None = None,
        keep_outputs: bool | None = None,
        on_budget: str | None = None,
    ) -> str:
        """Enqueue an edit that combines 1-5 images; returns the job id."""
        fields = {
            "images": list(images) if isinstance(images, list | tuple) else images,
            "prompt": prompt,
            "seed": seed,
            "guidance_scale": guidance_scale,
            "aspect_ratio": aspect_ratio,
        }
        options = JobOptionsInput(
            priority,
            deadline,
            metadata,
            idempotency_key,
            callback_url,
            tenant,
            keep_outputs,
            on_budget,
        )
        return self._enqueue(EndpointKind.MULTI, model, fields, options)

    def _enqueue(
        self,
        kind: EndpointKind,
        model: str,
        fields: dict[str, Any],
        options: JobOptionsInput,
    ) -> str:
        prepared = prepare_job(
            kind,
            model,
            fields,
            self.limits(),
            priority=options.priority,
            deadline=options.deadline,
            metadata=options.metadata,
            idempotency_key=options.idempotency_key,
            callback_url=options.callback_url,
            tenant=options.tenant,
            keep_outputs=options.keep_outputs,
            on_budget=options.on_budget,
        )
        return self.submit(prepared)

    def limits(self, image_base: Path | None = None) -> Limits:
        """What request checks need from this client (deadline default, image size cap,
        whether image URLs may name private hosts)."""
        return Limits(
            default_deadline=self.settings.job_deadline,
            max_inline_bytes=self.max_inline_bytes,
            image_base=image_base,
            allow_private_image_urls=self.settings.allow_private_image_urls,
            local_files=self.local_files,
            callbacks_signed=self.settings.callback_secret is not None,
        )

    def prepare(self, request: Mapping[str, Any], *, image_base: Path | None = None) -> PreparedJob:
        """Check a request written as one mapping (the batch line format, see
        ``prepare_from_mapping``) without enqueueing it; ``submit`` it later."""
        return prepare_from_mapping(request, self.limits(image_base))

    def prepare_many(
        self, requests: Sequence[Mapping[str, Any]], *, image_base: Path | None = None
    ) -> list[PreparedJob]:
        """``prepare`` for each request, every one checked before any is returned: one
        ``ValidationError`` names every problem as ``itemN.field`` (N counts from 0)."""
        problems: dict[str, str] = {}
        prepared: list[PreparedJob] = []
        limits = self.limits(image_base)
        for index, request in enumerate(requests):
            try:
                prepared.append(prepare_from_mapping(request, limits))
            except ValidationError as exc:
                problems.update(
                    {f"item{index}.{field}": why for field, why in exc.problems.items()}
                )
        if problems:
            raise ValidationError(problems)
        return prepared

    @_redis_errors_mapped
    def submit(self, prepared: PreparedJob) -> str:
        """Enqueue a checked request; returns the job id. With an idempotency key
        already used, returns the first job's id and sends nothing.

        One round trip: the record and its first message are written by one script."""
        built = self._new_job(prepared, self.store.clock())
        job_id, created = self.store.create(built.job)
        if created and built.sent_event is not None:
            self._sent_events([built.sent_event])
        return job_id

    def submit_many(self, prepared: Sequence[PreparedJob]) -> list[str]:
        """Enqueue many checked requests (``prepare`` / ``prepare_many``); returns their job
        ids in the order given (an idempotency key already used gives the first job's id,
        and sends nothing again).

        Every item is checked to be a ``PreparedJob`` before anything is written. Records
        and messages go out in pipelines of ``SUBMIT_MANY_CHUNK`` jobs, each job atomically
        (its record and its message, or neither). If Redis is lost for good mid-way,
        ``BrokerUnavailableError`` says how many were enqueued: those came first in order.
        """
        jobs = list(prepared)
        wrong = {
            f"item{index}": f"must be a PreparedJob (from prepare), not {type(job).__name__}"
            for index, job in enumerate(jobs)
            if not isinstance(job, PreparedJob)
        }
        if wrong:
            raise ValidationError(wrong)
        job_ids: list[str] = []
        for start in range(0, len(jobs), SUBMIT_MANY_CHUNK):
            chunk = jobs[start : start + SUBMIT_MANY_CHUNK]
            try:
                job_ids.extend(self._submit_chunk(chunk))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                advice = (
                    f"the first {len(job_ids)} of {len(jobs)} jobs were enqueued, the rest "
                    "were not (jobs with an idempotency key can be submitted again safely)"
                )
                raise unavailable(self.settings, exc, advice=advice) from exc
        return job_ids

    def _submit_chunk(self, prepared: Sequence[PreparedJob]) -> list[str]:
        now = self.store.clock()
        built = [self._new_job(job, now) for job in prepared]
        results = self.store.create_jobs([b.job for b in built])
        events = [
            b.sent_event
            for b, (_, created) in zip(built, results, strict=True)
            if created and b.sent_event is not None
        ]
        if events:
            self._sent_events(events)
        return [job_id for job_id, _ in results]

    def _new_job(self, prepared: PreparedJob, now: float) -> _Built:
        """The record of a checked request, with its first message."""
        options = prepared.options
        record = JobRecord(
            id=uuid.uuid4().hex,
            model=prepared.model,
            input=prepared.body,
            status=JobStatus.QUEUED,
            priority=options.priority,
            created_at=now,
            deadline_at=now + options.deadline,
            metadata=dict(options.metadata),
            idempotency_key=options.idempotency_key,
            callback_url=options.callback_url,
            tenant=options.tenant,
            keep_outputs=options.keep_outputs,
            on_budget=options.on_budget,
            estimated_cost_micros=price_of(prepared.model, _images_of(prepared.body)),
        )
        message = self._messages().build(record.id, QUEUE_OF[options.priority], record.model)
        fingerprint = None
        if options.idempotency_key is not None:
            fingerprint = request_fingerprint(prepared.model, prepared.body, _options_of(options))
        job = NewJob(
            record, options.idempotency_key, message=message.outgoing, fingerprint=fingerprint
        )
        return _Built(job, message.sent_event)

    def _sent_events(self, events: list[dict[str, Any]]) -> None:
        """Publish ``task-sent`` events (``WAVEQUEUE_PRODUCER_SENT_EVENTS``). The jobs are
        enqueued already: a failure here is a monitor's loss, never the caller's error."""
        from kombu.exceptions import OperationalError  # noqa: PLC0415 - Celery loads only when sending

        try:
            self._messages().publish_sent_events(events)
        except (OperationalError, redis.RedisError) as exc:
            log.warning("task-sent events for %d job(s) not published: %s", len(events), exc)

    # reading and waiting ------------------------------------------------------

    @_redis_errors_mapped
    def get(self, job_id: str) -> JobRecord:
        """The job's record; ``JobNotFoundError`` if it never existed or expired."""
        return self.store.get(job_id)

    @_redis_errors_mapped
    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """Records in one round trip; ``JobNotFoundError`` names the first missing one."""
        ids = list(job_ids)
        records = self.store.get_many(ids)
        for job_id, record in zip(ids, records, strict=True):
            if record is None:
                raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
        return [record for record in records if record is not None]

    @_redis_errors_mapped
    def get_states(self, job_ids: Iterable[str]) -> list[JobState | None]:
        """The jobs' states without their requests (one round trip); None where a record
        is gone."""
        return self.store.get_states(job_ids)

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """The job's record once it is terminal (completed, failed or timed out).

        ``timeout`` None waits until the job's own deadline plus ``wait_grace``.
        Raises ``WaitTimeoutError`` when the timeout passes first.
        """
        return self.wait_all([job_id], timeout)[0]

    @_redis_errors_mapped
    def wait_all(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        *,
        on_progress: Progress | None = None,
    ) -> list[JobRecord]:
        """Every job's terminal record, in the order given; one pub/sub connection for all.

        Each job's end is announced on its own channel; the waiter reads the records of
        the jobs announced, and re-reads whatever is pending every ``reread_interval``.
        ``on_progress`` is called with the records finished so far: on the first look,
        when more have finished (at most 4 times a second), and at the end.
        """
        _check_timeout(timeout)
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return []
        if timeout is None:
            timeout = self._until_deadlines(self._states(ids))
        waiter = JobsWaiter(self.store, ids, on_progress)
        records = wait_for(
            self.store.client,
            waiter.look,
            watch=ids,
            timeout=timeout,
            reread_interval=self.reread_interval,
            describe=lambda pending: f"{len(pending)} of {len(ids)} job(s) not finished",
        )
        by_id = {record.id: record for record in records}
        return [by_id[job_id] for job_id in job_ids]

    def _states(self, job_ids: list[str]) -> list[JobState]:
        states = self.store.get_states(job_ids)
        for job_id, state in zip(job_ids, states, strict=True):
            if state is None:
                raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
        return [state for state in states if state is not None]

    # chains -------------------------------------------------------------------

    @_redis_errors_mapped
    def chain(
        self,
        first: FirstStep,
        edits: Sequence[EditSpec],
        *,
        edit_model: str = DEFAULT_EDIT_MODEL,
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        tenant: str | None = None,
        keep_outputs: bool | None = None,
        on_budget: str | None = None,
    ) -> str:
        """Enqueue a chain; returns the chain id.

        ``first`` is a ``TextToImage`` (or a mapping of its fields) that generates the
        first picture, or an image (URL, data URI, path) that the first edit takes.
        Each edit is a prompt, an ``Edit``, or a mapping of its fields; its input image
        is the previous step's first output. ``deadline`` is per step: step N must end
        within N x deadline of enqueueing. Every step is checked before anything is
        written; problems are named ``stepN.field``. ``callback_url``: the chain's final
        record is POSTed there when it ends (its steps call nothing back themselves).
        """
        limits = self.limits()
        prepared = prepare_chain(
            first,
            edits,
            limits,
            edit_model=edit_model,
            priority=priority,
            deadline=deadline,
            metadata=metadata,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            tenant=tenant,
            keep_outputs=keep_outputs,
            on_budget=on_budget,
        )
        options = prepared.options
        chain_id = uuid.uuid4().hex
        now = self.store.clock()
        job_ids: builtins.list[str] = []
        # The key stands for the whole chain: every step's request and the options.
        fingerprint = request_fingerprint(
            [(step.model, step.body) for step in prepared.steps], _options_of(options)
        )
        for number, step in enumerate(prepared.steps, start=1):
            key = options.idempotency_key if number == 1 else None
            record = self._step_record(step, options, chain_id, number, now)
            job_id, created = self.store.create_job(
                record,
                idempotency_key=key,
                extra=self._step_extra(
                    step.awaiting_image, options.deadline, chain_callback=bool(options.callback_url)
                ),
                fingerprint=fingerprint if key is not None else None,
            )
            if not created:
                # The key was used before: this chain exists already (its first step
                # carries the key). Nothing has been written for this call yet.
                return self._chain_of_existing_job(job_id)
            job_ids.append(job_id)
        self.store.create_chain(
            chain_id, job_ids, metadata=options.metadata, callback_url=options.callback_url
        )
        self._keep_alive(chain_id, job_ids, options.deadline)
        self._send_chain(job_ids, options.queue, [step.model for step in prepared.steps])
        return chain_id

    @_redis_errors_mapped
    def chain_status(self, chain_id: str) -> ChainStatus:
        """The chain's state, its current step and every step's outputs so far."""
        snapshot = self.store.get_chain(chain_id)
        records = self.store.get_many(snapshot.step_job_ids)
        for number, (job_id, record) in enumerate(
            zip(snapshot.step_job_ids, records, strict=True), start=1
        ):
            if record is None:
                raise JobNotFoundError(f"chain {chain_id!r}: step {number} ({job_id}) has expired")
        return derive_chain_status(snapshot, [r for r in records if r is not None])

    @_redis_errors_mapped
    def wait_chain(self, chain_id: str, timeout: float | None = None) -> ChainStatus:
        """The chain's status once it completed or failed; ``WaitTimeoutError`` otherwise.

        ``timeout`` None waits until the last step's deadline plus ``wait_grace``.
        """
        _check_timeout(timeout)
        status = self.chain_status(chain_id)
        if timeout is None:
            timeout = self._until_deadlines(self._states([s.job_id for s in status.steps]))

        def look(_: set[str] | None) -> Check[ChainStatus]:
            # A chain has a few steps: every look reads the whole chain.
            status = self.chain_status(chain_id)
            if status.is_terminal:
                return Check(status, set())
            return Check(None, {step.job_id for step in status.steps})

        return wait_for(
            self.store.client,
            look,
            watch=[step.job_id for step in status.steps],
            timeout=timeout,
            reread_interval=self.reread_interval,
            describe=lambda _: f"chain {chain_id} not finished",
        )

    @_redis_errors_mapped
    def retry_chain(self, chain_id: str) -> str:
        """Resume a failed chain from its failed step; returns that step's new job id.

        Finished steps are not run again: the failed step gets a fresh record (its
        image is the previous step's output, known by now), the chain points at it,
        and a new Celery chain runs it and the steps after it. Later steps still
        ``queued`` keep their records (with fresh deadlines); any that ended meanwhile
        (timed out while the chain stood failed) get fresh records too.
        Concurrent calls for the same failure retry it once (and return the same id);
        a call on a chain that is not failed raises ``ChainNotRetryableError``.
        """
        status = self.chain_status(chain_id)
        failed = status.failed_step
        if failed is None:
            raise ChainNotRetryableError(
                f"chain {chain_id} is {status.state.value}; only a failed chain can be retried"
            )
        snap = self.store.snapshot(failed.job_id)
        step_deadline = float(snap.field(STEP_DEADLINE_FIELD) or self.settings.job_deadline)
        old = self.store.get(failed.job_id)
        body = dict(old.input)
        if failed.number > 1:
            previous = status.steps[failed.number - 2]
            if not previous.outputs:
                raise ChainNotRetryableError(
                    f"chain {chain_id}: step {previous.number} has no output"
                )
            body["image"] = previous.outputs[0]
        body = self._with_stored_images(chain_id, failed.number, body)
        # The body was valid when enqueued; check again, now that the image is real.
        body = validate_request(
            old.model,
            body,
            allow_private_image_urls=self.settings.allow_private_image_urls,
        )
        now = self.store.clock()
        record = self._fresh_step(old, body, now=now, deadline_at=now + step_deadline)
        chain_callback = bool(status.callback.get("callback_url"))
        new_job_id, created = self.store.create_job(
            record,
            # One retry per failed record, however many callers ask at once.
            idempotency_key=_retry_key(old.id),
            extra=self._step_extra(False, step_deadline, chain_callback=chain_callback),
        )
        if not created:
            return new_job_id
        self.store.replace_chain_step(chain_id, failed.number, new_job_id)
        run_ids = [new_job_id]
        for offset, step in enumerate(status.steps[failed.number :], start=2):
            deadline_at = now + offset * step_deadline
            if not self._push_deadline(step.job_id, deadline_at):
                stale = self.store.get(step.job_id)
                awaiting = {k: v for k, v in stale.input.items() if k != "image"}
                fresh = self._fresh_step(stale, awaiting, now=now, deadline_at=deadline_at)
                self.store.create_job(
                    fresh,
                    extra=self._step_extra(True, step_deadline, chain_callback=chain_callback),
                )
                self.store.replace_chain_step(chain_id, step.number, fresh.id)
                step_id = fresh.id
            else:
                step_id = step.job_id
            run_ids.append(step_id)
        self._keep_alive(chain_id, run_ids, step_deadline)
        models = [old.model, *(step.model for step in status.steps[failed.number :])]
        self._send_chain(run_ids, old.priority.queue, models)
        return new_job_id

    def _with_stored_images(self, chain_id: str, step: int, body: dict[str, Any]) -> dict[str, Any]:
        """A step that failed before the worker uploaded its inline images still holds
        markers: take the images back from their keys (the new record stores them again,
        under keys of its own)."""
        image_ids = marker_ids(body)
        if not image_ids:
            return body
        stored = self.store.inline_images(image_ids)
        if len(stored) < len(image_ids):
            raise ChainNotRetryableError(
                f"chain {chain_id}: step {step}'s inline image is no longer stored "
                "(it expired with the record); submit the chain again"
            )
        return with_images(body, stored)

    # cancelling ---------------------------------------------------------------

    @_redis_errors_mapped
    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job; returns its record as it ended (``cancelled``, or how it had ended
        already: cancel is idempotent and never changes a finished job).

        Not yet submitted: it never will be (nothing is sent, nothing billed). Already at
        WaveSpeed (or its submit in flight): it ends ``cancelled`` at once and its result
        is ignored when it arrives, but WaveSpeed has no cancel endpoint, so the prediction
        may still run and be billed (the record's error says which case it was). A chain
        step is cancelled with the steps after it (they could never run without it).
        ``JobNotFoundError`` if there is no such job."""
        state = self.store.get_states([job_id])[0]
        if state is None:
            raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
        job_ids = [job_id]
        if state.chain_id and state.step:
            with contextlib.suppress(JobNotFoundError):
                job_ids += self.store.get_chain(state.chain_id).step_job_ids[state.step :]
        self._cancel(job_ids, state.chain_id)
        return self.store.get(job_id)

    @_redis_errors_mapped
    def cancel_chain(self, chain_id: str) -> ChainStatus:
        """Cancel every step of a chain that has not ended (all in one atomic step); returns
        the chain's status: ``cancelled``, or ``completed`` if it had completed already.
        Steps that ended keep their ending; a cancelled chain cannot be retried."""
        snapshot = self.store.get_chain(chain_id)
        self._cancel(snapshot.step_job_ids, chain_id)
        return self.chain_status(chain_id)

    def _cancel(self, job_ids: builtins.list[str], chain_id: str | None) -> None:
        results = self.store.cancel(job_ids)
        ended = [result.job_id for result in results if result.cancelled_now]
        if not ended:
            return
        log.info("cancelled %d job(s): %s", len(ended), ", ".join(ended))
        # The endings put their callbacks in the outbox: send them now (the workers'
        # sweeper sends any that this could not).
        candidates = [f"job:{job_id}" for job_id in ended]
        if chain_id:
            candidates.append(f"chain:{chain_id}")
        owed = self.store.callbacks_owed(candidates)
        if owed:
            from kombu.exceptions import OperationalError  # noqa: PLC0415 - Celery loads only when sending

            from worker.chains import send_callback_deliveries  # noqa: PLC0415 - same

            try:
                send_callback_deliveries(self._celery(), owed)
            except (OperationalError, redis.RedisError) as exc:
                log.warning("callbacks of cancelled jobs not sent (%s); the workers will", exc)

    # cost and budgets ---------------------------------------------------------

    @property
    def budgets(self) -> Budgets:
        return Budgets(self.store.client, self.settings, clock=self.store.clock)

    @_redis_errors_mapped
    def budget(self, tenant: str = DEFAULT_TENANT) -> BudgetStatus:
        """Today's daily budgets for ``tenant`` and the whole account: caps, what was
        billed, what may be billed, what jobs in flight reserved, and ``remaining`` (the
        smaller of the two; None when neither is capped), all in micro-dollars. Ask before
        enqueueing a batch: a job's estimate is the price per image times its images."""
        return self.budgets.status(_checked_tenant(tenant))

    @_redis_errors_mapped
    def set_budget(self, amount: object, tenant: str | None = None) -> int:
        """Cap ``tenant`` (None: the whole account; ``"*"``: every tenant without a cap of
        its own) at ``amount`` US dollars a day ("12.50"; None lifts the cap), overriding
        the settings until ``clear_budget``. Jobs held for a budget are sent again at once
        if they now fit; returns how many were."""
        micros = None if amount is None else _amount(amount)
        self.budgets.set_cap(_cap_scope(tenant), micros)
        return self._wake_held()

    @_redis_errors_mapped
    def clear_budget(self, tenant: str | None = None) -> int:
        """Forget a cap set at run time: the settings' cap applies again. Returns how many
        held jobs were sent again."""
        self.budgets.clear_cap(_cap_scope(tenant))
        return self._wake_held()

    @_redis_errors_mapped
    def spend(self, days: int = 1) -> list[DaySpend]:
        """What the last ``days`` UTC days spent (today first), per tenant."""
        budgets = self.budgets
        return budgets.spend(last_days(self.store.clock(), days))

    def _wake_held(self) -> int:
        from kombu.exceptions import OperationalError  # noqa: PLC0415 - Celery loads only when sending

        from worker.chains import send_job_and_rest  # noqa: PLC0415 - same

        budgets = self.budgets
        budgets.due_again()
        app = self._celery()
        try:
            return wake_held(
                budgets,
                self.store.snapshots,
                lambda snap: send_job_and_rest(app, self.store, snap.state, {}),
            )
        except OperationalError as exc:
            log.warning("held jobs not sent (%s); the workers' sweeper will", exc)
            return 0

    # finding jobs ---------------------------------------------------------------

    @_redis_errors_mapped
    def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        model: str | Iterable[str] | None = None,
        tenant: str | Iterable[str] | None = None,
        since: float | datetime.datetime | datetime.timedelta | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs, the most recent status change first: ``page.jobs`` (states,
        without their requests; ``get`` reads one whole) and ``page.next_cursor`` to pass
        as ``cursor`` for the next page (None at the end).

        ``status``, ``model`` and ``tenant`` each take one value or several; ``since`` keeps
        jobs that entered their status at or after a time (an epoch number or a
        ``datetime``) or within a ``timedelta`` of now: ``status="failed",
        since=timedelta(hours=1)`` is what failed in the last hour. Served from an index
        the store keeps (``worker.job_listing``): a page costs O(limit), never a scan.
        Finished jobs are listed as long as their records are kept (WAVEQUEUE_RECORD_TTL).
        """
        if isinstance(since, datetime.timedelta):
            since = self.store.clock() - since.total_seconds()
        elif isinstance(since, datetime.datetime):
            since = since.timestamp()
        wanted = check_filter(
            status=status, model=model, tenant=tenant, since=since, limit=limit, cursor=cursor
        )
        return list_jobs(self.store, wanted, limit=limit, cursor=cursor)

    # retrying a job -------------------------------------------------------------

    @_redis_errors_mapped
    def retry(self, job_id: str) -> str:
        """Run a failed or timed-out job again; returns the id of the job that runs.

        A chain's step resumes its chain from the failed step (``retry_chain``). A single
        job is enqueued anew: same model, request, priority, metadata, tenant, callback and
        deadline length, ``retry_of`` naming the old job, whose record stays as it ended
        (nothing revives a finished record). Retrying the same job again, or concurrently,
        returns the same new job; to retry that one in turn, retry its own id.
        ``NotRetryableError`` when the job has not failed or timed out.
        """
        old = self.store.get(job_id)
        if old.chain_id is not None:
            return self.retry_chain(old.chain_id)
        if old.status not in (JobStatus.FAILED, JobStatus.TIMED_OUT):
            raise NotRetryableError(
                f"job {job_id} is {old.status.value}; only a failed or timed-out job can be retried"
            )
        body = old.input
        image_ids = marker_ids(body)
        if image_ids:
            # It failed before the worker uploaded its inline images: take them back (the
            # new record stores them again, under keys of its own).
            stored = self.store.inline_images(image_ids)
            if len(stored) < len(image_ids):
                raise NotRetryableError(
                    f"job {job_id}'s inline image is no longer stored (it expired with the "
                    "record); submit it again"
                )
            body = with_images(body, stored)
        now = self.store.clock()
        record = JobRecord(
            id=uuid.uuid4().hex,
            model=old.model,
            input=body,
            status=JobStatus.QUEUED,
            priority=old.priority,
            created_at=now,
            deadline_at=now + (old.deadline_at - old.created_at),
            metadata=old.metadata,
            tenant=old.tenant,
            on_budget=old.on_budget,
            estimated_cost_micros=price_of(old.model, _images_of(body)),
            callback_url=old.callback_url,
            retry_of=old.id,
        )
        message = self._messages().build(record.id, QUEUE_OF[old.priority], old.model)
        # One retry per failed record, however many callers ask at once.
        key = _retry_key(old.id)
        new_id, created = self.store.create(NewJob(record, key, message=message.outgoing))
        if created and message.sent_event is not None:
            self._sent_events([message.sent_event])
        return new_id

    @_redis_errors_mapped
    def retried_as(self, job_id: str) -> str | None:
        """The job that ``retry`` started for this one, if any (kept as long as records)."""
        return self.store.idempotent_job(_retry_key(job_id))

    # lookup by either kind of id ----------------------------------------------

    def lookup(self, any_id: str) -> JobRecord | ChainStatus:
        """The job with this id, else the chain with this id; ``JobNotFoundError`` if neither."""
        try:
            return self.get(any_id)
        except JobNotFoundError:
            pass
        try:
            return self.chain_status(any_id)
        except JobNotFoundError:
            raise JobNotFoundError(
                f"no job or chain {any_id!r} (never created, or expired)"
            ) from None

    # internals ----------------------------------------------------------------

    def _messages(self) -> RunJobMessages:
        """The message builder, on the Celery app (built on first use)."""
        messages = self._run_job_messages
        if messages is None:
            from producer.outgoing import RunJobMessages  # noqa: PLC0415 - Celery loads only when sending

            messages = self._run_job_messages = RunJobMessages(self._celery())
        return messages

    def _celery(self) -> Celery:
        """The Celery app, built on first send (reading status never needs it).

        ``worker.celery_config`` reads no environment and does not import
        ``worker.tasks``, so the worker's runtime (and its API key) never load here.
        """
        with self._app_lock:
            if self._app is None:
                from worker.celery_config import make_app  # noqa: PLC0415 - Celery loads only when sending

                app = make_app(self.settings)
                # The job record is the result: a producer never reads Celery results.
                # With a result backend, every send (celery's send_task ignores
                # task_ignore_result) would also subscribe to the task's result channel,
                # and that subscription retries on Celery's own, longer schedule while
                # Redis is away (then asks for the app to be restarted).
                app.conf.result_backend = None
                # Celery's task-sent event: a PUBLISH per job, only when asked for.
                app.conf.task_send_sent_event = self.settings.producer_sent_events
                self._app = app
            return self._app

    def _send_chain(
        self, job_ids: builtins.list[str], queue: str, models: Sequence[str | None] = ()
    ) -> None:
        """Send the steps as one Celery chain (a single job: one message); ``models`` label
        the messages for Flower."""
        from worker.chains import send_job_chain  # noqa: PLC0415 - Celery loads only when sending

        with self._publishing(job_ids[0]):
            send_job_chain(self._celery(), job_ids, queue, models=models)

    @contextlib.contextmanager
    def _publishing(self, job_id: str) -> Iterator[None]:
        """kombu gave up sending (after ``task_publish_retry_policy``): the record exists,
        its message does not. The workers' sweeper sends a queued job whose message is
        missing, so the job still runs once Redis is back."""
        from kombu.exceptions import OperationalError  # noqa: PLC0415 - Celery loads only when sending

        try:
            yield
        except OperationalError as exc:
            advice = f"job {job_id} is recorded and the workers send its message once Redis is back"
            raise unavailable(self.settings, exc, advice=advice) from exc

    @staticmethod
    def _step_record(
        step: PreparedStep, options: JobOptions, chain_id: str, number: int, now: float
    ) -> JobRecord:
        return JobRecord(
            id=uuid.uuid4().hex,
            model=step.model,
            input=step.body,
            status=JobStatus.QUEUED,
            priority=options.priority,
            created_at=now,
            # A step cannot start before the steps ahead of it end: budgets add up.
            deadline_at=now + number * options.deadline,
            chain_id=chain_id,
            step=number,
            metadata=dict(options.metadata),
            idempotency_key=options.idempotency_key if number == 1 else None,
            tenant=options.tenant,
            keep_outputs=options.keep_outputs,
            on_budget=options.on_budget,
            estimated_cost_micros=price_of(step.model, _images_of(step.body)),
        )

    @staticmethod
    def _step_extra(
        awaiting_image: bool, deadline: float, *, chain_callback: bool
    ) -> dict[str, str]:
        extra = {STEP_DEADLINE_FIELD: repr(deadline)}
        if awaiting_image:
            extra[AWAITING_IMAGE_FIELD] = "1"
        if chain_callback:
            # The step's ending puts the chain in the callbacks outbox (worker.store).
            extra[CHAIN_CALLBACK_FIELD] = "1"
        return extra

    def _chain_of_existing_job(self, job_id: str) -> str:
        existing = self.store.get(job_id)
        if existing.chain_id is None:
            raise ValidationError(
                {"idempotency_key": f"already used by job {job_id}, which is not a chain"}
            )
        return existing.chain_id

    def _keep_alive(self, chain_id: str, job_ids: builtins.list[str], step_deadline: float) -> None:
        """Give the chain record (and steps that may never run, after a failure) a TTL:
        long enough for every step to use its deadline, plus the usual record TTL.
        A step that ends gets the worker's terminal TTL instead."""
        ttl = int(len(job_ids) * step_deadline) + self.settings.record_ttl
        self.store.keep_alive(chain_id, job_ids, ttl)

    def _push_deadline(self, job_id: str, deadline_at: float) -> bool:
        """Give a still-queued later step a fresh deadline (its old one ran out while the
        chain stood failed); the store re-indexes it. False when the step is no longer
        queued."""
        return bool(
            self.store.transition(
                job_id,
                expect={"status": JobStatus.QUEUED.value},
                updates={"deadline_at": deadline_at},
            )
        )

    @staticmethod
    def _fresh_step(
        old: JobRecord, body: dict[str, Any], *, now: float, deadline_at: float
    ) -> JobRecord:
        """A new queued record for a chain step: same model, place and options."""
        return JobRecord(
            id=uuid.uuid4().hex,
            model=old.model,
            input=body,
            status=JobStatus.QUEUED,
            priority=old.priority,
            created_at=now,
            deadline_at=deadline_at,
            chain_id=old.chain_id,
            step=old.step,
            metadata=old.metadata,
            tenant=old.tenant,
            keep_outputs=old.keep_outputs,
            on_budget=old.on_budget,
            estimated_cost_micros=price_of(old.model, _images_of(body)),
        )

    def _until_deadlines(self, records: Sequence[JobState]) -> float:
        """Seconds until the last of these records' deadlines, plus the grace period."""
        last = max(record.deadline_at for record in records)
        return max(last - self.store.clock(), 0.0) + self.wait_grace


def _images_of(body: Mapping[str, Any]) -> int:
    """Images a request asks for: what it costs (``num_images``, else one)."""
    count = body.get("num_images", 1)
    return count if isinstance(count, int) and not isinstance(count, bool) else 1


def _checked_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or not re.fullmatch(TENANT_PATTERN, tenant):
        raise ValidationError({"tenant": "must be 1 to 64 characters of A-Z a-z 0-9 _ . -"})
    return tenant


def _cap_scope(tenant: str | None) -> str | None:
    """None (the whole account), ``*`` or a tenant name."""
    return tenant if tenant is None or tenant == ANY_TENANT else _checked_tenant(tenant)


def _amount(amount: object) -> int:
    try:
        micros = usd_to_micros(amount)
    except ValueError as exc:
        raise ValidationError({"amount": str(exc)}) from None
    if micros < 0:
        raise ValidationError({"amount": "must not be negative"})
    return micros
