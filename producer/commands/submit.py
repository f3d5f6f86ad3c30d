"""``wavequeue generate`` and ``wavequeue edit``: enqueue one job, optionally wait for it."""

from __future__ import annotations

import sys
from typing import Any

import click

from producer.client import JobClient
from producer.commands.common import (
    EXIT_COMPLETED,
    exit_code_of,
    fail_bad_input,
    job_options,
    json_option,
    make_client,
    parse_json_object,
    print_json,
    record_json,
    reports_errors,
    show,
    wait_options,
    with_options,
)
from producer.errors import ValidationError
from producer.prepare import PreparedJob
from worker.models import (
    DEFAULT_TEXT_TO_IMAGE_MODEL,
    ENDPOINTS,
    MODEL_PREFIX,
    EndpointKind,
)


def prepare_or_exit(
    client: JobClient, request: dict[str, Any], raw_metadata: str | None
) -> PreparedJob:
    """Check the request and the ``--metadata`` JSON together; on any problem print
    them all and exit 2 before anything is enqueued."""
    problems: dict[str, str] = {}
    metadata = parse_json_object(raw_metadata, "metadata", problems)
    if metadata is not None:
        request["metadata"] = metadata
    try:
        prepared = client.prepare({k: v for k, v in request.items() if v is not None})
    except ValidationError as exc:
        fail_bad_input({**problems, **exc.problems})
    if problems:
        fail_bad_input(problems)
    return prepared


def finish(
    client: JobClient, job_id: str, *, wait: bool, timeout: float | None, as_json: bool
) -> None:
    """Print the id (or wait and print the outcome) and exit with the matching code."""
    if not wait:
        record = client.get(job_id)
        if as_json:
            print_json(record_json(record))  # the same shape as with --wait
        else:
            click.echo(f"job {job_id} {record.status.value}")
        sys.exit(EXIT_COMPLETED)
    record = client.wait(job_id, timeout)
    show(record, as_json=as_json)
    sys.exit(exit_code_of(record))


@click.command("generate")
@click.argument("prompt")
@click.option("--model", default=DEFAULT_TEXT_TO_IMAGE_MODEL, show_default=True)
@click.option("--seed", type=int, help="-1 or 0..2147483647.")
@click.option("--guidance-scale", type=float, help="1.0..20.0 (default 3.5).")
@click.option("--aspect-ratio", help="21:9 16:9 4:3 3:2 1:1 2:3 3:4 9:16 9:21 (default 1:1).")
@click.option("--num-images", type=int, help="1..4; flux-kontext-pro/text-to-image only.")
@click.option("--safety-tolerance", help='"1".."5"; flux-kontext-pro/text-to-image only.')
@with_options(job_options)
@with_options(wait_options)
@json_option
@reports_errors
def generate_command(
    *,
    prompt: str,
    model: str,
    seed: int | None,
    guidance_scale: float | None,
    aspect_ratio: str | None,
    num_images: int | None,
    safety_tolerance: str | None,
    priority: str,
    deadline: float | None,
    metadata: str | None,
    idempotency_key: str | None,
    callback_url: str | None,
    tenant: str | None,
    keep_outputs: bool | None,
    on_budget: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Enqueue a text-to-image job for PROMPT."""
    with make_client() as client:
        prepared = prepare_or_exit(
            client,
            {
                "kind": EndpointKind.TEXT_TO_IMAGE.value,
                "model": model,
                "prompt": prompt,
                "seed": seed,
                "guidance_scale": guidance_scale,
                "aspect_ratio": aspect_ratio,
                "num_images": num_images,
                "safety_tolerance": safety_tolerance,
                "priority": priority,
                "deadline": deadline,
                "idempotency_key": idempotency_key,
                "callback_url": callback_url,
                "tenant": tenant,
                "keep_outputs": keep_outputs,
                "on_budget": on_budget,
            },
            metadata,
        )
        job_id = client.submit(prepared)
        finish(client, job_id, wait=wait, timeout=timeout, as_json=as_json)


def _edit_kind(model: str | None, image_count: int) -> EndpointKind:
    """Several images, or a ``/multi`` model, make a multi-image edit."""
    endpoint = ENDPOINTS.get((model or "").removeprefix(MODEL_PREFIX))
    if endpoint is not None and endpoint.kind is EndpointKind.MULTI:
        return EndpointKind.MULTI
    return EndpointKind.MULTI if image_count > 1 else EndpointKind.EDIT


@click.command("edit")
@click.argument("images", nargs=-1, required=True)
@click.argument("prompt")
@click.option(
    "--model",
    default=None,
    help="Default flux-kontext-pro (one image) or flux-kontext-pro/multi (several).",
)
@click.option("--seed", type=int, help="flux-kontext-max and the multi models.")
@click.option("--guidance-scale", type=float, help="1.0..10.0 (pro) or 1.0..20.0 (max, multi).")
@click.option("--aspect-ratio", help="flux-kontext-max and the multi models.")
@click.option("--safety-tolerance", help='"1".."5"; flux-kontext-pro only.')
@with_options(job_options)
@with_options(wait_options)
@json_option
@reports_errors
def edit_command(
    *,
    images: tuple[str, ...],
    prompt: str,
    model: str | None,
    seed: int | None,
    guidance_scale: float | None,
    aspect_ratio: str | None,
    safety_tolerance: str | None,
    priority: str,
    deadline: float | None,
    metadata: str | None,
    idempotency_key: str | None,
    callback_url: str | None,
    tenant: str | None,
    keep_outputs: bool | None,
    on_budget: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Enqueue an edit of IMAGES (URLs, data: URIs or local files; 1, or 1-5 for a
    multi-image edit) following PROMPT."""
    kind = _edit_kind(model, len(images))
    image_fields: dict[str, Any] = (
        {"images": list(images)} if kind is EndpointKind.MULTI else {"image": images[0]}
    )
    with make_client() as client:
        prepared = prepare_or_exit(
            client,
            {
                "kind": kind.value,
                "model": model,
                **image_fields,
                "prompt": prompt,
                "seed": seed,
                "guidance_scale": guidance_scale,
                "aspect_ratio": aspect_ratio,
                "safety_tolerance": safety_tolerance,
                "priority": priority,
                "deadline": deadline,
                "idempotency_key": idempotency_key,
                "callback_url": callback_url,
                "tenant": tenant,
                "keep_outputs": keep_outputs,
                "on_budget": on_budget,
            },
            metadata,
        )
        job_id = client.submit(prepared)
        finish(client, job_id, wait=wait, timeout=timeout, as_json=as_json)
