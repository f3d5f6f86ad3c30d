"""A run that raises leaves no reference cycle behind (``worker.run_cleanup``).

Runs go through Celery's own tracer, as a worker's pool thread runs them, with the
garbage collector off: whatever a full collection would still find is a cycle that
reference counting would have kept until then.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from celery import Celery
from celery.app.trace import build_tracer
from celery.exceptions import Ignore

import worker.run_cleanup  # noqa: F401 - connects the task_postrun handler under test


class JobEndedError(Exception):
    pass


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _tracer() -> object:
    app = Celery("run-cleanup-test", set_as_current=False)

    @app.task(bind=True, throws=(JobEndedError,), name="cleanup.run")  # type: ignore[untyped-decorator]
    def run(self: object, outcome: str) -> str:
        record = {"outputs": [f"https://x/{n}.png" for n in range(50)]}  # a run's locals
        if outcome == "failed":
            raise JobEndedError("failed", record)
        if outcome == "duplicate":
            try:
                raise KeyError("poll_seq")
            except KeyError:
                raise Ignore("a stale poll") from None  # chained: __context__ is set
        return record["outputs"][0]

    return build_tracer(run.name, run, eager=False, propagate=False, app=app)


@pytest.mark.parametrize("outcome", ["failed", "duplicate", "completed"])
@pytest.mark.usefixtures("collector_off")
def test_a_run_leaves_no_cycle(outcome: str) -> None:
    tracer = _tracer()

    def run(n: int) -> None:
        task_id = f"{outcome}-{n}"
        tracer(task_id, (), {"outcome": outcome}, {"id": task_id, "delivery_info": {}})  # type: ignore[operator]

    run(0)  # the first run builds what every later one reuses
    gc.collect()
    for n in range(1, 21):
        run(n)
    assert gc.collect() == 0
