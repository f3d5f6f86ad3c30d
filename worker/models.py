"""The endpoint registry, request validation, and the job record's shape.

One ``Endpoint`` per WaveSpeed model: its path, its kind and the pydantic model
that validates a request before anything is enqueued. Ranges and enums are the
ones in the WaveSpeed docs (see DESIGN.md). Adding a model is one entry in
``ENDPOINTS``.

wavequeue always submits in async mode: ``enable_sync_mode`` would hold a
worker slot for the whole inference, which is what this system exists to
avoid, so the request models do not accept it.

Input images follow one rule (``worker.image_refs``: http(s) to a public host, or
a capped ``data:image`` URI); the limits on prompts, images and the whole request
come from ``worker.limits``. Anything that validates a request, producer or
worker, gets both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

# The tenant rules live in worker.tenants (settings read them too); named here as well.
from worker import tenants
from worker.constants import DEFAULT_TENANT, QUEUE_HIGH, QUEUE_NORMAL, TENANT_PATTERN
from worker.errors import ValidationError
from worker.image_refs import ImageReferenceError, check_image_reference
from worker.inline_images import is_marker
from worker.limits import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_REQUEST_BYTES, megabytes
from worker.money import usd_to_micros

MODEL_PREFIX = "wavespeed-ai/"

AspectRatio = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
SafetyTolerance = Literal["1", "2", "3", "4", "5"]
Seed = Annotated[int, Field(ge=-1, le=2_147_483_647)]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]

#: The key of the validation context that carries ``allow_private_image_urls``.
ALLOW_PRIVATE_IMAGE_URLS = "allow_private_image_urls"


def _image_reference(value: str, info: pydantic.ValidationInfo) -> str:
    """The image rule of ``worker.image_refs``, with the caller's setting from the context."""
    context = info.context if isinstance(info.context, Mapping) else {}
    try:
        return check_image_reference(
            value, allow_private=bool(context.get(ALLOW_PRIVATE_IMAGE_URLS, False))
        )
    except ImageReferenceError as exc:
        # A custom error keeps the message as written (no "Value error, " prefix);
        # the reason goes in as context so braces in it are never read as a template.
        raise PydanticCustomError("image_reference", "{reason}", {"reason": str(exc)}) from None


ImageRef = Annotated[str, pydantic.AfterValidator(_image_reference)]


class _Request(BaseModel):
    # strict: no silent "3.5" -> 3.5 or True -> 1; an int is still a valid float.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: Prompt

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("safety_tolerance", mode="before", check_fields=False)
    @classmethod
    def _tolerance_as_string(cls, value: object) -> object:
        # WaveSpeed wants the string "1".."5"; accept the obvious int spelling too.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class KontextProEdit(_Request):
    image: ImageRef
    guidance_scale: float = Field(3.5, ge=1.0, le=10.0)
    safety_tolerance: SafetyTolerance = "2"


class KontextMaxTextToImage(_Request):
    seed: Seed | None = None
    guidance_scale: float = Field(3.5, ge=1.0, le=20.0)
    aspect_ratio: AspectRatio = "1:1"


class KontextMaxEdit(_Request):
    image: ImageRef
    seed: Seed | None = None
    guidance_scale: float = Field(3.5, ge=1.0, le=20.0)
    aspect_ratio: AspectRatio | None = None


class KontextProTextToImage(_Request):
    aspect_ratio: AspectRatio = "1:1"
    num_images: int = Field(1, ge=1, le=4)
    seed: Seed | None = None
    guidance_scale: float = Field(3.5, ge=1.0, le=20.0)
    safety_tolerance: SafetyTolerance = "2"


class KontextMultiEdit(_Request):
    images: list[ImageRef] = Field(min_length=1, max_length=MAX_IMAGES)
    seed: Seed | None = None
    guidance_scale: float = Field(3.5, ge=1.0, le=20.0)
    aspect_ratio: AspectRatio | None = None


