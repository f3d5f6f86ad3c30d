"""What every producer command shares: exit codes, error reporting, output, options.

Exit codes (the README lists them too):

- 0: done: the job or chain completed (or was enqueued, without ``--wait``)
- 1: the job or chain ended failed
- 2: bad input: one line per problem on stderr, nothing enqueued; also an unknown id
- 3: it ended timed out (past its deadline), or ``--wait``/``wait`` gave up: the timeout
  passed first (the job keeps running)
- 4: infrastructure: Redis unreachable (after WAVEQUEUE_REDIS_RETRY_WINDOW seconds of
  retrying) or refusing the password, a download failed
- 78: the configuration is refused (a malformed ``REDIS_URL``, a bad ``WAVEQUEUE_*``
  value): one line naming the variable, as the worker says it (EX_CONFIG)
- 5: the job or chain ended cancelled
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
import redis
from PIL import Image

from producer.chain_status import ChainState, ChainStatus
from producer.client import JobClient
from producer.errors import (
    JobNotFoundError,
    NotRetryableError,
    ValidationError,
    WaitTimeoutError,
)
from worker.errors import BrokerUnavailableError, ConfigError
from worker.models import JobRecord, JobStatus
from worker.money import dollars
from worker.outside_text import printable
from worker.redis_urls import redact
from worker.settings import Settings

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TIMED_OUT = 3
EXIT_UNAVAILABLE = 4
EXIT_CONFIG = 78  # EX_CONFIG, as `wavequeue worker` exits on a refused configuration
EXIT_CANCELLED = 5

# An image over the pixel limit is one "error:" line (producer.images refuses it);
# Pillow warns first about images between its own two ceilings, which would print
# a second line. Silenced here, in the CLI's own process, never by the library.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {printable(message, 2000)}", err=True)
    sys.exit(code)


def fail_bad_input(problems: Mapping[str, str]) -> NoReturn:
    """One line per problem on stderr, exit 2. A field name can be a user's key (a batch
    line's), and a reason can quote the value: both are printed escaped."""
    for where, why in problems.items():
        click.echo(f"error: {printable(where, 200)}: {printable(why, 2000)}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a command can meet into one clear line and its exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ValidationError as exc:
            fail_bad_input(exc.problems)
        except (JobNotFoundError, NotRetryableError) as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
        except WaitTimeoutError as exc:
            fail(str(exc), EXIT_TIMED_OUT)
        except BrokerUnavailableError as exc:
            fail(str(exc), EXIT_UNAVAILABLE)
        except redis.RedisError as exc:
            # Anything else Redis answered (out of memory, say): its first line, no password.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fail(f"Redis error: {redact(reason)}", EXIT_UNAVAILABLE)

    return wrapper


def make_client() -> JobClient:
    """A client configured from the environment (``REDIS_URL`` and the WAVEQUEUE_* knobs).
    The CLI's user names their own files: it reads any local image unless
    ``WAVEQUEUE_LOCAL_IMAGES`` says otherwise (the Python API's default is to refuse)."""
    settings = Settings.from_env()
    return JobClient(settings, local_images=settings.local_images or "any")


def parse_json_object(text: str | None, name: str, problems: dict[str, str]) -> Any:
    """``text`` parsed as a JSON object, or None with a problem recorded."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        problems[name] = f"not valid JSON: {exc}"
        return None
    if not isinstance(value, dict):
        problems[name] = "must be a JSON object"
        return None
    return value


# output -----------------------------------------------------------------------


def print_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True))


def short_reference(value: str, limit: int = 80) -> str:
    """Images as people want to read them: data URIs by size, long URLs trimmed."""
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        return f"{printable(head, 80)},... ({len(payload) * 3 // 4} bytes)"
    return printable(value if len(value) <= limit else value[: limit - 3] + "...", limit)


def record_json(record: JobRecord) -> dict[str, Any]:
    """A job as every ``--json`` output shows it: its record, the id as ``job_id`` (as in
    a chain's steps and a batch's jobs; a chain's id is ``chain_id``)."""
    data = record.model_dump(mode="json")
    return {"job_id": data.pop("id"), **data}


def describe_record(record: JobRecord) -> str:
    """A job in a few lines: id, status, model, time taken, outputs or error. What came
    from WaveSpeed (outputs, the error) is printed escaped: one line each."""
    line = f"job {record.id} {record.status.value} ({printable(record.model, 80)}"
    if record.completed_at is not None:
        line += f", {record.completed_at - record.created_at:.1f}s"
    line += f", {record.priority.value} priority)"
    lines = [line]
    if record.held:
        lines.append(
            f"  held: {record.held} (a daily budget has no room for it; it goes on when the "
            "UTC day turns or the cap is raised: wavequeue budget)"
        )
    cost = _cost_text(record)
    if cost:
        lines.append(f"  tenant {record.tenant}, {cost}")
    if record.chain_id is not None:
        lines.append(f"  chain {record.chain_id}, step {record.step}")
    if record.retry_of is not None:
        lines.append(f"  retry of job {record.retry_of}")
    lines.extend(f"  {printable(output, 2000)}" for output in record.outputs)
    lines.extend(f"  kept {printable(location, 2000)}" for location in record.stored_outputs)
    if record.status is JobStatus.PERSISTING:
        lines.append(f"  completed at WaveSpeed, outputs not yet kept{_persist_note(record)}")
    elif record.persist_error is not None:
        lines.append(
            "  outputs NOT kept: "
            + error_text(record.persist_error.code, record.persist_error.message)
        )
    if record.error is not None:
        lines.append(f"  error {error_text(record.error.code, record.error.message)}")
    if record.metadata:
        lines.append(f"  metadata {json.dumps(record.metadata, sort_keys=True)}")
    callback = describe_callback(record.model_dump())
    if callback:
        lines.append(callback)
    return "\n".join(lines)


def _persist_note(record: JobRecord) -> str:
    """How the copy of a persisting job's outputs is going, for one status line."""
    if record.persist_error is None:
        return " (copying)"
    last = error_text(record.persist_error.code, record.persist_error.message)
    return f" ({record.persist_attempts} failed attempt(s), retried; last {last})"


def _cost_text(record: JobRecord) -> str:
    """What the job cost (or is estimated to), in words; "" when nothing is known."""
    if record.cost_micros is not None:
        if record.cost_unconfirmed and record.estimated_cost_micros:
            return (
                f"cost $0.00 billed so far; WaveSpeed may still bill "
                f"{dollars(record.estimated_cost_micros)} (its prediction may have run)"
            )
        return f"cost {dollars(record.cost_micros)}"
    if record.estimated_cost_micros is not None:
        return f"estimated cost {dollars(record.estimated_cost_micros)}"
    return ""


def describe_callback(fields: Mapping[str, Any]) -> str:
    """The callback's delivery in one line ("" when there is no callback): where to, the
    attempts so far and the last HTTP status, delivered or given up or pending."""
    url = fields.get("callback_url")
    if not url:
        return ""
    attempts = int(fields.get("callback_attempts") or 0)
    status = fields.get("callback_status")
    if fields.get("callback_delivered_at") is not None:
        state = "delivered"
    elif fields.get("callback_failed_at") is not None:
        state = "given up"
    else:
        state = "pending"
    last = f", last status {status if status else 'no answer'}" if attempts else ""
    return f"  callback {short_reference(str(url))} {state} ({attempts} attempt(s){last})"


def describe_chain(status: ChainStatus) -> str:
    """A chain in a few lines: its state and every step with its outputs or error."""
    total = len(status.steps)
    if status.state is ChainState.FAILED:
        headline = f"failed at step {status.current_step} of {total}"
    elif status.state is ChainState.CANCELLED:
        headline = f"cancelled at step {status.current_step} of {total}"
    elif status.state is ChainState.RUNNING:
        headline = f"running step {status.current_step} of {total}"
    else:
        headline = f"{status.state.value} ({total} steps)"
    lines = [f"chain {status.id} {headline}"]
    for step in status.steps:
        detail = ", ".join(short_reference(output) for output in step.outputs)
        if step.error is not None:
            detail = error_text(step.error.code, step.error.message)
        lines.append(
            f"  step {step.number}  {step.status.value:<10} {step.model:<32} {detail}".rstrip()
        )
    callback = describe_callback(status.callback)
    if callback:
        lines.append(callback)
    return "\n".join(lines)


def error_text(code: object, message: object) -> str:
    """``[code] message``, escaped and capped: records written by anyone are printed."""
    return f"[{printable(code, 40)}] {printable(message, 2000)}"


def exit_code_of(result: JobRecord | ChainStatus) -> int:
    """0 completed (or still running), 1 ended failed, 3 ended timed out (its deadline
    passed), 5 ended cancelled: "timed out" means the same exit code whether the job or
    the wait ran out."""
    if isinstance(result, ChainStatus):
        if result.state is ChainState.CANCELLED:
            return EXIT_CANCELLED
        step = result.failed_step
        if step is None:
            return EXIT_COMPLETED
        return EXIT_TIMED_OUT if step.status is JobStatus.TIMED_OUT else EXIT_FAILED
    return _EXIT_OF_STATUS.get(result.status, EXIT_COMPLETED)


_EXIT_OF_STATUS = {
    JobStatus.FAILED: EXIT_FAILED,
    JobStatus.TIMED_OUT: EXIT_TIMED_OUT,
    JobStatus.CANCELLED: EXIT_CANCELLED,
}


def show(result: JobRecord | ChainStatus, *, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json() if isinstance(result, ChainStatus) else record_json(result))
    elif isinstance(result, ChainStatus):
        click.echo(describe_chain(result))
    else:
        click.echo(describe_record(result))


# options shared by the submitting commands ------------------------------------------

#: ``--timeout`` values: seconds, never negative (0: look once).
TIMEOUT = click.FloatRange(min=0)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text."
)
wait_options = [
    click.option("--wait", is_flag=True, help="Wait until it ends; the exit code tells how."),
    click.option(
        "--timeout",
        type=TIMEOUT,
        default=None,
        help="Seconds to wait at most (default: until the deadline, plus a minute).",
    ),
]
job_options = [
    click.option(
        "--priority",
        type=click.Choice(["high", "normal"]),
        default="normal",
        show_default=True,
        help="Queue: high jobs are never starved by a normal backlog.",
    ),
    click.option(
        "--deadline",
        type=float,
        default=None,
        help="Seconds the job may take from now (default WAVEQUEUE_JOB_DEADLINE, 900).",
    ),
    click.option("--metadata", default=None, help="A small JSON object stored with the job."),
    click.option(
        "--idempotency-key",
        default=None,
        help="Submitting again with the same key returns the first job; nothing new runs "
        "(the same key with a different request is an error).",
    ),
    click.option(
        "--callback-url",
        default=None,
        help="POST the final record here (http/https, signed) once it ends; needs "
        "WAVEQUEUE_CALLBACK_SECRET.",
    ),
    click.option(
        "--tenant",
        default=None,
        help="Who the job is for (default 'default'): submission slots are shared fairly "
        "between tenants, spend and daily budgets count per tenant, and `wavequeue jobs "
        "--tenant` lists by it.",
    ),
    click.option(
        "--keep-outputs/--no-keep-outputs",
        default=None,
        help="Copy the outputs to durable storage before the job completes (default: the "
        "workers' WAVEQUEUE_KEEP_OUTPUTS).",
    ),
    click.option(
        "--on-budget",
        type=click.Choice(["wait", "fail"]),
        default=None,
        help="When a daily budget has no room: wait until it has (default) or fail at once.",
    ),
]


def with_options(options: list[Callable[[Any], Any]]) -> Callable[[R], R]:
    """Apply a list of click options in the order written."""

    def decorate(function: R) -> R:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate
