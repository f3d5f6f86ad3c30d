"""Flower lists both queues when no worker has told it what it consumes.

Flower's broker page and ``/api/queues/length`` show the queues of the workers it
knows, else the app's ``task_default_queue`` plus its declared ``task_queues``. Before
``task_queues`` was declared, a Flower started before the workers (or with all of them
down, exactly when an operator looks at the backlog) showed ``wavequeue.normal`` only:
``priority="high"`` jobs piled up in an invisible queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ops.localstack.supervisor import ProcessService
from producer import JobClient
from tests.ops.conftest import FLOWER_PASSWORD, FLOWER_USER, start_flower

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def flower(stack_env: dict[str, str], tmp_path: Path) -> Iterator[ProcessService]:
    service = start_flower(
        stack_env, tmp_path, FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}"
    )
    yield service
    service.stop()


def test_the_high_queue_shows_with_no_worker_running(
    stack_env: dict[str, str], flower: ProcessService
) -> None:
    with JobClient(redis_url=stack_env["REDIS_URL"]) as jobs:
        jobs.text_to_image("a normal lantern", seed=1)
        for i in range(2):
            jobs.text_to_image(f"an urgent lantern {i}", seed=i, priority="high")
    auth = (FLOWER_USER, FLOWER_PASSWORD)
    lengths = requests.get(f"{flower.address}/api/queues/length", auth=auth, timeout=10)
    lengths.raise_for_status()
    assert sorted((q["name"], q["messages"]) for q in lengths.json()["active_queues"]) == [
        ("wavequeue.callbacks", 0),
        ("wavequeue.high", 2),
        ("wavequeue.normal", 1),
    ]
    page = requests.get(f"{flower.address}/broker", auth=auth, timeout=10)
    page.raise_for_status()
    assert "wavequeue.high" in page.text
