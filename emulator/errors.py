"""The emulator's own exceptions; each maps to one kind of answer on the wire."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A submit body broke a rule of the model's request table: HTTP 400 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ConfigError(ValueError):
    """A latency spec, fault spec or ``/_emulator/config`` body that cannot be applied."""


class MediaUnreachableError(RuntimeError):
    """An input image could not be fetched or decoded: the prediction fails with code 1402."""
