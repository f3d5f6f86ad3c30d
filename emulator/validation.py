"""Validate a submit body by walking the model's request table (``registry.FieldSpec``).

Types are checked the way a JSON API sees them: a bool is not a number, a float
is not an integer, ``safety_tolerance`` is the string ``"1"``..``"5"``. Fields the
table does not know are ignored, as WaveSpeed ignores them; ``null`` counts as
absent. The result is the model's parameters with defaults filled in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from emulator.errors import InvalidRequestError
from emulator.registry import FieldKind, FieldSpec, ModelSpec


def validate_request(model: ModelSpec, body: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters the output maker needs, or InvalidRequestError for the first bad field."""
    params: dict[str, Any] = {}
    for name, spec in model.fields.items():
        value = body.get(name)
        if value is None:
            if spec.required:
                raise InvalidRequestError(name, f"{name} is required")
            params[name] = spec.default
            continue
        check_field(name, spec, value)
        params[name] = value
    return params


def check_field(name: str, spec: FieldSpec, value: Any) -> None:
    _check_type(name, spec.kind, value)
    if spec.kind is FieldKind.STRING and spec.required and not value.strip():
        raise InvalidRequestError(name, f"{name} must not be empty")
    if spec.kind is FieldKind.STRING_LIST:
        _check_items(name, spec, value)
    if spec.choices and value not in spec.choices:
        raise InvalidRequestError(name, f"{name} must be one of {', '.join(spec.choices)}")
    # Written as "not inside" so that NaN is rejected too.
    if (
        spec.minimum is not None
        and spec.maximum is not None
        and not spec.minimum <= value <= spec.maximum
    ):
        low, high = _bound(spec, spec.minimum), _bound(spec, spec.maximum)
        raise InvalidRequestError(name, f"{name} must be between {low} and {high}")


def _check_type(name: str, kind: FieldKind, value: Any) -> None:
    is_bool = isinstance(value, bool)
    valid = {
        FieldKind.STRING: isinstance(value, str),
        FieldKind.NUMBER: isinstance(value, int | float) and not is_bool,
        FieldKind.INTEGER: isinstance(value, int) and not is_bool,
        FieldKind.BOOLEAN: is_bool,
        FieldKind.STRING_LIST: isinstance(value, list),
    }[kind]
    if not valid:
        article = "an" if kind is FieldKind.INTEGER else "a"
        described = "list of strings" if kind is FieldKind.STRING_LIST else kind.value
        raise InvalidRequestError(name, f"{name} must be {article} {described}")


def _check_items(name: str, spec: FieldSpec, items: list[Any]) -> None:
    if not all(isinstance(item, str) and item.strip() for item in items):
        raise InvalidRequestError(name, f"{name} must be a list of non-empty strings")
    low = spec.min_items if spec.min_items is not None else 0
    high = spec.max_items if spec.max_items is not None else len(items)
    if not low <= len(items) <= high:
        raise InvalidRequestError(name, f"{name} must contain between {low} and {high} items")


def _bound(spec: FieldSpec, bound: float) -> str:
    # "between 1.0 and 10.0" for numbers, "between 1 and 4" for integers.
    return str(float(bound)) if spec.kind is FieldKind.NUMBER else str(int(bound))
