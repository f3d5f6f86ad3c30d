"""Tenant names and their round-robin weights: the rules every process shares.

A tenant is who a job is for (a product, a customer). It is a short name because it
labels metrics and is part of Redis members (the fair gate's line, ``worker.fairness``).
Kept apart from ``worker.models`` so that ``worker.settings`` can check
``WAVEQUEUE_TENANT_WEIGHTS`` without importing the models.
"""

from __future__ import annotations

import re

from worker.constants import DEFAULT_TENANT, TENANT_PATTERN

__all__ = ["DEFAULT_TENANT", "parse_weights", "tenant_problem"]

MAX_TENANT_CHARS = 64
#: The weight of a tenant ``WAVEQUEUE_TENANT_WEIGHTS`` does not name, and the largest.
DEFAULT_WEIGHT = 1
MAX_WEIGHT = 1000

_TENANT = re.compile(TENANT_PATTERN)


def tenant_problem(value: object) -> str | None:
    """Why ``value`` is not a tenant name, or None. Never quotes the value."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not 1 <= len(value) <= MAX_TENANT_CHARS:
        return f"must be 1 to {MAX_TENANT_CHARS} characters"
    if not _TENANT.fullmatch(value):
        return "may hold only letters, digits, '_', '-' and '.', and starts with a letter or digit"
    return None


def parse_weights(text: str) -> dict[str, int]:
    """``acme=3,beta=1`` -> ``{"acme": 3, "beta": 1}``; ValueError in words otherwise."""
    weights: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not tenant=weight")
        why = tenant_problem(name.strip())
        if why is not None:
            raise ValueError(f"{item!r}: the tenant {why}")
        try:
            weight = int(value)
        except ValueError:
            raise ValueError(f"{item!r}: the weight must be a whole number") from None
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"{item!r}: the weight must be 1 to {MAX_WEIGHT}")
        weights[name.strip()] = weight
    return weights
