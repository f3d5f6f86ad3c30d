"""The message ``JobClient.submit`` pushes with the record is the one ``send_task`` writes:
same envelope, same headers (slimmed the same way), same body, same list. Against a real
redis-server; what Celery writes is read back from Redis, not assumed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from producer import JobClient
from producer.outgoing import RunJobMessages
from worker.celery_config import make_app
from worker.constants import QUEUE_HIGH, QUEUE_NORMAL, RUN_JOB_TASK
from worker.messages import run_label
from worker.settings import Settings

#: Fresh per message: a task id and a delivery tag.
UNIQUE_HEADERS = {"id"}
UNIQUE_PROPERTIES = {"delivery_tag"}


@pytest.fixture
def producer_app(redis_url: str) -> Iterator[Celery]:
    """The app as the producer configures it (no result backend, no task-sent event)."""
    with JobClient(redis_url=redis_url) as client:
        yield client._celery()


def _popped(redis_url: str, queue: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    raw = client.rpop(queue)
    client.close()
    assert isinstance(raw, str), f"no message on {queue}"
    message: dict[str, Any] = json.loads(raw)
    return message


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    headers = {k: v for k, v in message["headers"].items() if k not in UNIQUE_HEADERS}
    properties = {k: v for k, v in message["properties"].items() if k not in UNIQUE_PROPERTIES}
    body = json.loads(base64.b64decode(message["body"]))
    return {**message, "headers": headers, "properties": properties, "body": body}


@pytest.mark.parametrize("queue", [QUEUE_NORMAL, QUEUE_HIGH])
def test_the_message_is_the_one_send_task_writes(
    producer_app: Celery, redis_url: str, queue: str
) -> None:
    model = "flux-kontext-pro/text-to-image"
    producer_app.send_task(
        RUN_JOB_TASK,
        kwargs={"job_id": "job-1"},
        queue=queue,
        ignore_result=True,
        **run_label("job-1", 0, model),
    )
    sent = _popped(redis_url, queue)

    built = RunJobMessages(producer_app).build("job-1", queue, model)

    assert built.outgoing.list_key == queue
    assert built.sent_event is None
    ours = json.loads(built.outgoing.payload)
    assert _comparable(ours) == _comparable(sent)
    assert ours["headers"]["id"] != sent["headers"]["id"]
    # What Flower shows: the job id, the model and the run.
    assert "shadow" not in ours["headers"]  # the task name stays wavequeue.run_job
    assert ours["headers"]["argsrepr"] == "job-1"
    assert ours["headers"]["kwargsrepr"] == f"{model} submit"


def test_submit_pushes_it_with_the_record(redis_url: str) -> None:
    with JobClient(redis_url=redis_url) as client:
        job_id = client.text_to_image("a message with its record", priority="high")
        message = _popped(redis_url, QUEUE_HIGH)
        assert client.get(job_id).status.value == "queued"
    assert json.loads(base64.b64decode(message["body"]))[1] == {"job_id": job_id}
    assert message["headers"]["task"] == RUN_JOB_TASK


def test_the_worker_app_reads_it_as_a_task_message(redis_url: str) -> None:
    """kombu decodes the pushed envelope into the task message a worker runs."""
    with JobClient(redis_url=redis_url) as client:
        job_id = client.text_to_image("decoded by kombu")
    app = make_app(Settings(redis_url=redis_url))
    with app.connection_for_read() as connection:
        queue = app.amqp.queues[QUEUE_NORMAL]
        message = queue(connection.default_channel).get(no_ack=True, accept=["json"])
        assert message is not None
        assert message.headers["task"] == RUN_JOB_TASK
        args, kwargs, _ = message.decode()
        assert (args, kwargs) == ([], {"job_id": job_id})
        assert message.delivery_info["routing_key"] == QUEUE_NORMAL
    app.close()
