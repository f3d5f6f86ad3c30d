"""One exception tree for the whole project.

::

    WavequeueError
    ├── ConfigError                 bad or missing setting; the process stops at start
    ├── ValidationError             a request that breaks an endpoint's rules (names every field)
    │   └── IdempotencyConflictError    an idempotency key already used for another request
    ├── JobNotFoundError            no record for that job or chain id
    ├── UnreadableRecordError       a record this version cannot decode (corrupt, or a
    │                               status a newer version added); never retried
    ├── BrokerUnavailableError      Redis (broker and job store) could not be reached, or
    │                               refused the password, within the retry window
    ├── JobFailedError              raised by the task when its job ended failed/timed out
    │                               (stops a Celery chain; expected, logged without traceback)
    └── WaveSpeedError              anything that went wrong talking to WaveSpeed
        ├── PermanentError          retrying cannot help: 4xx, remote failure with a 1xxx code,
        │   │                       a status we do not understand
        │   └── RemoteTaskFailedError   the prediction itself ended failed/cancelled/timeout
        ├── TransientError          retry later: 5xx, 429, connection errors, remote 5xxx
        │   └── RateLimitedError    HTTP 429, carries Retry-After
        └── SubmitOutcomeUnknownError   the submit POST was sent and no answer came back:
                                        the prediction may exist and may be billed

Messages never contain the API key: errors are built from status codes, remote
messages and our own words, never from request headers.
"""

from __future__ import annotations


class WavequeueError(Exception):
    """Base of every error wavequeue raises on purpose."""


class ConfigError(WavequeueError):
    """A setting is missing or invalid."""


class ValidationError(WavequeueError, ValueError):
    """A request breaks an endpoint's rules. ``problems`` maps each field to why."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = dict(problems)
        lines = "; ".join(f"{field}: {why}" for field, why in self.problems.items())
        super().__init__(f"invalid request: {lines}")


class IdempotencyConflictError(ValidationError):
    """An idempotency key already used by a job with a different request: nothing new is
    enqueued, the first job stands (``job_id``). The same key with the same request is
    not an error: it returns the first job. ``problems`` names ``idempotency_key``."""

    def __init__(self, problems: dict[str, str], *, job_id: str) -> None:
        super().__init__(problems)
        self.job_id = job_id


class JobNotFoundError(WavequeueError, KeyError):
    """No record for this id (never created, or expired after its TTL)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class UnreadableRecordError(WavequeueError):
    """A job record exists but this version cannot decode it. ``reason`` says why."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id!r} has a record this version cannot read: {reason}")
        self.job_id = job_id
        self.reason = reason


class BrokerUnavailableError(WavequeueError, ConnectionError):
    """Redis could not be used: unreachable for the whole retry window, no master known to
    the sentinels, or the password was refused. ``target`` names the Redis without its
    password; the message says what to check. The call may be repeated once Redis is back
    (an enqueue with an idempotency key never creates a second job)."""

    def __init__(self, message: str, *, target: str) -> None:
        super().__init__(message)
        self.target = target


class WaveSpeedError(WavequeueError):
    """A failure talking to WaveSpeed. ``code`` is the remote or HTTP code if known."""

    def __init__(self, message: str, *, code: int | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class PermanentError(WaveSpeedError):
    """Retrying the same request cannot succeed."""


class RemoteTaskFailedError(PermanentError):
    """WaveSpeed ran the prediction and it ended failed, cancelled or timed out."""


class TransientError(WaveSpeedError):
    """Worth retrying later; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(
        self, message: str, *, code: int | str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """HTTP 429."""


class SubmitOutcomeUnknownError(WaveSpeedError):
    """The submit POST went out and no answer came back: it may have created a prediction."""


class JobFailedError(WavequeueError):
    """Raised by the task when its job ended failed or timed out, so a Celery chain stops.

    Carries only the job id, status, code and message: never request data.
    """

    def __init__(self, job_id: str, status: str, code: int | str | None, message: str) -> None:
        # The four values are the args: Celery rebuilds the exception from its args when
        # it serializes the failure (JSON); with one formatted string it could not, fell
        # back to WavequeueError, and ``throws=`` no longer matched (a traceback per job).
        super().__init__(job_id, status, code, message)
        self.job_id = job_id
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"job {self.job_id} {self.status}: [{self.code}] {self.message}"
