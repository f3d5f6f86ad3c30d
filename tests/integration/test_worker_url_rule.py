"""The worker applies the image URL rule again, with its own setting, before it sends a
request on (issue #15 item 1): a record that did not come through a checking producer
(an older version, a script writing to Redis, a chain step's image filled in at run time)
is failed with the rule's words, and nothing reaches WaveSpeed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.stack import WorkerStack, worker_stack
from worker.models import JobRecord, JobStatus

EDIT = "flux-kontext-pro"


@pytest.fixture(scope="module")
def strict_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    """A worker with private image URLs not allowed (the production default)."""
    with worker_stack(
        tmp_path_factory.mktemp("url-rule"), settings={"WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": ""}
    ) as running:
        yield running


def _unchecked_job(stack: WorkerStack, image: str) -> str:
    """A record written straight into the store: no producer checked it."""
    now = time.time()
    record = JobRecord(
        id=uuid.uuid4().hex,
        model=EDIT,
        input={"prompt": "make it blue", "image": image},
        status=JobStatus.QUEUED,
        created_at=now,
        deadline_at=now + 60,
    )
    job_id, _ = stack.jobs.store.create_job(record)
    stack.jobs.send(job_id)
    return job_id


@pytest.mark.parametrize(
    ("image", "why"),
    [
        (
            "http://127.0.0.1:6379/",
            "image: private address 127.0.0.1 not allowed: loopback "
            "(set WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS=1 for in-house image hosts)",
        ),
        ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("http://[::ffff:10.0.0.7]/a.png", "private address 10.0.0.7"),
        ("file:///etc/passwd", "scheme 'file' not allowed"),
        ("http://user@example.com/a.png", "user info"),
        ("http://example.com/a\nb.png", "control character"),
    ],
)
def test_a_record_the_rule_refuses_fails_without_a_submission(
    strict_stack: WorkerStack, image: str, why: str
) -> None:
    strict_stack.emulator.reset()
    job_id = _unchecked_job(strict_stack, image)

    record = strict_stack.jobs.wait([job_id], timeout=60)[0]

    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "invalid_input"
    assert record.error.message.startswith("refused before submitting: image: ")
    assert why in record.error.message
    assert "\n" not in record.error.message
    assert strict_stack.emulator.stats()["submissions"]["total"] == 0


def test_a_public_image_still_goes_through(strict_stack: WorkerStack) -> None:
    """The emulator fetches nothing from a host it cannot reach: a public URL that does
    not answer fails at WaveSpeed's side (1402), after it was submitted."""
    strict_stack.emulator.reset()
    job_id = _unchecked_job(strict_stack, "https://images.example.com/a.png")
    record = strict_stack.jobs.wait([job_id], timeout=60)[0]
    assert record.error is not None and record.error.code != "invalid_input"
    assert strict_stack.emulator.stats()["submissions"]["total"] == 1
