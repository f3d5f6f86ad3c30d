"""What a caller writes to describe a chain, and its checked form.

A chain starts from a picture, either generated (``TextToImage``) or given (an
image URL, data URI or file path), and applies edits in order; each edit's input
image is the previous step's first output. Every step is checked up front: a
step whose image comes from the step before is checked with a placeholder
image, which is then dropped, and its record is stored with ``awaiting_image``
so the worker fills the image in at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from producer.options import JobOptions, check_options
from producer.prepare import Limits, check_body, check_endpoint, resolve_images, without_none
from worker.errors import ValidationError
from worker.limits import MAX_CHAIN_STEPS
from worker.models import DEFAULT_EDIT_MODEL, DEFAULT_TEXT_TO_IMAGE_MODEL, EndpointKind

#: Stands in for the previous step's output while a later step is checked.
PLACEHOLDER_IMAGE = "https://placeholder.invalid/previous-step-output.png"


@dataclass(frozen=True)
class TextToImage:
    """The first step of a chain that generates its own picture."""

    prompt: str
    model: str = DEFAULT_TEXT_TO_IMAGE_MODEL
    seed: int | None = None
    guidance_scale: float | None = None
    aspect_ratio: str | None = None
    num_images: int | None = None
    safety_tolerance: str | None = None


@dataclass(frozen=True)
class Edit:
    """One edit of a chain; ``model`` None means the chain's ``edit_model``."""

    prompt: str
    model: str | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    aspect_ratio: str | None = None
    safety_tolerance: str | None = None


#: The first picture: a generation request, or an image (URL, data URI, path).
FirstStep = TextToImage | Mapping[str, Any] | str | os.PathLike[str]
#: One edit: an ``Edit``, a mapping of its fields, or just the instruction.
EditSpec = Edit | Mapping[str, Any] | str


@dataclass(frozen=True)
class PreparedStep:
    model: str
    body: dict[str, Any]
    #: True when ``image`` is the previous step's output, filled in by the worker.
    awaiting_image: bool


@dataclass(frozen=True)
class PreparedChain:
    steps: list[PreparedStep]
    options: JobOptions


def _as_fields(spec: object) -> dict[str, Any]:
    if isinstance(spec, TextToImage | Edit):
        return {f.name: getattr(spec, f.name) for f in fields(spec)}
    if isinstance(spec, Mapping):
        return dict(spec)
    return {"prompt": spec}


def prepare_chain(
    first: FirstStep,
    edits: Sequence[EditSpec],
    limits: Limits,
    *,
    edit_model: str = DEFAULT_EDIT_MODEL,
    priority: object = "normal",
    deadline: object = None,
    metadata: object = None,
    idempotency_key: object = None,
    callback_url: object = None,
    tenant: object = None,
    keep_outputs: object = None,
    on_budget: object = None,
) -> PreparedChain:
    """Check every step and the options; ``ValidationError`` keys are ``stepN.field``."""
    problems: dict[str, str] = {}
    steps: list[PreparedStep | None] = []
    edit_list = list(edits) if isinstance(edits, Sequence) and not isinstance(edits, str) else None
    if edit_list is None:
        problems["edits"] = "must be a list of edits"
        edit_list = []

    first_image = first if isinstance(first, str | os.PathLike) else None
    starts_with_image = first_image is not None
    if not starts_with_image:
        steps.append(_generation_step(problems, first, limits))
    elif not edit_list:
        problems["edits"] = "a chain that starts from an image needs at least one edit"
    total = len(steps) + len(edit_list)
    if total > MAX_CHAIN_STEPS:
        problems["edits"] = f"a chain has at most {MAX_CHAIN_STEPS} steps, not {total}"

    for index, spec in enumerate(edit_list):
        number = len(steps) + 1
        given_image = first_image if index == 0 else None
        steps.append(
            _edit_step(
                problems,
                spec,
                number,
                given_image=given_image,
                edit_model=edit_model,
                limits=limits,
            )
        )

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
    if problems:
        raise ValidationError(problems)
    assert options is not None
    return PreparedChain(steps=[step for step in steps if step is not None], options=options)


def _generation_step(problems: dict[str, str], spec: object, limits: Limits) -> PreparedStep | None:
    prefix = "step1."
    if not isinstance(spec, TextToImage | Mapping):
        problems["first"] = (
            "must be a TextToImage, a mapping of its fields, or an image URL/data URI/path"
        )
        return None
    step_fields = without_none(_as_fields(spec))
    model = step_fields.pop("model", DEFAULT_TEXT_TO_IMAGE_MODEL)
    endpoint = check_endpoint(problems, model, EndpointKind.TEXT_TO_IMAGE, prefix + "model")
    if endpoint is None:
        return None
    body = check_body(problems, endpoint, step_fields, limits, prefix)
    return None if body is None else PreparedStep(endpoint.model, body, awaiting_image=False)


def _edit_step(
    problems: dict[str, str],
    spec: object,
    number: int,
    *,
    given_image: str | os.PathLike[str] | None,
    edit_model: str,
    limits: Limits,
) -> PreparedStep | None:
    prefix = f"step{number}."
    if not isinstance(spec, Edit | Mapping | str):
        problems[prefix + "prompt"] = "an edit is an Edit, a mapping of its fields, or a prompt"
        return None
    step_fields = without_none(_as_fields(spec))
    model = step_fields.pop("model", None) or edit_model
    endpoint = check_endpoint(problems, model, EndpointKind.EDIT, prefix + "model")
    awaiting_image = given_image is None
    if awaiting_image:
        if "image" in step_fields:
            problems[prefix + "image"] = "comes from the previous step's output; do not set it"
            return None
        step_fields["image"] = PLACEHOLDER_IMAGE
    else:
        step_fields["image"] = given_image
        resolve_images(problems, step_fields, limits, prefix)
    if endpoint is None:
        return None
    body = check_body(problems, endpoint, step_fields, limits, prefix)
    if body is None:
        return None
    if awaiting_image:
        del body["image"]
    return PreparedStep(endpoint.model, body, awaiting_image=awaiting_image)
