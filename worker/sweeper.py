"""The sweeper: finds jobs whose message is gone and brings them back.

kombu's Redis transport pops a message (BRPOP) before it records it as unacked,
so a worker killed in between loses that message for good; the visibility
timeout cannot bring it back. Every worker runs a sweeper thread; a Redis lock
lets one sweep at a time. Each pass:

1. times out live jobs past their deadline (whatever happened to their message);
2. re-sends ``run_job`` for jobs whose next message is overdue by more than the
   grace period (a chain step with the steps after it). A re-send is harmless if
   the original was only late: every step is a compare-and-set on the record;
3. looks again at a few quarantined records (below);
4. sends the callback deliveries that are due (``worker.callbacks``): an ending whose
   message never went out, a countdown retry whose message was lost, and attempts due
   after a wait longer than any countdown may be;
5. wakes jobs held for a daily budget that now has room (``worker.budgets``: a new UTC
   day, a raised cap, a reservation given back), and reads the account balance when a
   reading is due, pausing or resuming submission on it (``worker.balance``).

A pass's work grows with what is overdue, not with what is in flight: both indexes
are sorted sets scored by when a job is due (its deadline, its next message), and a
pass walks each one from the oldest entry up to now, a page at a time
(ZRANGEBYSCORE, by score, skipping what it already handled), until nothing overdue
is left or it has handled ``PASS_BUDGET`` entries of that index. The rest waits for
the next pass, at the front of the line: a backlog is worked off oldest first over
consecutive passes, and deadlines and re-sends each have their own budget, so
neither starves the other.

A job still ``queued`` is indexed from its creation, but re-sent only when its
queue is empty (its message should have been taken long ago) — during a backlog
it simply waits, so a long queue never multiplies messages. A chain step waiting
for the step before is re-sent (with that step's output) only once that step has
completed.

No single record can stop the sweeper or fill its batches. An index entry whose
record is gone (a chain step that expired before it ran) is dropped. A record
this version cannot decode (corrupt, or a status added by a newer version during
a rolling deploy) is logged once and moved to ``QUARANTINE_KEY``: out of the
batches, counted for the exporter, and tried again a few per pass, so a newer
worker readmits the records it can read. In a mixed fleet the older workers may
quarantine them again; the newer ones keep readmitting them until the deploy ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.balance import BalanceWatch
from worker.budgets import wake_held
from worker.callbacks import members_for
from worker.constants import CALLBACK_SEND_GRACE, QUARANTINE_KEY, QUEUES, SWEEPER_LOCK_KEY
from worker.errors import JobNotFoundError, UnreadableRecordError
from worker.models import JobState, JobStatus
from worker.runner import Finished, JobRunner
from worker.store import JobSnapshot, JobStore, counter_field

log = logging.getLogger(__name__)

#: Index entries read per round trip.
PAGE = 500
#: How many overdue jobs one pass handles per index at most (the rest wait for the next
#: pass). 5,000 per 30 s interval is 10,000 a minute, above WaveSpeed's busiest tiers, so
#: a backlog shrinks pass after pass; yet a full pass stays well within its 30 s lock
#: (5,000 time-outs and 5,000 re-sends took 6.5 s on a busy 2-core machine, publishing aside).
PASS_BUDGET = 5000
#: After a broker outage, how long to let the messages put back at reconnect run before
#: what is still overdue is taken for lost (and the catch-up pass's grace).
CATCH_UP_SETTLE = 10.0
#: Held by the one worker that catches up after an outage.
CATCH_UP_LOCK_KEY = SWEEPER_LOCK_KEY + ":catch-up"
#: How many quarantined records one pass tries to read again.
QUARANTINE_REVIEW = 50


@dataclass(frozen=True)
class SweepReport:
    timed_out: int = 0
    resent: int = 0
    quarantined: int = 0
    readmitted: int = 0
    #: Jobs of the fair line given slots and sent by the pass.
    woken: int = 0
    #: Callback deliveries sent (due, or their message lost).
    callbacks: int = 0
    #: Jobs held for a daily budget, sent again because it has room now.
    held_woken: int = 0


class Sweeper:
    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        resend: Callable[[JobSnapshot, dict[str, Any]], None],
        *,
        grace: float,
        interval: float,
        clock: Callable[[], float] = time.time,
        budget: int = PASS_BUDGET,
        send_callbacks: Callable[[Sequence[str]], None] | None = None,
        balance: BalanceWatch | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.resend = resend
        self.grace = grace
        self.interval = interval
        self.clock = clock
        self.budget = budget
        self.send_callbacks = send_callbacks
        self.balance = balance
        self._catch_up = threading.Event()

    def sweep_once(self) -> SweepReport:
        now = self.clock()
        quarantined: list[str] = []
        timed_out = self._expire_past_deadline(now, quarantined)
        resent = self._resend_overdue(now, quarantined, self.grace)
        readmitted = self._review_quarantine(now)
        woken = self._wake_parked(now)
        callbacks = self._send_due_callbacks(now)
        held_woken = wake_held(
            self.runner.budgets,
            self.store.snapshots,
            lambda snap: self.resend(snap, {}),
            limit=self.budget,
        )
        if self.balance is not None:
            self.balance.check()
        # Operators (and tests) see that passes happen and what they did.
        self.store.count_many(
            {
                counter_field("sweeper_passes"): 1,
                counter_field("sweeper_timed_out"): timed_out,
                counter_field("sweeper_resent"): resent,
                counter_field("sweeper_woken"): woken,
                counter_field("sweeper_callbacks"): callbacks,
                counter_field("sweeper_held_woken"): held_woken,
            }
        )
        return SweepReport(
            timed_out, resent, len(quarantined), readmitted, woken, callbacks, held_woken
        )

    def _send_due_callbacks(self, now: float) -> int:
        """Send the callback deliveries the outbox says are due; each is not sent again
        before a grace period (its message may simply wait in a busy queue)."""
        if self.send_callbacks is None:
            return 0
        members = self.store.callbacks_due(now, self.budget)
        if members:
            # Marked before sending: a delivery that runs at once sets its own next time,
            # which a mark made after it would overwrite.
            self.store.callbacks_sent(members, now + max(self.grace, CALLBACK_SEND_GRACE))
            self.send_callbacks(members)
        return len(members)

    def _ended(self, outcome: object) -> bool:
        """A time-out this pass made: send the callbacks its ending made owed at once."""
        if not isinstance(outcome, Finished):
            return False
        if self.send_callbacks is not None and outcome.ended_here:
            state = outcome.state
            owed = self.store.callbacks_owed(
                members_for(state.id, state.callback_url, state.chain_id)
            )
            if owed:
                self.send_callbacks(owed)
        return True

    def _wake_parked(self, now: float) -> int:
        """Give the free submission slots to jobs in the fair line and send them: a lost
        message (its slot lapsed back into the line), an in-flight slot that aged out, an
        ending whose run died before giving its slot out."""
        del now  # the limiter reads Redis time itself
        return self.runner.admit_waiting()

    def _read(self, job_id: str, now: float, quarantined: list[str]) -> JobSnapshot | None:
        """The record, or None after dealing with one that cannot be used: an index entry
        without a record is dropped, an unreadable record is quarantined."""
        try:
            return self.store.snapshot(job_id)
        except JobNotFoundError:
            self.store.forget([job_id])
        except UnreadableRecordError as exc:
            log.error("sweeper: %s; quarantined (%s)", exc, QUARANTINE_KEY)
            self.store.quarantine(job_id, now)
            self.store.count("records_quarantined")
            quarantined.append(job_id)
        return None

    def _pages(
        self, read: Callable[[str, int, int], list[tuple[str, float]]]
    ) -> Iterator[list[str]]:
        """The ids an index holds up to now, oldest first, a page at a time, until none is
        left or ``budget`` ids were handed out. ``read(start, skip, limit)`` is the store's
        query.

        It walks by score, not by offset from the start: what the pass handled has left the
        range (ended, forgotten, quarantined, or pushed a grace period on), and what it could
        not handle stays where it was and is skipped by id, so no id is handed out twice and
        none left in place stops the walk."""
        seen: set[str] = set()
        start, skip = "-inf", 0
        while len(seen) < self.budget:
            limit = min(PAGE, self.budget - len(seen))
            entries = read(start, skip, limit)
            fresh = [(job_id, score) for job_id, score in entries if job_id not in seen]
            if fresh:
                seen.update(job_id for job_id, _ in fresh)
                start, skip = repr(fresh[-1][1]), 0
                yield [job_id for job_id, _ in fresh]
            else:
                skip += len(entries)  # a page all seen (left in place, one score): look past it
            if len(entries) < limit:
                return

    def _expire_past_deadline(self, now: float, quarantined: list[str]) -> int:
        timed_out = 0
        pages = self._pages(lambda start, skip, n: self.store.past_deadline(now, n, start, skip))
        for job_id in _each(pages):
            snap = self._read(job_id, now, quarantined)
            if snap is None:
                continue
            with self._isolated(job_id, now, quarantined):
                if snap.state.is_terminal:
                    self.store.forget([job_id])  # ended without leaving the index (older version)
                elif snap.state.deadline_at <= now:
                    timed_out += self._ended(self.runner.time_out(snap))
        return timed_out

    def _resend_overdue(self, now: float, quarantined: list[str], grace: float) -> int:
        resent = 0
        backlogged: set[str] | None = None
        pages = self._pages(lambda start, skip, n: self.store.overdue(now - grace, n, start, skip))
        for page in pages:
            # Looked at now: none again before another grace period, whatever we decide.
            self.store.mark_due_many(page, now)
            if backlogged is None:
                backlogged = self._backlogged_queues()
            for job_id in page:
                resent += self._resend_one(job_id, now, quarantined, backlogged, grace)
        return resent

    def _resend_one(
        self, job_id: str, now: float, quarantined: list[str], backlogged: set[str], grace: float
    ) -> bool:
        snap = self._read(job_id, now, quarantined)
        if snap is None:
            return False
        with self._isolated(job_id, now, quarantined):
            if snap.state.is_terminal:
                self.store.forget([job_id])
                return False
            first_kwargs = self._resend_kwargs(snap, now, backlogged, grace)
            if first_kwargs is None:
                return False
            log.warning("job %s: its message is overdue; re-sending it", job_id)
            self.resend(snap, first_kwargs)
            return True
        return False  # quarantined

    @contextlib.contextmanager
    def _isolated(self, job_id: str, now: float, quarantined: list[str]) -> Iterator[None]:
        """One job's trouble stays that job's: an unreadable field or chain quarantines
        it, and the pass goes on with the next job. Redis errors end the pass."""
        try:
            yield
        except redis.RedisError:
            raise
        except Exception as exc:  # a sweep pass must not stop at one bad record
            log.exception("sweeper: job %s cannot be handled (%r); quarantined", job_id, exc)
            self.store.quarantine(job_id, now)
            self.store.count("records_quarantined")
            quarantined.append(job_id)

    def _review_quarantine(self, now: float) -> int:
        """Try a few quarantined records again: a newer version may have written them."""
        readmitted = 0
        for job_id in self.store.quarantined(QUARANTINE_REVIEW):
            try:
                snap = self.store.snapshot(job_id)
            except JobNotFoundError:
                self.store.drop_quarantined(job_id)
                continue
            except UnreadableRecordError:
                self.store.requeue_quarantined(job_id, now)
                continue
            self.store.readmit(snap, now)
            log.warning("sweeper: job %s can be read again; back in the indexes", job_id)
            readmitted += 1
        return readmitted

    def bring_back(self, job_id: str) -> bool:
        """Re-send a job whose message this worker knows is lost (its run could not reach
        Redis, or could not publish what came next): at once, without the grace period.
        False when there is nothing to send yet (a chain step whose predecessor has not
        completed: the predecessor's message brings it)."""
        try:
            snap = self.store.snapshot(job_id)
        except (JobNotFoundError, UnreadableRecordError):
            return True  # nothing left to bring back
        record = snap.state
        if record.is_terminal:
            return True
        if snap.field("awaiting_image") == "1":
            previous = self._previous_step(record)
            if previous is None or previous.status is not JobStatus.COMPLETED:
                return False
            first_kwargs: dict[str, Any] = {"previous_output": previous.outputs[0]}
        elif record.status is JobStatus.QUEUED:
            first_kwargs = {}
        else:
            first_kwargs = {"poll_seq": int(snap.number("poll_seq"))}
        log.warning("job %s: its message was lost with the broker; sending it again", job_id)
        self.resend(snap, first_kwargs)
        return True

    def _backlogged_queues(self) -> set[str]:
        """Queues with messages waiting, read once per pass (one round trip)."""
        pipe = self.store.client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
        return {queue for queue, length in zip(QUEUES, pipe.execute(), strict=True) if length}

    def _resend_kwargs(
        self, snap: JobSnapshot, now: float, backlogged: set[str], grace: float
    ) -> dict[str, Any] | None:
        """What the re-sent message needs, or None when the job should wait longer."""
        record = snap.state
        if record.status is not JobStatus.QUEUED:
            return {"poll_seq": int(snap.number("poll_seq"))}
        if snap.field("awaiting_image") == "1":
            return self._waiting_step_kwargs(record, now, grace)
        if record.priority.queue in backlogged:
            return None  # a backlog: its message is most likely still waiting in line
        return {}

    def _waiting_step_kwargs(
        self, record: JobState, now: float, grace: float
    ) -> dict[str, Any] | None:
        """A chain step waiting for the step before: re-send it only once that step
        completed more than a grace period ago (its own message was then lost)."""
        previous = self._previous_step(record)
        if previous is None or previous.status is not JobStatus.COMPLETED or not previous.outputs:
            return None
        if (previous.completed_at or now) > now - grace:
            return None
        return {"previous_output": previous.outputs[0]}

    def _previous_step(self, record: JobState) -> JobState | None:
        if not record.chain_id or not record.step or record.step < 2:
            return None
        try:
            chain = self.store.get_chain(record.chain_id)
            return self.store.snapshot(chain.step_job_ids[record.step - 2]).state
        except (JobNotFoundError, UnreadableRecordError):
            return None

    def catch_up_soon(self) -> None:
        """Ask for a catch-up pass ``CATCH_UP_SETTLE`` seconds from now (the worker's broker
        connection was lost and is back)."""
        self._catch_up.set()

    def catch_up(self) -> int:
        """After a broker outage: re-send jobs overdue by more than ``CATCH_UP_SETTLE``
        seconds, not the usual grace. A message can vanish with the connection in a way
        no worker can see (Redis popped it for a BRPOP whose reply never arrived), and the
        held messages the workers put back at reconnect have run by now, so what is still
        overdue has most likely lost its message; a re-send of one that was only late is
        harmless. One worker does it per outage (a short lock)."""
        lock_ms = int(CATCH_UP_SETTLE * 2000)
        if not self.store.client.set(CATCH_UP_LOCK_KEY, "1", nx=True, px=lock_ms):
            return 0
        resent = self._resend_overdue(self.clock(), [], CATCH_UP_SETTLE)
        self.store.count_many(
            {counter_field("sweeper_catch_ups"): 1, counter_field("sweeper_resent"): resent}
        )
        log.warning("sweeper: caught up after a broker outage; re-sent %d job(s)", resent)
        return resent

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``interval`` seconds while this worker holds the lock; catch up
        after a broker outage when asked."""
        lock_ms = int(self.interval * 1000)
        next_sweep = time.monotonic() + self.interval
        catch_up_at: float | None = None
        while not stop.is_set():
            if self._catch_up.is_set():
                self._catch_up.clear()
                catch_up_at = time.monotonic() + CATCH_UP_SETTLE
            wake = min(next_sweep, catch_up_at or next_sweep)
            if self._catch_up.wait(max(0.0, wake - time.monotonic())) or stop.is_set():
                continue
            try:
                if catch_up_at is not None and time.monotonic() >= catch_up_at:
                    self.catch_up()
                    catch_up_at = None  # only once it ran: a failed one is tried again
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.interval
                    if self.store.client.set(SWEEPER_LOCK_KEY, "1", nx=True, px=lock_ms):
                        report = self.sweep_once()
                        if report != SweepReport():
                            log.warning("sweeper: %s", report)
            except Exception:  # a sweep must never kill its thread
                log.exception("sweeper pass failed; trying again next interval")


def _each(pages: Iterable[list[str]]) -> Iterator[str]:
    for page in pages:
        yield from page
