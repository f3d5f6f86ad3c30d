"""Send task events unbuffered, so Flower sees every run of every job end.

With an event loop, celery buffers task events and publishes the buffer in one
message (``EventDispatcher.flush``), which clears it *after* publishing, under a
mutex that ``send`` does not take. With the threads pool, ``send`` runs on pool
threads: an event appended while the buffer is being published is cleared unsent.
Lost that way are the ``task-succeeded`` and ``task-retried`` events of runs that end
while another run's events are going out, and Flower then shows a finished job's
last run as ``STARTED`` forever (found by the Flower browser test once runs took a
few milliseconds: half of 16 runs lost their ending). Unbuffered, each event is
published under the dispatcher's mutex. Task events are sent only while a monitor
(Flower) has enabled them, so the extra publishes cost nothing otherwise.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

EVENTS_STEP = "celery.worker.consumer.events:Events"


class UnbufferedTaskEvents(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: after the Events step builds the dispatcher, stop its buffering."""

    requires = (EVENTS_STEP,)

    def start(self, parent: Any) -> None:
        dispatcher = getattr(parent, "event_dispatcher", None)
        if dispatcher is not None:
            dispatcher.flush()  # anything buffered before this step ran
            dispatcher.buffer_group = frozenset()
