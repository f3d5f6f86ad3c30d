"""Every run's ending reaches an event monitor (Flower): no task event is lost.

celery's buffered task events lose events appended while the buffer is being
published, which with the threads pool happens whenever runs end together
(``worker/task_events.py``). A real worker, a real event receiver: every run that
started must be seen to end (succeeded, or retried into its next run).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from producer import JobClient
from tests.support.stack import worker_stack
from worker.celery_config import make_app
from worker.settings import Settings


def test_every_run_that_starts_is_seen_to_end(tmp_path: Path) -> None:
    with worker_stack(tmp_path, concurrency=8) as stack:
        app = make_app(Settings(redis_url=stack.redis.url))
        runs: dict[str, list[str]] = {}
        ready = threading.Event()

        def listen() -> None:
            with app.connection() as connection:
                receiver = app.events.Receiver(
                    connection,
                    handlers={
                        "*": lambda event: runs.setdefault(event.get("uuid", ""), []).append(
                            event["type"]
                        )
                    },
                )
                ready.set()
                # Ends with the stack's Redis, when the test is over.
                with contextlib.suppress(Exception):
                    receiver.capture(limit=None, timeout=None, wakeup=True)

        threading.Thread(target=listen, daemon=True).start()
        assert ready.wait(10)
        # Task events are off by default; a monitor (Flower does it every 5 s) turns
        # them on remotely, and the worker's reply says it did.
        replies = app.control.enable_events(reply=True, timeout=10)
        assert replies and all("ok" in next(iter(r.values())) for r in replies), replies
        with JobClient(Settings(redis_url=stack.redis.url)) as client:
            for batch in range(3):
                ids = [client.text_to_image(f"events {batch}.{i}") for i in range(8)]
                client.wait_all(ids, timeout=60)

        def unfinished() -> list[str]:
            return [
                uuid
                for uuid, types in list(runs.items())
                if "task-started" in types and "task-succeeded" not in types
                and "task-retried" not in types
            ]  # fmt: skip

        deadline = time.monotonic() + 15
        while unfinished() or sum("task-succeeded" in t for t in list(runs.values())) < 24:
            assert time.monotonic() < deadline, f"runs never seen to end: {unfinished()}"
            time.sleep(0.1)
        app.close()


def test_a_monitor_sees_a_failed_job_end_failed(tmp_path: Path) -> None:
    """Every run ends "succeeded" for Celery (a reschedule does not raise Retry); each run
    has its own task id, so a monitor's state (Flower's) shows the job's last run FAILURE."""
    with worker_stack(tmp_path, concurrency=2) as stack:
        app = make_app(Settings(redis_url=stack.redis.url))
        state = app.events.State()
        ready = threading.Event()

        def listen() -> None:
            with app.connection() as connection:
                receiver = app.events.Receiver(connection, handlers={"*": state.event})
                ready.set()
                # Ends with the stack's Redis, when the test is over.
                with contextlib.suppress(Exception):
                    receiver.capture(limit=None, timeout=None, wakeup=True)

        threading.Thread(target=listen, daemon=True).start()
        assert ready.wait(10)
        assert app.control.enable_events(reply=True, timeout=10)
        stack.emulator.configure(faults={"prediction_failed": {"code": 1403}})
        with JobClient(Settings(redis_url=stack.redis.url)) as client:
            job_id = client.text_to_image("a lighthouse that fails")
            assert client.wait(job_id, timeout=60).status.value == "failed"

        def runs() -> list[Any]:
            return [t for _, t in state.tasks_by_time() if t.args == job_id]

        deadline = time.monotonic() + 15
        while not any(t.state == "FAILURE" for t in runs()):
            assert time.monotonic() < deadline, [(t.uuid, t.state) for t in runs()]
            time.sleep(0.1)
        assert len({t.uuid for t in runs()}) >= 2  # the submit run and the polls
        assert [t.state for t in runs() if t.state == "FAILURE"] == ["FAILURE"]
        app.close()
