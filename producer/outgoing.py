"""A job's first ``run_job`` message, built as Celery builds it, for the job store to push
together with the record.

Sending through ``app.send_task`` costs a round trip of its own after the record's,
a kombu producer and channel per call, and (with ``task_send_sent_event``) a pub/sub
``task-sent`` event: about 60% of an enqueue. Here the message is built by the same
pieces and handed to ``JobStore.create`` / ``create_jobs``, whose script LPUSHes it in
the step that creates the record (only if it creates it: an idempotency key already
used sends nothing). One round trip per job, or per batch; never a record without its
message, never a message without its record.

What a worker receives is what ``send_task`` would have sent:

- ``app.amqp.as_task_v2``: Celery's own task message (protocol 2);
- the ``before_task_publish`` signal, as every send fires it (``worker.messages``
  slims the message there);
- the envelope kombu's Redis transport LPUSHes (``Producer.publish`` ->
  ``Channel.prepare_message`` -> ``basic_publish``): the body serialized by the app's
  task serializer and base64-encoded, delivery mode and priority, a fresh delivery tag,
  the anonymous exchange routed by queue name, on the list named after the queue.

``tests/producer/test_outgoing.py`` compares the two field by field. Celery's
``task-sent`` event is published only when ``WAVEQUEUE_PRODUCER_SENT_EVENTS`` asks
(``task_send_sent_event`` on the producer's app).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals
from celery.utils.nodenames import anon_nodename
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps as serialize

from worker.constants import RUN_JOB_TASK
from worker.messages import run_label
from worker.store import Outgoing

#: kombu's virtual transports encode every body this way (``Channel.body_encoding``).
BODY_ENCODING = "base64"
#: Celery publishes a routed task through the anonymous exchange, keyed by queue name.
ANONYMOUS_EXCHANGE = ""


@dataclass(frozen=True)
class RunJobMessage:
    """One built message: what the store pushes, and the ``task-sent`` event's fields when
    the producer sends those (else None)."""

    outgoing: Outgoing
    sent_event: dict[str, Any] | None


class RunJobMessages:
    """Builds ``run_job`` messages with the producer's Celery app; thread-safe (no state
    changes after construction)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.sends_sent_events = bool(app.conf.task_send_sent_event)
        self._serializer = app.conf.task_serializer
        self._delivery_mode = maybe_delivery_mode(app.conf.task_default_delivery_mode)  # type: ignore[no-untyped-call]
        self._origin = anon_nodename()
        self._declared: dict[str, Any] = {}

    def build(self, job_id: str, queue: str, model: str | None = None) -> RunJobMessage:
        task_id, delivery_tag = _two_uuid4s()
        kwargs = {"job_id": job_id}
        headers, properties, body, sent_event = self.app.amqp.as_task_v2(
            task_id,
            RUN_JOB_TASK,
            kwargs=kwargs,
            ignore_result=True,
            origin=self._origin,
            create_sent_event=self.sends_sent_events,
            # What Flower shows: the job id, the model and "submit".
            **run_label(job_id, 0, model),
        )
        signals.before_task_publish.send(
            sender=RUN_JOB_TASK,
            body=body,
            exchange=ANONYMOUS_EXCHANGE,
            routing_key=queue,
            declare=[self._queue(queue)],
            headers=headers,
            properties=properties,
            retry_policy=None,
        )
        content_type, content_encoding, data = serialize(body, serializer=self._serializer)  # type: ignore[no-untyped-call]
        raw = data.encode(content_encoding) if isinstance(data, str) else data
        properties["delivery_mode"] = self._delivery_mode
        properties["delivery_info"] = {"exchange": ANONYMOUS_EXCHANGE, "routing_key": queue}
        properties["priority"] = 0
        properties["body_encoding"] = BODY_ENCODING
        properties["delivery_tag"] = delivery_tag
        envelope = {
            "body": base64.b64encode(raw).decode("ascii"),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": properties,
        }
        if sent_event is not None:
            sent_event.update(
                {
                    "queue": queue,
                    "exchange": ANONYMOUS_EXCHANGE,
                    "routing_key": queue,
                    # What the worker's events show too (worker.messages.run_label).
                    "args": headers.get("argsrepr", sent_event.get("args")),
                    "kwargs": headers.get("kwargsrepr", sent_event.get("kwargs")),
                }
            )
        # kombu's json.dumps with plain values (strings, numbers, None, lists, dicts: all an
        # envelope holds) writes the same text as the standard library's, which is faster.
        payload = json.dumps(envelope)
        # kombu's Redis transport keeps a priority-0 message on the list named after its
        # queue (wavequeue sets no ``global_keyprefix`` transport option, which would prefix it).
        return RunJobMessage(Outgoing(queue, payload), sent_event)

    def _queue(self, name: str) -> Any:
        """The kombu Queue Celery would declare (created once, as Celery's router does)."""
        queue = self._declared.get(name)
        if queue is None:
            queue = self._declared[name] = self.app.amqp.queues[name]
        return queue

    def publish_sent_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Celery's ``task-sent`` events for messages the store pushed, as ``send_task``
        publishes them (through the app's event dispatcher), pipelined."""
        if not events:
            return
        dispatcher = self.app.events.Dispatcher(enabled=False)
        policy = self.app.conf.task_publish_retry_policy
        with self.app.producer_or_acquire() as producer, producer.batch():
            for fields in events:
                dispatcher.publish("task-sent", fields, producer, retry=True, retry_policy=policy)


def _two_uuid4s() -> tuple[str, str]:
    """A task id and a delivery tag, random UUIDs as Celery and kombu make them, from one
    read of the system's randomness instead of two (a measurable share of a batch)."""
    raw = os.urandom(32)
    return (
        str(uuid.UUID(bytes=raw[:16], version=4)),
        str(uuid.UUID(bytes=raw[16:], version=4)),
    )