class EndpointKind(StrEnum):
    TEXT_TO_IMAGE = "text-to-image"
    EDIT = "edit"
    MULTI = "multi"


@dataclass(frozen=True)
class Endpoint:
    """One WaveSpeed model: ``model`` is the path after ``wavespeed-ai/``; ``price_micros``
    what WaveSpeed charges per image it delivers, in micro-dollars (``worker.money``)."""

    model: str
    kind: EndpointKind
    request: type[_Request]
    price_micros: int

    @property
    def path(self) -> str:
        """The model id as WaveSpeed and its SDK spell it."""
        return MODEL_PREFIX + self.model


#: WaveSpeed's list prices per image (its model pages: FLUX Kontext Pro $0.04, Kontext Max
#: $0.08; ``num_images`` multiplies). The emulator keeps the same table on its side.
KONTEXT_PRO_PRICE = usd_to_micros("0.04")
KONTEXT_MAX_PRICE = usd_to_micros("0.08")

ENDPOINTS: dict[str, Endpoint] = {
    e.model: e
    for e in (
        Endpoint("flux-kontext-pro", EndpointKind.EDIT, KontextProEdit, KONTEXT_PRO_PRICE),
        Endpoint(
            "flux-kontext-max/text-to-image",
            EndpointKind.TEXT_TO_IMAGE,
            KontextMaxTextToImage,
            KONTEXT_MAX_PRICE,
        ),
        Endpoint("flux-kontext-max", EndpointKind.EDIT, KontextMaxEdit, KONTEXT_MAX_PRICE),
        Endpoint(
            "flux-kontext-pro/text-to-image",
            EndpointKind.TEXT_TO_IMAGE,
            KontextProTextToImage,
            KONTEXT_PRO_PRICE,
        ),
        Endpoint("flux-kontext-pro/multi", EndpointKind.MULTI, KontextMultiEdit, KONTEXT_PRO_PRICE),
        Endpoint("flux-kontext-max/multi", EndpointKind.MULTI, KontextMultiEdit, KONTEXT_MAX_PRICE),
    )
}

DEFAULT_TEXT_TO_IMAGE_MODEL = "flux-kontext-max/text-to-image"
DEFAULT_EDIT_MODEL = "flux-kontext-pro"
DEFAULT_MULTI_MODEL = "flux-kontext-pro/multi"


def get_endpoint(model: str) -> Endpoint:
    """The endpoint for ``model`` (with or without the ``wavespeed-ai/`` prefix)."""
    endpoint = ENDPOINTS.get(model.removeprefix(MODEL_PREFIX))
    if endpoint is None:
        known = ", ".join(sorted(ENDPOINTS))
        raise ValidationError({"model": f"unknown model {model!r}; known: {known}"})
    return endpoint


def price_of(model: str, images: int) -> int:
    """What ``images`` images of ``model`` cost, in micro-dollars (0 for a model this
    version does not know: a record written by a newer one)."""
    endpoint = ENDPOINTS.get(model.removeprefix(MODEL_PREFIX))
    return 0 if endpoint is None else endpoint.price_micros * max(0, int(images))


Tenant = Annotated[str, Field(pattern=TENANT_PATTERN)]


class OnBudget(StrEnum):
    """What a job does when a daily budget it counts against has no room for it."""

    #: Wait (``held: budget``) until the day resets or the cap is raised.
    WAIT = "wait"
    #: End ``failed`` at once with ``budget_exceeded``.
    FAIL = "fail"


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "request"


