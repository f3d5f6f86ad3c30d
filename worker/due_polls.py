"""Polls due too far ahead to hold as countdown messages, sent when they are due.

A poll held as a countdown message costs ~700 bytes of Redis (kombu keeps a delivered,
unacked message and its index entry) and worker memory for its whole wait, and the
visibility timeout bounds how long it may wait. A poll due later than
``Settings.longest_held_poll`` therefore has no message: the run that schedules it puts
the job into ``DUE_POLLS_KEY`` (in the same write that claims the poll), and a
dispatcher in every worker process takes the due ones out (each taken once, by one
dispatcher) and sends their messages. It sleeps until the next one is due, at most
``IDLE_WAIT``: a new entry is at least ``longest_held_poll`` ahead, so it is never
missed by more than that wait.

A message the dispatcher cannot send (Redis away) goes to the nudger, which sends it once
Redis answers; if the process dies in between, the job's entry in the next-run index
still brings it back through the sweeper.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker.clock import Clock
from worker.store import JobStore

log = logging.getLogger(__name__)

#: Longest sleep between two looks at the due set.
IDLE_WAIT = 1.0
#: Shortest sleep when the next poll is due very soon (a claim is one round trip).
MIN_WAIT = 0.02
#: Polls taken per round trip.
BATCH = 200


class DuePollDispatcher:
    def __init__(
        self,
        store: JobStore,
        send: Callable[[str], object],
        lost: Callable[[str], object],
        *,
        clock: Clock,
    ) -> None:
        self._store = store
        self._send = send
        self._lost = lost
        self._clock = clock

    def dispatch_once(self) -> float:
        """Send every poll due now; how long to sleep before the next look."""
        now = self._clock()
        job_ids, following = self._store.claim_due_polls(now, BATCH)
        for job_id in job_ids:
            try:
                self._send(job_id)
            except Exception as exc:  # noqa: BLE001 - taken from the set: must not be dropped
                log.warning("job %s: its due poll could not be sent yet (%s)", job_id, exc)
                self._lost(job_id)
        if len(job_ids) >= BATCH:
            return 0.0
        if following is None:
            return IDLE_WAIT
        return min(max(following - self._clock(), MIN_WAIT), IDLE_WAIT)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                wait = self.dispatch_once()
            except Exception as exc:  # noqa: BLE001 - Redis away: the next look tries again
                log.debug("due polls not read (%s)", exc)
                wait = IDLE_WAIT
            if wait:
                stop.wait(wait)
