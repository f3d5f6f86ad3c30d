"""Turning a caller's arguments into a checked, ready-to-store job.

Everything is checked here, before anything reaches Redis: the endpoint's own
request model (``worker.models.validate_request``, the same one the worker
trusts), the image references, and the job options. Every problem is collected
and raised at once as one ``ValidationError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.images import (
    DEFAULT_MAX_INLINE_BYTES,
    NO_LOCAL_FILES,
    ImageReferenceError,
    LocalFiles,
    resolve_image,
)
from producer.options import JobOptions, check_options
from worker.errors import ValidationError
from worker.models import (
    DEFAULT_EDIT_MODEL,
    DEFAULT_MULTI_MODEL,
    DEFAULT_TEXT_TO_IMAGE_MODEL,
    ENDPOINTS,
    Endpoint,
    EndpointKind,
    get_endpoint,
    validate_request,
)

DEFAULT_MODEL_FOR_KIND: Mapping[EndpointKind, str] = {
    EndpointKind.TEXT_TO_IMAGE: DEFAULT_TEXT_TO_IMAGE_MODEL,
    EndpointKind.EDIT: DEFAULT_EDIT_MODEL,
    EndpointKind.MULTI: DEFAULT_MULTI_MODEL,
}

#: Keys of a request mapping (a batch line, a chain step) that are options, not fields.
OPTION_KEYS = (
    "priority",
    "deadline",
    "metadata",
    "idempotency_key",
    "callback_url",
    "tenant",
    "keep_outputs",
    "on_budget",
)


@dataclass(frozen=True)
class PreparedJob:
    """A request that passed every check: enqueue it as is."""

    #: The registry name (``flux-kontext-pro``), without ``wavespeed-ai/``.
    model: str
    #: The JSON body the worker will POST to WaveSpeed.
    body: dict[str, Any]
    options: JobOptions


@dataclass(frozen=True)
class Limits:
    """What the checks need from the client's configuration."""

    default_deadline: float
    #: Inline images (local files, data URIs) up to this many decoded bytes; it can
    #: lower ``worker.limits.MAX_INLINE_IMAGE_BYTES``, which the request model enforces.
    max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES
    #: Where relative image paths start (a batch file's folder); None = current directory.
    image_base: Path | None = None
    #: ``Settings.allow_private_image_urls``: image URLs may name private hosts.
    allow_private_image_urls: bool = False
    #: Which local files may be read (none unless the client says so).
    local_files: LocalFiles = NO_LOCAL_FILES
    #: ``Settings.callback_secret`` is set: callbacks can be asked for.
    callbacks_signed: bool = False


def models_of_kind(kind: EndpointKind) -> list[str]:
    return sorted(name for name, endpoint in ENDPOINTS.items() if endpoint.kind is kind)


def check_endpoint(
    problems: dict[str, str], model: object, kind: EndpointKind, field: str = "model"
) -> Endpoint | None:
    """The endpoint for ``model`` if it exists and is of ``kind``; else a problem."""
    if not isinstance(model, str):
        problems[field] = f"must be a model name, not {type(model).__name__}"
        return None
    try:
        endpoint = get_endpoint(model)
    except ValidationError as exc:
        problems[field] = exc.problems["model"]
        return None
    if endpoint.kind is not kind:
        known = ", ".join(models_of_kind(kind))
        problems[field] = (
            f"{model!r} is a model for {endpoint.kind}, not {kind}; use one of: {known}"
        )
        return None
    return endpoint


