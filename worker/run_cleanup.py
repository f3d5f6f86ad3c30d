"""Free what a run that raised holds when it ends, not at the next full collection.

Celery ends a run that raises (a failed job's ``JobFailedError``, a duplicate's or a
poison message's ``Ignore``) by wrapping the exception in an ``ExceptionInfo``, which
copies every frame of its traceback (with each code object's positions: ~2,000 small
tuples) and which the tracer's frame references, while the exception's
``__traceback__`` references that frame: a reference cycle per such run. Reference
counting never frees a cycle; only a full garbage collection does, and the larger
the heap the rarer those are. Between two, each cycle keeps its frames, their locals
(records, Redis replies) and the copies alive: the heap and the malloc arenas of the
pool threads grow with the jobs done (measured by ``make soak``; README "Memory over
long runs").

Once the run has ended (``task_postrun``, sent after Celery stored the state, logged
and sent its events, all of which read the already formatted ``ExceptionInfo``), the
tracebacks of the exception and of those chained to it are no longer needed: dropping
them breaks the cycle, and the run's objects go when the tracer returns.
"""

from __future__ import annotations

from celery import signals


def drop_tracebacks(error: BaseException) -> None:
    """Clear ``__traceback__`` of ``error`` and of every exception chained to it."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending.extend((current.__context__, current.__cause__))


@signals.task_postrun.connect  # type: ignore[untyped-decorator]
def _after_run(retval: object = None, **_: object) -> None:
    # A run that raised ends with the exception as its return value.
    if isinstance(retval, BaseException):
        drop_tracebacks(retval)