def validate_request(
    model: str, fields: Mapping[str, Any], *, allow_private_image_urls: bool = False
) -> dict[str, Any]:
    """Validate ``fields`` for ``model``; return the JSON body to send to WaveSpeed.

    Image references follow ``worker.image_refs``; ``allow_private_image_urls`` (the
    caller's ``Settings.allow_private_image_urls``) admits private hosts. The whole
    body is capped at ``MAX_REQUEST_BYTES`` as JSON. Raises ``ValidationError``
    naming every bad field at once (``request`` for the size of the whole).
    """
    endpoint = get_endpoint(model)
    try:
        request = endpoint.request.model_validate(
            dict(fields), context={ALLOW_PRIVATE_IMAGE_URLS: allow_private_image_urls}
        )
    except pydantic.ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            problems.setdefault(_field_name(tuple(err["loc"])), err["msg"])
        raise ValidationError(problems) from None
    body = request.model_dump(exclude_none=True)
    size = 0 if _surely_small(body) else request_size(body)
    if size > MAX_REQUEST_BYTES:
        raise ValidationError(
            {
                "request": f"is {megabytes(size)} as JSON; a request is at most "
                f"{megabytes(MAX_REQUEST_BYTES)} (pass big images by URL)"
            }
        )
    return body


def image_reference_problems(
    body: Mapping[str, Any], *, allow_private_image_urls: bool = False
) -> dict[str, str]:
    """The URL rule on every image of a stored request body, as the worker applies it
    again before anything is sent on (a record written by an older producer, or straight
    into Redis, or a chain step's image filled in at run time): ``{field: why}``, empty
    when every image passes. An inline-image marker is not an image (it must have been
    uploaded first)."""
    problems: dict[str, str] = {}
    for field in ("image", "images"):
        value = body.get(field)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if item is None:
                continue
            name = field if index is None else f"{field}[{index}]"
            if not isinstance(item, str) or is_marker(item):
                problems[name] = "not an image reference"
                continue
            try:
                check_image_reference(item, allow_private=allow_private_image_urls)
            except ImageReferenceError as exc:
                problems[name] = str(exc)
    return problems


def request_size(body: Mapping[str, Any]) -> int:
    """Bytes of ``body`` as compact UTF-8 JSON: what the limit on a request counts."""
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())


def _surely_small(body: Mapping[str, Any]) -> bool:
    """True when ``body`` cannot reach ``MAX_REQUEST_BYTES`` (no character takes more
    than 6 bytes as JSON), so the usual request skips encoding itself to be measured."""
    strings = [*body.values(), *body.get("images", ())]
    characters = sum(len(value) for value in strings if isinstance(value, str))
    return characters * 6 + 64 * 1024 < MAX_REQUEST_BYTES


class JobStatus(StrEnum):
    """A job's life. Statuses only move forward (see ``can_move``)."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    #: Completed at WaveSpeed, its outputs not yet copied to durable storage (the job asked
    #: to keep them, ``worker.keep_outputs``): live until the copy succeeds.
    PERSISTING = "persisting"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    #: Stopped by ``JobClient.cancel`` (or with its chain): never submitted if it was not
    #: yet, its remote result ignored if it was (WaveSpeed has no cancel endpoint).
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def rank(self) -> int:
        return _RANK[self]


TERMINAL_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED}
)
_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.SUBMITTING: 1,
    JobStatus.SUBMITTED: 2,
    JobStatus.PROCESSING: 3,
    JobStatus.PERSISTING: 4,
    JobStatus.COMPLETED: 5,
    JobStatus.FAILED: 5,
    JobStatus.TIMED_OUT: 5,
    JobStatus.CANCELLED: 5,
}


def can_move(current: JobStatus, new: JobStatus) -> bool:
    """Forward only; nothing leaves a terminal status."""
    return not current.is_terminal and new.rank > current.rank


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"

    @property
    def queue(self) -> str:
        """The Celery queue of this priority (separate lists; see the README)."""
        return QUEUE_HIGH if self is Priority.HIGH else QUEUE_NORMAL


class JobError(BaseModel):
    code: int | str
    message: str


#: Why a value is not a tenant name (``worker.tenants``), or None.
tenant_problem = tenants.tenant_problem


def check_tenant(value: str) -> str:
    """``value`` if it is a tenant name; ``ValidationError`` naming ``tenant`` otherwise."""
    why = tenant_problem(value)
    if why is not None:
        raise ValidationError({"tenant": why})
    return value


def to_the_millisecond(seconds: float) -> float:
    """A time as records keep it: to the millisecond (a shorter text in Redis)."""
    return round(seconds, 3)


class JobState(BaseModel):
    """A job without its request: what the worker reads on every run. Stored in the job's
    hash, small fields only, so Redis keeps it in its compact (listpack) encoding."""

    model_config = ConfigDict(frozen=True)

    id: str
    model: str
    status: JobStatus
    priority: Priority = Priority.NORMAL
    #: Images the request asks for (``num_images``): what the rate limiter counts.
    images: int = 1
    #: Who the job is for: submission slots are shared fairly between tenants with work
    #: waiting (``worker.fairness``); spend, budgets and figures are counted per tenant.
    tenant: Tenant = DEFAULT_TENANT
    #: What to do when a daily budget has no room (``worker.budgets``).
    on_budget: OnBudget = OnBudget.WAIT
    #: Micro-dollars: the price list's figure for the images asked for (set when enqueued,
    #: reserved against the budgets at the submit claim) ...
    estimated_cost_micros: int | None = None
    #: ... and what WaveSpeed billed, set when the job ends: the price per image times the
    #: images delivered when it completed, 0 otherwise (a failed prediction is not billed).
    cost_micros: int | None = None
    #: The job ended while a prediction of it may still run (cancelled after its submit,
    #: timed out, submit outcome unknown): WaveSpeed may bill it; its estimate is counted
    #: as unconfirmed spend, against the budgets, but not as billed.
    cost_unconfirmed: bool = False
    #: Why a live job is not being submitted: ``budget`` while a daily cap has no room.
    held: str | None = None
    prediction_id: str | None = None
    outputs: list[str] = Field(default_factory=list)
    has_nsfw_contents: list[bool] = Field(default_factory=list)
    error: JobError | None = None
    attempts: int = 0
    polls: int = 0
    inference_ms: float | None = None
    created_at: float
    submitted_at: float | None = None
    completed_at: float | None = None
    deadline_at: float
    chain_id: str | None = None
    step: int | None = None
    idempotency_key: str | None = None
    #: The failed or timed-out job this one runs again (``JobClient.retry``).
    retry_of: str | None = None
    #: Where the worker POSTs the final record once the job ends (``worker.callbacks``),
    #: and how that delivery went: attempts made, the last HTTP status answered (0: no
    #: answer), when a 2xx came back, and when the worker gave up.
    callback_url: str | None = None
    callback_attempts: int = 0
    callback_status: int | None = None
    callback_delivered_at: float | None = None
    callback_failed_at: float | None = None
    #: Copy the outputs to durable storage before the job completes (``worker.keep_outputs``):
    #: True or False as the job asked, None for the workers' default (``WAVEQUEUE_KEEP_OUTPUTS``).
    keep_outputs: bool | None = None
    #: Where the outputs were copied (``file://...``, ``s3://bucket/key``), in the order of
    #: ``outputs`` (which keeps WaveSpeed's URLs; WaveSpeed deletes them after 7 days).
    stored_outputs: list[str] = Field(default_factory=list)
    #: Copies tried and failed so far, and the last failure (while ``persisting``, or on a
    #: job that ended without its copy: see ``worker.keep_outputs``).
    persist_attempts: int = 0
    persist_error: JobError | None = None

    @field_validator(
        "created_at",
        "submitted_at",
        "completed_at",
        "deadline_at",
        "callback_delivered_at",
        "callback_failed_at",
    )
    @classmethod
    def _to_the_millisecond(cls, value: float | None) -> float | None:
        # As the store keeps them: a record equals itself read back.
        return None if value is None else to_the_millisecond(value)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class JobRecord(JobState):
    """The public view of a job, as returned to producers: its state plus its request
    (``input``, the body sent to WaveSpeed, and the producer's ``metadata``), which the
    store keeps apart because only the submit needs it."""

    input: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def state(self) -> JobState:
        return JobState.model_validate(self.model_dump(exclude={"input", "metadata"}))
