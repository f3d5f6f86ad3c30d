"""The producer's errors: the worker's exception tree plus what only a producer raises.

::

    WavequeueError                  (worker.errors)
    ├── ConfigError                 no Redis named (REDIS_URL unset, no local stack running)
    │                               or a bad setting
    ├── ValidationError             a bad request; ``problems`` names every bad field
    │   └── IdempotencyConflictError    the key was used for a different request
    ├── JobNotFoundError            no record for that job or chain id
    ├── BrokerUnavailableError      Redis unreachable for the retry window, or refusing the
    │                               password (also a ``ConnectionError``)
    ├── WaitTimeoutError            ``wait``/``wait_all``/``wait_chain`` gave up
    └── NotRetryableError           ``retry`` of a job that has not failed or timed out
        └── ChainNotRetryableError  ``retry_chain`` on a chain that has not failed
"""

from __future__ import annotations

from worker.errors import (
    BrokerUnavailableError,
    ConfigError,
    IdempotencyConflictError,
    JobNotFoundError,
    ValidationError,
    WavequeueError,
)


class WaitTimeoutError(WavequeueError, TimeoutError):
    """The jobs were not terminal when the wait's timeout passed. They keep running."""

    def __init__(self, message: str, *, pending: list[str]) -> None:
        super().__init__(message)
        #: The ids that were still not terminal.
        self.pending = list(pending)


class NotRetryableError(WavequeueError):
    """Only a job that ended failed or timed out can be retried."""


class ChainNotRetryableError(NotRetryableError):
    """Only a chain that stopped at a failed (or timed-out) step can be retried."""


__all__ = [
    "BrokerUnavailableError",
    "ChainNotRetryableError",
    "ConfigError",
    "IdempotencyConflictError",
    "JobNotFoundError",
    "NotRetryableError",
    "ValidationError",
    "WaitTimeoutError",
    "WavequeueError",
]