def resolve_images(
    problems: dict[str, str], fields: dict[str, Any], limits: Limits, prefix: str = ""
) -> None:
    """Replace local paths in ``image`` / ``images`` with data URIs (in place)."""
    if "image" in fields:
        try:
            fields["image"] = resolve_image(
                fields["image"],
                max_bytes=limits.max_inline_bytes,
                base_dir=limits.image_base,
                local_files=limits.local_files,
            )
        except ImageReferenceError as exc:
            problems[prefix + "image"] = str(exc)
    images = fields.get("images")
    if isinstance(images, list | tuple):
        resolved: list[Any] = []
        for index, source in enumerate(images):
            try:
                resolved.append(
                    resolve_image(
                        source,
                        max_bytes=limits.max_inline_bytes,
                        base_dir=limits.image_base,
                        local_files=limits.local_files,
                    )
                )
            except ImageReferenceError as exc:
                problems[f"{prefix}images[{index}]"] = str(exc)
                resolved.append(source)
        fields["images"] = resolved


def check_body(
    problems: dict[str, str],
    endpoint: Endpoint,
    fields: Mapping[str, Any],
    limits: Limits,
    prefix: str = "",
) -> dict[str, Any] | None:
    """The endpoint model's verdict on ``fields``; problems keep any earlier entry."""
    try:
        return validate_request(
            endpoint.model, fields, allow_private_image_urls=limits.allow_private_image_urls
        )
    except ValidationError as exc:
        for name, why in exc.problems.items():
            problems.setdefault(prefix + name, why)
        return None


def without_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Optional fields left at None are simply not sent (the endpoint's default applies)."""
    return {name: value for name, value in fields.items() if value is not None}


def prepare_job(
    kind: EndpointKind,
    model: object,
    fields: Mapping[str, Any],
    limits: Limits,
    *,
    priority: object = "normal",
    deadline: object = None,
    metadata: object = None,
    idempotency_key: object = None,
    callback_url: object = None,
    tenant: object = None,
    keep_outputs: object = None,
    on_budget: object = None,
) -> PreparedJob:
    """Check one request of ``kind``; raise ``ValidationError`` naming every bad field."""
    problems: dict[str, str] = {}
    body_fields = without_none(fields)
    endpoint = check_endpoint(problems, model, kind)
    resolve_images(problems, body_fields, limits)
    options = check_options(
        problems,
        priority=priority,
        deadline=deadline,
        metadata=metadata,
        idempotency_key=idempotency_key,
        default_deadline=limits.default_deadline,
        callback_url=callback_url,
        callbacks_signed=limits.callbacks_signed,
        tenant=tenant,
        keep_outputs=keep_outputs,
        on_budget=on_budget,
    )
    body = check_body(problems, endpoint, body_fields, limits) if endpoint is not None else None
    if problems:
        raise ValidationError(problems)
    assert endpoint is not None and body is not None and options is not None
    return PreparedJob(model=endpoint.model, body=body, options=options)


def prepare_from_mapping(request: Mapping[str, Any], limits: Limits) -> PreparedJob:
    """A request written as one JSON object (a batch line)::

        {"kind": "edit", "image": "cat.png", "prompt": "make it blue", "seed": 7,
         "priority": "high", "metadata": {"order": 42}}

    ``kind`` is ``text-to-image``, ``edit`` or ``multi``; ``model`` defaults to the
    kind's default model; option keys are ``priority``, ``deadline``, ``metadata``,
    ``idempotency_key``, ``callback_url``, ``tenant``, ``keep_outputs``, ``on_budget``;
    every other key is a WaveSpeed field of that model.
    """
    if not isinstance(request, Mapping):
        raise ValidationError({"request": f"must be a JSON object, not {type(request).__name__}"})
    fields = dict(request)
    raw_kind = fields.pop("kind", None)
    try:
        kind = EndpointKind(raw_kind)
    except ValueError:
        kinds = ", ".join(k.value for k in EndpointKind)
        raise ValidationError({"kind": f"must be one of {kinds}, not {raw_kind!r}"}) from None
    options = {key: fields.pop(key) for key in OPTION_KEYS if key in fields}
    model = fields.pop("model", None) or DEFAULT_MODEL_FOR_KIND[kind]
    return prepare_job(kind, model, fields, limits, **options)
