"""The options every job takes, whatever its endpoint: priority, deadline, metadata,
idempotency key, callback URL, tenant, keep outputs and what to do at a spent budget; and
the queue a priority routes to.

Why two queues instead of message priorities: a Redis list has no per-message
priority (kombu can only emulate one with ``priority_steps``, several lists per
queue polled in order). With one list per priority, kombu's Redis transport
round-robins between the queues a worker consumes, so a backlog of normal jobs
never starves high ones, and operators can run workers that consume only
``wavequeue.high`` to keep headroom for urgent work.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from worker.limits import (
    MAX_CALLBACK_URL_CHARS,
    MAX_DEADLINE_SECONDS,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_METADATA_BYTES,
)
from worker.models import OnBudget, Priority
from worker.tenants import DEFAULT_TENANT, tenant_problem

#: The limits live in ``worker.limits``; these names stay for existing imports.
MAX_IDEMPOTENCY_KEY_LENGTH = MAX_IDEMPOTENCY_KEY_CHARS
__all__ = [
    "MAX_DEADLINE_SECONDS",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_METADATA_BYTES",
    "JobOptions",
    "check_options",
]


@dataclass(frozen=True)
class JobOptions:
    """Checked options: ``deadline`` in seconds from enqueue."""

    priority: Priority
    deadline: float
    metadata: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    #: Where the worker POSTs the final record (``worker.callbacks``).
    callback_url: str | None = None
    #: Who the job is for: submission slots are shared fairly between tenants
    #: (``worker.fairness``); spend and budgets count per tenant.
    tenant: str = DEFAULT_TENANT
    #: Copy the outputs to durable storage before completing (``worker.keep_outputs``);
    #: None: the workers' default (``WAVEQUEUE_KEEP_OUTPUTS``).
    keep_outputs: bool | None = None
    #: At a spent daily budget: wait (held) or fail at once.
    on_budget: OnBudget = OnBudget.WAIT

    @property
    def queue(self) -> str:
        return self.priority.queue


def check_options(
    problems: dict[str, str],
    *,
    priority: object,
    deadline: object,
    metadata: object,
    idempotency_key: object,
    default_deadline: float,
    callback_url: object = None,
    callbacks_signed: bool = True,
    tenant: object = None,
    keep_outputs: object = None,
    on_budget: object = None,
) -> JobOptions | None:
    """``callbacks_signed``: the client has ``WAVEQUEUE_CALLBACK_SECRET`` (a backend that
    asks for callbacks verifies them with it): without it, a ``callback_url`` is refused."""
    """Options as a ``JobOptions``, or None with every problem added to ``problems``."""
    before = len(problems)
    checked_priority = _priority(problems, priority)
    checked_deadline = _deadline(problems, default_deadline if deadline is None else deadline)
    checked_metadata = _metadata(problems, {} if metadata is None else metadata)
    checked_key = _idempotency_key(problems, idempotency_key)
    checked_callback = _callback_url(problems, callback_url, callbacks_signed)
    checked_tenant = _tenant(problems, DEFAULT_TENANT if tenant is None else tenant)
    checked_keep = _keep_outputs(problems, keep_outputs)
    checked_on_budget = _on_budget(problems, OnBudget.WAIT if on_budget is None else on_budget)
    if len(problems) > before:
        return None
    assert checked_tenant is not None and checked_on_budget is not None
    assert checked_priority is not None and checked_deadline is not None
    return JobOptions(
        priority=checked_priority,
        deadline=checked_deadline,
        metadata=checked_metadata or {},
        idempotency_key=checked_key,
        callback_url=checked_callback,
        tenant=checked_tenant,
        keep_outputs=checked_keep,
        on_budget=checked_on_budget,
    )


def _tenant(problems: dict[str, str], value: object) -> str | None:
    why = tenant_problem(value)
    if why is not None:
        problems["tenant"] = why
        return None
    assert isinstance(value, str)
    return value


def _keep_outputs(problems: dict[str, str], value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    problems["keep_outputs"] = f"must be true or false, not {type(value).__name__}"
    return None


def _on_budget(problems: dict[str, str], value: object) -> OnBudget | None:
    try:
        return OnBudget(value if isinstance(value, str) else "")
    except ValueError:
        problems["on_budget"] = "must be 'wait' or 'fail'"
        return None


def _priority(problems: dict[str, str], value: object) -> Priority | None:
    try:
        return Priority(value if isinstance(value, str) else "")
    except ValueError:
        problems["priority"] = f"must be 'high' or 'normal', not {value!r}"
        return None


def _deadline(problems: dict[str, str], value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems["deadline"] = f"must be a number of seconds, not {type(value).__name__}"
        return None
    if not math.isfinite(value) or not 0 < value <= MAX_DEADLINE_SECONDS:
        problems["deadline"] = f"must be > 0 and <= {MAX_DEADLINE_SECONDS:.0f} seconds"
        return None
    return float(value)


def _metadata(problems: dict[str, str], value: object) -> dict[str, Any] | None:
    if isinstance(value, Mapping) and not value:
        return {}  # the usual case, and nothing to check
    if not isinstance(value, Mapping):
        problems["metadata"] = f"must be a JSON object (dict), not {type(value).__name__}"
        return None
    if not all(isinstance(key, str) for key in value):
        problems["metadata"] = "keys must be strings"
        return None
    try:
        encoded = json.dumps(dict(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems["metadata"] = f"must be JSON-serializable: {exc}"
        return None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        problems["metadata"] = f"must be at most {MAX_METADATA_BYTES} bytes as JSON"
        return None
    # Round-trip, so the caller keeps no reference into what is stored.
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


def _idempotency_key(problems: dict[str, str], value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems["idempotency_key"] = "must be a non-empty string"
        return None
    if len(value) > MAX_IDEMPOTENCY_KEY_LENGTH:
        problems["idempotency_key"] = f"must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        return None
    return value


def _callback_url(problems: dict[str, str], value: object, signed: bool) -> str | None:
    """An absolute http(s) URL with a host, no credentials, no whitespace. Private hosts
    are allowed on purpose: a backend usually sits inside the same network as the workers
    (so only trusted code should choose a callback URL; see the README)."""
    if value is None:
        return None
    why = _callback_url_problem(value)
    if why is None and not signed:
        why = (
            "needs WAVEQUEUE_CALLBACK_SECRET set here too (the Standard Webhooks secret "
            "callbacks are signed with, which your receiver verifies)"
        )
    if why is not None:
        problems["callback_url"] = why
        return None
    assert isinstance(value, str)
    return value


def _callback_url_problem(value: object) -> str | None:
    """What is wrong with a callback URL, or None. Never quotes the URL: it may carry a token."""
    if not isinstance(value, str) or not value.strip():
        return "must be an http(s) URL"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError:
        return "is not a valid URL"
    checks = (
        (
            len(value) > MAX_CALLBACK_URL_CHARS,
            f"must be at most {MAX_CALLBACK_URL_CHARS} characters",
        ),
        (
            any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value),
            "must not contain whitespace or control characters",
        ),
        (
            parts.scheme.lower() not in ("http", "https"),
            f"must be http or https, not {parts.scheme or 'relative'!r}",
        ),
        (not parts.hostname, "must name a host"),
        (
            parts.username is not None or parts.password is not None,
            "must not carry credentials (user:password@): records show the URL",
        ),
        (port == 0, "must not use port 0"),
    )
    return next((why for failed, why in checks if failed), None)
