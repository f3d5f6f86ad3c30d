"""``wavequeue chain`` and ``wavequeue retry``: a picture and edits in a row, and running
again what failed (a chain from its failed step, or a single job)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from producer.chain_spec import EditSpec, FirstStep, prepare_chain
from producer.chain_status import ChainStatus
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
    reports_errors,
    show,
    wait_options,
    with_options,
)
from producer.commands.submit import finish
from producer.errors import ValidationError
from worker.models import DEFAULT_EDIT_MODEL, DEFAULT_TEXT_TO_IMAGE_MODEL


def parse_step(text: str, number: int, problems: dict[str, str]) -> EditSpec:
    """A ``--step`` value: the instruction, or a JSON object of the step's fields
    (``{"prompt": "...", "guidance_scale": 5, "model": "flux-kontext-max"}``)."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        fields = json.loads(text)
    except ValueError as exc:
        problems[f"step{number}"] = f"not valid JSON: {exc}"
        return text
    if not isinstance(fields, dict):
        problems[f"step{number}"] = "must be an instruction or a JSON object"
        return text
    return fields


def finish_chain(
    client: JobClient, chain_id: str, *, wait: bool, timeout: float | None, as_json: bool
) -> None:
    if not wait:
        status = client.chain_status(chain_id)
        if as_json:
            print_json(status.to_json())
        else:
            click.echo(f"chain {chain_id} {status.state.value} ({len(status.steps)} steps)")
        sys.exit(EXIT_COMPLETED)
    final = client.wait_chain(chain_id, timeout)
    show(final, as_json=as_json)
    sys.exit(exit_code_of(final))


@click.command("chain")
@click.option("--image", default=None, help="Start from this image (URL, data: URI or file).")
@click.option("--prompt", default=None, help="Start from a picture generated from this prompt.")
@click.option(
    "--step",
    "steps",
    multiple=True,
    help="An edit instruction, or a JSON object of the step's fields. Repeat, in order.",
)
@click.option(
    "--model",
    default=None,
    help=f"Text-to-image model for --prompt (default {DEFAULT_TEXT_TO_IMAGE_MODEL}).",
)
@click.option(
    "--edit-model", default=DEFAULT_EDIT_MODEL, show_default=True, help="Model of every edit."
)
@click.option("--seed", type=int, help="Seed of the generated first picture.")
@click.option("--guidance-scale", type=float, help="Guidance of the generated first picture.")
@click.option("--aspect-ratio", help="Aspect ratio of the generated first picture.")
@with_options(job_options)
@with_options(wait_options)
@json_option
@reports_errors
def chain_command(
    *,
    image: str | None,
    prompt: str | None,
    steps: tuple[str, ...],
    model: str | None,
    edit_model: str,
    seed: int | None,
    guidance_scale: float | None,
    aspect_ratio: str | None,
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
    """Enqueue a chain: a first picture (--image or --prompt), then each --step edits
    the previous step's output. Step N may take N x --deadline seconds."""
    problems: dict[str, str] = {}
    if (image is None) == (prompt is None):
        problems["first"] = "give exactly one of --image and --prompt"
    if not steps:
        problems["step"] = "give at least one --step"
    generation: dict[str, Any] = {
        "prompt": prompt,
        "model": model,
        "seed": seed,
        "guidance_scale": guidance_scale,
        "aspect_ratio": aspect_ratio,
    }
    if image is not None:
        for name, value in generation.items():
            if value is not None and name != "prompt":
                flag = "--" + name.replace("_", "-")
                problems[flag] = "describes the generated first picture: use it with --prompt"
    first_number = 1 if image is not None else 2
    edits = [parse_step(text, n, problems) for n, text in enumerate(steps, start=first_number)]
    chain_metadata = parse_json_object(metadata, "metadata", problems)
    first: FirstStep = (
        image
        if image is not None
        else {name: value for name, value in generation.items() if value is not None}
    )
    options: dict[str, Any] = {
        "edit_model": edit_model,
        "priority": priority,
        "deadline": deadline,
        "metadata": chain_metadata,
        "idempotency_key": idempotency_key,
        "callback_url": callback_url,
        "tenant": tenant,
        "keep_outputs": keep_outputs,
        "on_budget": on_budget,
    }
    with make_client() as client:
        if problems:
            # Report the steps' problems too, in the same run, before exiting.
            try:
                prepare_chain(first, edits, client.limits(), **options)
            except ValidationError as exc:
                problems = {**exc.problems, **problems}
            fail_bad_input(problems)
        chain_id = client.chain(first, edits, **options)
        finish_chain(client, chain_id, wait=wait, timeout=timeout, as_json=as_json)


@click.command("retry")
@click.argument("any_id", metavar="ID")
@with_options(wait_options)
@json_option
@reports_errors
def retry_command(any_id: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Run a failed or timed-out job again, or resume a failed chain from its failed step
    (ID is the job, the chain, or one of its steps); finished steps are not run again.
    Prints the new job (or the chain), as ``generate`` and ``chain`` do."""
    with make_client() as client:
        found = client.lookup(any_id)
        chain_id = found.id if isinstance(found, ChainStatus) else found.chain_id
        if chain_id is not None:
            client.retry_chain(chain_id)
            finish_chain(client, chain_id, wait=wait, timeout=timeout, as_json=as_json)
        new_id = client.retry(any_id)
        if not as_json and not wait:
            click.echo(f"job {any_id} runs again as:")
        finish(client, new_id, wait=wait, timeout=timeout, as_json=as_json)
