"""Sending the jobs the fair gate gave submission slots to (``worker.fairness``).

A job in the line has no message. When the limiter gives it a slot (``Permit.admitted``,
``AccountLimiter.give_out``), whoever made that call sends the job's message with a
countdown to its slot: the run that was granted, the run that ended a job (a freed
in-flight slot), the webhook receiver, the sweeper. A message that is never sent (its
sender died) costs nothing but time: the slot lapses after the limiter's window and the
job goes back to the front of its line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from worker.models import JobState
from worker.ratelimit import AccountLimiter, Admission
from worker.store import JobStore

log = logging.getLogger(__name__)

#: Sends one job's message (a chain step with the steps after it) to run in ``countdown`` s.
Send = Callable[[JobState, float], None]


def send_admitted(
    store: JobStore, admitted: Sequence[Admission], send: Send, *, longest_countdown: float
) -> int:
    """Send the messages of ``admitted`` jobs (one read of their records); how many went.
    A job that ended meanwhile is skipped (the ending took it out of the line already).
    Never fails its caller: a message not sent lapses back into the line."""
    if not admitted:
        return 0
    sent = 0
    try:
        states = store.get_states([admission.job_id for admission in admitted])
        for admission, state in zip(admitted, states, strict=True):
            if state is None or state.is_terminal:
                continue
            # A slot further off than a countdown may wait: the job comes back early, keeps
            # its slot and waits again (the limiter answers how long).
            send(state, min(max(0.0, admission.wait), longest_countdown))
            sent += 1
    except Exception as exc:  # noqa: BLE001 - the slot lapses and the job is put back in line
        log.warning("could not send %d admitted job(s) (%s); back in line", len(admitted), exc)
    return sent


def admit_waiting(
    store: JobStore, limiter: AccountLimiter, send: Send, *, longest_countdown: float
) -> int:
    """Give out the slots free now (an in-flight slot freed, a sweeper pass) and send the
    jobs that got them. Never fails its caller."""
    try:
        admitted = limiter.give_out()
    except Exception as exc:  # noqa: BLE001 - best effort: the next call or sweep gives them out
        log.warning("could not give out submission slots (%s); the sweeper will", exc)
        return 0
    return send_admitted(store, admitted, send, longest_countdown=longest_countdown)
