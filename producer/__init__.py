"""What a backend imports: submit jobs and chains, read their status, wait; the CLI.

::

    from producer import JobClient, TextToImage, Edit

    with JobClient.from_env() as jobs:
        job_id = jobs.text_to_image("a lighthouse at dusk", seed=7, priority="high")
        record = jobs.wait(job_id, timeout=120)
        chain_id = jobs.chain(TextToImage("a red bicycle"), ["make it blue", "add snow"])

Importing ``producer`` loads neither Celery nor the worker's tasks; the Celery
app is built on the first send.
"""

from producer.chain_spec import Edit, TextToImage
from producer.chain_status import ChainState, ChainStatus, ChainStep
from producer.client import JobClient
from producer.errors import (
    BrokerUnavailableError,
    ChainNotRetryableError,
    IdempotencyConflictError,
    JobNotFoundError,
    NotRetryableError,
    ValidationError,
    WaitTimeoutError,
    WavequeueError,
)
from producer.prepare import PreparedJob
from worker.errors import ConfigError
from worker.models import JobRecord, JobStatus, Priority

__all__ = [
    "BrokerUnavailableError",
    "ChainNotRetryableError",
    "ChainState",
    "ChainStatus",
    "ChainStep",
    "ConfigError",
    "Edit",
    "IdempotencyConflictError",
    "JobClient",
    "JobNotFoundError",
    "JobRecord",
    "JobStatus",
    "NotRetryableError",
    "PreparedJob",
    "Priority",
    "TextToImage",
    "ValidationError",
    "WaitTimeoutError",
    "WavequeueError",
]
