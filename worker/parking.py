"""Jobs parked behind the in-flight cap, taken to be sent again when a slot frees.

Whatever ends a job (a worker's run, the webhook receiver) frees its slot in the
ending step; it then wakes the job parked longest. The sweeper wakes parked jobs
too whenever slots are free (a lost wake, an expired slot).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from worker.errors import JobNotFoundError, UnreadableRecordError
from worker.ratelimit import AccountLimiter
from worker.store import JobSnapshot, JobStore

log = logging.getLogger(__name__)

#: How many times a wake takes more parked jobs in place of ones that no longer wait.
_UNPARK_ROUNDS = 4


def take_unparked(store: JobStore, limiter: AccountLimiter, count: int) -> list[JobSnapshot]:
    """Up to ``count`` parked jobs that still wait for a slot, taken from the parked
    set (longest parked first), for the caller to send again. A job waits for a slot
    when it is live with no prediction and no submit in progress, whatever its status
    (a 503 on submit leaves it ``submitting``, a remote failure before a new attempt
    ``processing``). Others are dropped, and more are taken in their place."""
    ready: list[JobSnapshot] = []
    for _ in range(_UNPARK_ROUNDS):
        taken = limiter.unpark(count - len(ready))
        for job_id in taken:
            snap = _waiting_for_a_slot(store, job_id)
            if snap is None:
                limiter.woke(job_id)
            else:
                ready.append(snap)
        if len(ready) >= count or len(taken) == 0:
            break
    return ready


def _waiting_for_a_slot(store: JobStore, job_id: str) -> JobSnapshot | None:
    try:
        snap = store.snapshot(job_id)
    except (JobNotFoundError, UnreadableRecordError):
        return None
    waiting = not snap.state.is_terminal and not snap.field("prediction_id")
    return snap if waiting and not snap.field("submit_token") else None


def wake_parked(
    store: JobStore,
    limiter: AccountLimiter,
    count: int,
    send: Callable[[JobSnapshot], None],
) -> int:
    """Send again up to ``count`` jobs parked behind the in-flight cap (a slot freed).
    Never fails its caller: a job taken but not sent stays in the limiter's waking set,
    and the sweeper parks it again (``requeue_stale_wakes``)."""
    sent = 0
    try:
        for snap in take_unparked(store, limiter, count):
            send(snap)
            sent += 1
    except Exception as exc:  # noqa: BLE001 - a wake is best effort; the sweeper repairs it
        log.warning("could not wake parked jobs (%s); the sweeper will", exc)
    return sent
