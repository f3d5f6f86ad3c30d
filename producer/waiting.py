"""Waiting for jobs to end: each job's pub/sub channel first, a slow re-read as the safety net.

Order matters. The waiter subscribes to the channels of the jobs it waits for
(``JOB_EVENT_CHANNEL``, one per job, all on one connection) and waits for Redis to
confirm before it reads any record. The worker publishes in the same atomic step that
makes a record terminal, so any job that ends after the read is announced to an
already-listening waiter, and any job that ended before it is seen by the read.

An announcement names its job, so the waiter reads only the records announced (all
that arrived together, in one round trip), never everything it waits for: waiting on
N jobs costs O(N) reads, not O(N²). A waiter hears only its own jobs; nobody else's
ending reaches it.

Pub/sub is fire-and-forget (a dropped connection loses messages), so everything still
pending is re-read every ``reread_interval`` seconds, however many announcements came
in between: a lost message can delay a waiter, never hang it. Everything is looked at
once more when the timeout passes, so a job that ended at the last moment is not
reported as a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Generic, TypeVar

import redis

from producer.errors import WaitTimeoutError
from worker.constants import JOB_EVENT_CHANNEL

T = TypeVar("T")

#: How often records are re-read when no event arrives.
DEFAULT_REREAD_INTERVAL = 2.0
#: Channels per SUBSCRIBE command (a wait on many jobs sends several).
SUBSCRIBE_CHUNK = 1000
#: Announcements read off the connection at most before the records are looked at.
DRAIN_LIMIT = 10_000

_CHANNEL_PREFIX = JOB_EVENT_CHANNEL.format(job_id="")


class Check(Generic[T]):
    """One look at the records: ``done`` is the answer once the wait is over, else None;
    ``watching`` are the job ids whose announcements are worth another look (new ones are
    subscribed to after a full look); ``look_again_at`` (``time.monotonic()``) asks for
    another look by then even without news (an empty set of announcements)."""

    def __init__(
        self, done: T | None, watching: Collection[str], look_again_at: float | None = None
    ) -> None:
        self.done = done
        self.watching = watching
        self.look_again_at = look_again_at


#: ``look(None)`` looks at everything; ``look(ids)`` only at the jobs announced.
Look = Callable[[set[str] | None], Check[T]]


def wait_for(
    client: redis.Redis,
    look: Look[T],
    *,
    watch: Iterable[str],
    timeout: float,
    reread_interval: float = DEFAULT_REREAD_INTERVAL,
    describe: Callable[[Collection[str]], str] = lambda ids: f"{len(ids)} job(s) not finished",
) -> T:
    """Call ``look`` until it returns an answer; raise ``WaitTimeoutError`` after ``timeout``.

    ``watch`` are the jobs to subscribe to first. ``look(None)`` runs once subscribed,
    every ``reread_interval`` seconds, and when the timeout passes; ``look(ids)`` runs
    when watched jobs announce their end.
    """
    give_up_at = time.monotonic() + timeout
    listener = _Listener(client.pubsub())  # type: ignore[no-untyped-call]
    try:
        listener.subscribe(watch, give_up_at)
        check = look(None)
        reread_at = time.monotonic() + reread_interval
        looked_at_everything = True
        while True:
            if check.done is not None:
                return check.done
            if looked_at_everything:
                unheard = [job_id for job_id in check.watching if job_id not in listener.subscribed]
                if unheard:
                    # New jobs to watch (a chain step replaced): listen first, then look.
                    listener.subscribe(unheard, give_up_at)
                    check = look(None)
                    continue
            now = time.monotonic()
            if now >= give_up_at:
                if not looked_at_everything:
                    check, looked_at_everything = look(None), True
                    continue
                raise WaitTimeoutError(
                    f"timed out after {timeout:g}s: {describe(check.watching)}",
                    pending=sorted(check.watching),
                )
            wake_at = min(give_up_at, reread_at, check.look_again_at or give_up_at)
            announced = listener.announcements(check.watching, wake_at)
            if announced or (
                check.look_again_at is not None and time.monotonic() >= check.look_again_at
            ):
                check, looked_at_everything = look(announced), False
            else:
                check, looked_at_everything = look(None), True
                reread_at = time.monotonic() + reread_interval
    finally:
        listener.close()


class _Listener:
    """One pub/sub connection subscribed to the channels of the jobs waited for."""

    def __init__(self, pubsub: redis.client.PubSub) -> None:
        self.pubsub = pubsub
        self.subscribed: set[str] = set()
        #: Announcements read while waiting for a subscription to be confirmed.
        self._early: set[str] = set()

    def subscribe(self, job_ids: Iterable[str], give_up_at: float) -> None:
        """Subscribe to these jobs' channels; return once Redis confirmed the last one
        (it handles commands in order: every channel before it is registered too)."""
        new = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in self.subscribed]
        if not new:
            return
        for start in range(0, len(new), SUBSCRIBE_CHUNK):
            self.pubsub.subscribe(
                *(_channel(job_id) for job_id in new[start : start + SUBSCRIBE_CHUNK])
            )
        last = _channel(new[-1])
        while True:
            left = give_up_at - time.monotonic()
            message = self.pubsub.get_message(timeout=max(left, 0.0))
            if message is not None:
                if message["type"] == "subscribe" and _text(message["channel"]) == last:
                    break
                self._note(message, self._early)
            elif left <= 0:
                raise WaitTimeoutError("Redis did not confirm the subscription in time", pending=[])
        self.subscribed.update(new)

    def announcements(self, watching: Collection[str], wake_at: float) -> set[str]:
        """The watched jobs that announced their end, once at least one did (with every
        announcement already arrived: a burst is read in one go); empty at ``wake_at``."""
        heard = {job_id for job_id in self._early if job_id in watching}
        self._early.clear()
        while not heard:
            left = wake_at - time.monotonic()
            if left <= 0:
                return heard
            message = self.pubsub.get_message(timeout=left)
            if message is not None:
                self._note(message, heard, watching)
        for _ in range(DRAIN_LIMIT):
            message = self.pubsub.get_message(timeout=0)
            if message is None:
                break
            self._note(message, heard, watching)
        return heard

    @staticmethod
    def _note(
        message: dict[str, object], into: set[str], watching: Collection[str] | None = None
    ) -> None:
        if message["type"] != "message":
            return
        channel = _text(message["channel"])
        if channel.startswith(_CHANNEL_PREFIX):
            job_id = channel[len(_CHANNEL_PREFIX) :]
            if watching is None or job_id in watching:
                into.add(job_id)

    def close(self) -> None:
        self.pubsub.close()


def _channel(job_id: str) -> str:
    return JOB_EVENT_CHANNEL.format(job_id=job_id)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
