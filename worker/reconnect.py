"""Keep jobs moving through a Redis restart or outage: what a worker held goes back
to its queue when the worker reconnects, not after the visibility timeout.

The problem (celery 5.6 with kombu's Redis transport; ``shared/notes/redis-restart.md``).
A worker holds messages it has taken from Redis and not acked, above all countdown
messages waiting in the event loop's timer. kombu keeps each one in Redis's
``unacked`` hash until it is acked. When the consumer loses the broker, celery clears
the timer (``asynloop`` resets the hub on a loop error) and closes the dead channel.
Closing it tries to put the channel's unacked messages back
(``QoS.restore_unacked_once``). That needs the Redis that has just gone away. Unless
Redis answers again within redis-py's few retries, it fails, and kombu never tries
again. The messages stay in ``unacked`` until the visibility timeout (600 s by
default) moves them back, so polling jobs stop for ten minutes. A message can also
be lost on the way in: kombu pops it (BRPOP) and then records it in ``unacked``. If
Redis goes away in between, the message is in no queue and not in ``unacked``. Only
the worker's memory has it, and kombu drops it.

The consumer bootstep ``RestoreHeldMessages`` handles both. Each time the consumer
starts, it wraps the append of its channel's kombu QoS. A message kombu popped but
could not record is then kept. The QoS's own ``_delivered`` still lists the delivery
tags the failed close-time restore did not put back. When the consumer starts again
after a reconnect, the step puts back through the new channel everything the lost
channel held:

- a recorded message with kombu's ``QoS.restore_by_tag``: one WATCH/MULTI
  transaction that moves it from ``unacked`` to the front of its queue. A tag that
  was acked or restored meanwhile is no longer in ``unacked``, so restoring it again
  changes nothing;
- a message that was never recorded, from memory, in the same kind of transaction.
  If the record did reach Redis after all, the stored copy is the one moved.

Delivery tags are unique per delivery, so other workers' messages are not touched.
Tags of tasks still running are skipped, because they ack through the old channel
when they finish. A message whose task is queued in the pool but has not started yet
looks the same as a dropped one and is restored too. That can run it twice, which is
safe: every step is a compare-and-set on the job record, and a stale poll is dropped
as a duplicate.

Not covered here: a run that was publishing its job's next message (a poll
countdown, an error retry) when Redis went away. celery then rejects the run's own
message, and the job waits for the sweeper's grace period.

Cost per message: one extra Python call around kombu's append, which itself makes a
Redis round trip. A reconnect costs one transaction per held message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.worker import state
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)

TASKS_STEP = "celery.worker.consumer.tasks:Tasks"

#: Called after each reconnect, once held messages are back (the sweeper's catch-up).
_after_reconnect: list[Callable[[], None]] = []


def after_reconnect(callback: Callable[[], None]) -> None:
    """Call ``callback`` (quickly: it runs on the consumer's thread) after each reconnect."""
    _after_reconnect.append(callback)


class RestoreHeldMessages(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: at each reconnect, put back what the lost channel held."""

    requires = (TASKS_STEP,)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._current: HeldMessages | None = None
        #: What lost channels held and is not all put back yet, oldest first.
        self._lost: list[HeldMessages] = []

    def start(self, parent: Any) -> None:
        # Also when an earlier attempt to put back what was held failed (``_lost``).
        reconnected = bool(self._lost)
        if self._current is not None:  # a restart: the channel we consumed from is gone
            reconnected = True
            self._lost.append(self._current)
            self._current = None
        qos = parent.task_consumer.channel.qos
        if not hasattr(qos, "restore_by_tag"):  # not kombu's Redis transport
            return
        current = HeldMessages(qos)
        while self._lost:
            try:
                recorded, unrecorded = self._lost[0].put_back(qos)
            except parent.connection_errors + parent.channel_errors:
                # The consumer reconnects and the next start tries again; what is
                # already back in its queue is then a no-op.
                raise
            except Exception:
                # A failure here must not stop the worker: the visibility timeout remains.
                log.exception("could not put back held messages after reconnect")
                recorded = unrecorded = 0
            self._lost.pop(0)
            if recorded or unrecorded:
                log.warning(
                    "restored %d held message(s) after reconnect "
                    "(%d of them popped but never recorded as unacked)",
                    recorded + unrecorded,
                    unrecorded,
                )
        self._current = current
        if reconnected:
            for callback in _after_reconnect:
                try:
                    callback()
                except Exception:
                    log.exception("an after-reconnect callback failed")


class HeldMessages:
    """What one channel's consumer took from Redis and has not acked: kombu's QoS
    bookkeeping, plus the messages it popped but could not record as unacked."""

    def __init__(self, qos: Any) -> None:
        self.qos = qos
        self.unrecorded: dict[str, Any] = {}
        record = qos.append

        def append(message: Any, delivery_tag: str) -> None:
            try:
                record(message, delivery_tag)
            except BaseException:
                # Popped from its queue, maybe not in `unacked`: keep it to put back.
                self.unrecorded[delivery_tag] = message
                raise

        qos.append = append

    def put_back(self, qos: Any) -> tuple[int, int]:
        """Return through ``qos`` (a live channel's) every held message nobody will ack;
        returns how many were recorded as unacked and how many were not."""
        acked = set(self.qos._dirty)
        running = {request.message.delivery_tag for request in tuple(state.active_requests)}
        recorded = [tag for tag in list(self.qos._delivered) if tag not in acked | running]
        unrecorded = list(self.unrecorded.items())
        if not recorded and not unrecorded:
            return 0, 0
        with qos.channel.conn_or_acquire() as client:
            for tag in recorded:
                qos.restore_by_tag(tag, client=client)
                # Ours no more: a later attempt must not send it again.
                self.qos._delivered.pop(tag, None)
            for tag, message in unrecorded:
                _put_back_unrecorded(qos, client, tag, message)
                del self.unrecorded[tag]
        return len(recorded), len(unrecorded)


def _put_back_unrecorded(qos: Any, client: Any, tag: str, message: Any) -> None:
    """Push a message kombu popped but may not have recorded; atomic like restore_by_tag."""
    channel = qos.channel

    def transaction(pipe: Any) -> None:
        stored = pipe.hget(qos.unacked_key, tag)
        pipe.multi()
        qos._remove_from_indices(tag, pipe)
        if stored:  # the record reached Redis before the connection died
            payload, exchange, routing_key = loads(bytes_to_str(stored))  # type: ignore[no-untyped-call]
        else:
            info = message.delivery_info
            payload, exchange, routing_key = message._raw, info["exchange"], info["routing_key"]
        channel._do_restore_message(payload, exchange, routing_key, pipe)

    client.transaction(transaction, qos.unacked_key)
