"""The producer's errors: the worker's exception tree plus what only a producer raises.

::

    WavequeueError                  (worker.errors)
    ├── ValidationError             a bad request; ``problems`` names every bad field
    ├── JobNotFoundError            no record for that job or chain id
    ├── BrokerUnavailableError      Redis unreachable for the retry window, or refusing the
    │                               password (also a ``ConnectionError``)
    ├── WaitTimeoutError            ``wait``/``wait_all``/``wait_chain`` gave up
    └── ChainNotRetryableError      ``retry_chain`` on a chain that has not failed
"""

from __future__ import annotations

from worker.errors import (
    BrokerUnavailableError,
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


class ChainNotRetryableError(WavequeueError):
    """Only a chain that stopped at a failed (or timed-out) step can be retried."""


__all__ = [
    "BrokerUnavailableError",
    "ChainNotRetryableError",
    "JobNotFoundError",
    "ValidationError",
    "WaitTimeoutError",
    "WavequeueError",
]
