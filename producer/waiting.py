"""Waiting for jobs to end: Redis pub/sub first, a slow re-read as the safety net.

Order matters. The waiter subscribes to ``JOB_EVENTS_CHANNEL`` and waits for
Redis to confirm the subscription *before* it reads any record. The worker
publishes in the same atomic step that makes a record terminal, so any job
that ends after the read is announced to an already-listening waiter, and any
job that ended before it is seen by the read. Pub/sub is fire-and-forget (a
dropped connection loses messages), so the records are also re-read every
``reread_interval`` seconds: a lost message can delay a waiter, never hang it.
The records are looked at once more when the timeout passes, so a job that
ended at the last moment is not reported as a timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import redis

from producer.errors import WaitTimeoutError
from worker.constants import JOB_EVENTS_CHANNEL

T = TypeVar("T")

#: How often records are re-read when no event arrives.
DEFAULT_REREAD_INTERVAL = 2.0


class Check(Generic[T]):
    """One look at the records: ``done`` is the answer once the wait is over, else None;
    ``watching`` are the job ids whose events are worth another look."""

    def __init__(self, done: T | None, watching: set[str]) -> None:
        self.done = done
        self.watching = watching


def wait_for(
    client: redis.Redis,
    look: Callable[[], Check[T]],
    *,
    timeout: float,
    reread_interval: float = DEFAULT_REREAD_INTERVAL,
    describe: Callable[[set[str]], str] = lambda ids: f"{len(ids)} job(s) not finished",
) -> T:
    """Call ``look`` until it returns an answer; raise ``WaitTimeoutError`` after ``timeout``.

    ``look`` runs once after subscribing, again on every event for a watched job,
    and at least every ``reread_interval`` seconds.
    """
    give_up_at = time.monotonic() + timeout
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    try:
        pubsub.subscribe(JOB_EVENTS_CHANNEL)
        _await_subscription(pubsub, give_up_at)
        while True:
            check = look()
            if check.done is not None:
                return check.done
            if time.monotonic() >= give_up_at:
                raise WaitTimeoutError(
                    f"timed out after {timeout:g}s: {describe(check.watching)}",
                    pending=sorted(check.watching),
                )
            _sleep_until_news(pubsub, check.watching, give_up_at, reread_interval)
    finally:
        pubsub.close()


def _await_subscription(pubsub: redis.client.PubSub, give_up_at: float) -> None:
    """Block until Redis has registered the subscription (its confirmation arrived)."""
    while True:
        left = give_up_at - time.monotonic()
        message = pubsub.get_message(timeout=max(left, 0.0))
        if message is not None and message["type"] == "subscribe":
            return
        if left <= 0:
            raise WaitTimeoutError("Redis did not confirm the subscription in time", pending=[])


def _sleep_until_news(
    pubsub: redis.client.PubSub,
    watching: set[str],
    give_up_at: float,
    reread_interval: float,
) -> None:
    """Return when a watched job announces itself, or it is time to re-read anyway
    (the re-read interval passed, or the wait's last look is due)."""
    wake_at = min(give_up_at, time.monotonic() + reread_interval)
    while True:
        now = time.monotonic()
        if now >= wake_at:
            return
        message = pubsub.get_message(timeout=wake_at - now)
        if (
            message is not None
            and message["type"] == "message"
            and _announced_job(message["data"]) in watching
        ):
            return


def _announced_job(data: object) -> str | None:
    try:
        payload = json.loads(data)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    job_id = payload.get("job_id") if isinstance(payload, dict) else None
    return job_id if isinstance(job_id, str) else None
