"""Celery's ``task-sent`` event: none from a producer by default, one per job when
``WAVEQUEUE_PRODUCER_SENT_EVENTS`` asks. A real event receiver (what Flower runs) on a
real redis-server. A marker event sent after the enqueues arrives after any event the
enqueues published (one server, one order), so "none" is read off a finished stream."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from producer import JobClient
from worker.celery_config import make_app
from worker.settings import Settings

MARKER = "wavequeue-test-marker"


@contextmanager
def event_stream(redis_url: str) -> Iterator[list[dict[str, Any]]]:
    """Every event seen from the start of the block to its end: a marker sent until one
    arrives says the receiver listens; a marker sent at the end closes the stream."""
    app = make_app(Settings(redis_url=redis_url))
    events: list[dict[str, Any]] = []
    seen_markers: set[str] = set()
    arrived = threading.Condition()

    def on_event(event: dict[str, Any]) -> None:
        with arrived:
            if event.get("type") == MARKER:
                seen_markers.add(event["token"])
            elif seen_markers:
                events.append(event)
            arrived.notify_all()

    connection = app.connection()
    receiver = app.events.Receiver(connection, handlers={"*": on_event})

    def receive() -> None:
        receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    def mark(token: str, *, repeat: bool) -> None:
        """Send a marker (again every 0.2 s while the receiver may not listen yet) and
        wait for it to come back."""
        give_up = time.monotonic() + 20
        with app.events.default_dispatcher() as dispatcher, arrived:
            dispatcher.send(MARKER, token=token)
            while not arrived.wait_for(lambda: token in seen_markers, 0.2 if repeat else 20):
                assert repeat and time.monotonic() < give_up, f"marker {token} never arrived"
                dispatcher.send(MARKER, token=token)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        mark("start", repeat=True)
        yield events
        mark("end", repeat=False)
    finally:
        receiver.should_stop = True
        thread.join(10)
        connection.release()
        app.close()


def _sent_by_this_process(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "task-sent" and e.get("pid") == os.getpid()]


def test_a_producer_sends_no_task_sent_event_by_default(redis_url: str) -> None:
    with event_stream(redis_url) as events, JobClient(redis_url=redis_url) as client:
        client.text_to_image("no sent event")
        client.submit_many(client.prepare_many([{"kind": "text-to-image", "prompt": "many"}] * 3))
    assert _sent_by_this_process(events) == []


def test_the_setting_sends_one_task_sent_event_per_job(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, producer_sent_events=True)
    with event_stream(redis_url) as events, JobClient(settings) as client:
        single = client.text_to_image("with a sent event")
        many = client.submit_many(
            client.prepare_many(
                [{"kind": "text-to-image", "prompt": f"many {n}"} for n in range(3)]
            )
        )
        again = client.text_to_image("keyed", idempotency_key="sent-once")
        assert client.text_to_image("keyed", idempotency_key="sent-once") == again
    sent = _sent_by_this_process(events)
    job_ids = [single, *many, again]
    assert len(sent) == len(job_ids)
    # Labelled as the worker's events are (worker.messages.run_label): the job id as args.
    assert sorted(e["args"] for e in sent) == sorted(job_ids)
    assert {e["name"] for e in sent} == {"wavequeue.run_job"}
    assert {e["kwargs"] for e in sent} == {"flux-kontext-max/text-to-image submit"}
    assert {e["queue"] for e in sent} == {"wavequeue.normal"}
