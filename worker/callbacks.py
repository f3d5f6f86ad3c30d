"""Callbacks to the backend: POST a job's (or chain's) final record to its ``callback_url``.

How a callback travels:

1. The store's terminal transition puts ``job:<id>`` (``chain:<id>`` for a step of a
   chain that has a callback) in the outbox ``CALLBACKS_KEY``, in the step that ends the
   job, so no ending is ever left without its callback; whoever ended the job (a run, the
   sweeper, ``JobClient.cancel``) then sends ``deliver_callback`` for it at once.
2. ``CallbackDelivery.deliver`` claims the delivery (a token and a lease on the record,
   compare-and-set: of two copies of the message, one POSTs, the other steps aside; once
   delivered, every later copy finds it done), builds the final record, signs it
   (``worker.callback_signing``) and POSTs it.
3. A 2xx answer ends it (``callback_delivered_at``). Anything else (another status, a
   redirect, no answer) is an attempt that failed: the attempts and the last status are
   on the record, and the next attempt is due after an exponential backoff. Short waits
   are a Celery countdown; waits longer than any countdown may be (the visibility timeout)
   are left in the outbox, whose score says when, and the sweeper sends the message when
   it is due. No worker slot is held while waiting either way.
4. Attempts stop after ``WAVEQUEUE_CALLBACK_RETRY_FOR`` (``callback_failed_at``).

So a target that is down for a while receives each final record once it is back, once:
only a worker dying between the target's 2xx and the record of it (or a 2xx that never
reached the worker) makes a second POST of the same ``webhook-id``, which the receiver
drops. A chain's callback is sent when the chain ends: its last step completed, or a step
failed, timed out or was cancelled.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from worker.callback_signing import signed_headers
from worker.chain_status import derive_chain_status
from worker.clock import Clock
from worker.constants import CALLBACK_SEND_GRACE
from worker.errors import ConfigError, JobNotFoundError
from worker.settings import Settings
from worker.store import CALLBACK_FIELDS, ClaimVerdict, JobStore, counter_field

log = logging.getLogger(__name__)

#: Fields of a record that describe its callback's delivery: not part of what is sent
#: (the body of every attempt of one delivery is the same).
DELIVERY_FIELDS = frozenset(CALLBACK_FIELDS) - {"callback_url"}
#: A countdown retry whose message is lost is sent by the sweeper this long after it was due.
LOST_RETRY_GRACE = CALLBACK_SEND_GRACE
USER_AGENT = "wavequeue-callbacks/1"


@dataclass(frozen=True)
class FinalRecord:
    """One ending's callback: its message id (``webhook-id``), event type and body."""

    message_id: str
    type: str
    ended_at: float | None
    data: dict[str, Any]

    def body(self) -> bytes:
        """The JSON POSTed: ``{"type", "timestamp", "data"}`` (Standard Webhooks' shape),
        ``data`` being the record as ``wavequeue status --json`` prints it."""
        stamp = datetime.fromtimestamp(self.ended_at or 0, UTC).isoformat()
        envelope = {"type": self.type, "timestamp": stamp, "data": self.data}
        return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def retry_delay(attempts: int, settings: Settings, rng: random.Random) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: the base delay
    doubled for each attempt after the first, capped at the max delay, less up to 20%
    (jitter, so that deliveries to a target that comes back do not all arrive at once)."""
    delay = settings.callback_retry_base_delay * 2.0 ** max(0, attempts - 1)
    jitter: float = rng.uniform(0.8, 1.0)
    return float(min(delay, settings.callback_retry_max_delay) * jitter)


def safe_target(url: str) -> str:
    """The URL for logs: scheme and host only (its path or query may carry a token)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


class CallbackDelivery:
    """Makes one attempt at one outbox member; safe to call from many copies at once."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        http: requests.Session,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.http = http
        self.clock: Clock = clock or store.clock
        self.rng = rng or random.Random()

    def deliver(self, member: str) -> float | None:
        """Attempt the delivery of ``member`` if it is due and nobody else is at it.
        Returns the countdown of the next attempt when it is to be a Celery retry, else
        None (delivered, given up, nothing to do, or the sweeper sends the next one)."""
        token = uuid.uuid4().hex
        now = self.clock()
        claim = self.store.claim_callback(
            member, token, now=now, lease=self.settings.callback_lease
        )
        if claim.verdict is not ClaimVerdict.CLAIMED:
            log.debug("callback %s: %s", member, claim.verdict.value)
            if claim.verdict in (ClaimVerdict.DONE, ClaimVerdict.BUSY):
                # A copy of a delivery message (a redelivery, a sweeper's resend): dropped.
                self.store.count("callback_copies_ignored")
            return None
        record = self._final_record(member)
        if record is None or record.message_id == claim.delivered_ending:
            # A chain still running (a step completed), or an ending already delivered.
            self.store.finish_callback(
                member,
                token,
                outcome="skip",
                count=[counter_field("callback_copies_ignored")] if record is not None else (),
            )
            return None
        attempts, first_at = claim.attempts_made(record.message_id)
        status = self._post(member, claim.url, record)
        now = self.clock()
        attempts += status is not None
        first_at = first_at if first_at is not None else now
        kind = member.partition(":")[0]
        if status is not None and 200 <= status < 300:
            self.store.finish_callback(
                member,
                token,
                outcome="delivered",
                ending=record.message_id,
                status=status,
                now=now,
                count=[counter_field("callbacks_delivered", kind=kind)],
            )
            log.info("callback %s delivered (%d attempt(s))", member, attempts)
            return None
        failed_attempt = [counter_field("callback_attempts_failed", status=str(status or 0))]
        delay = retry_delay(max(attempts, 1), self.settings, self.rng)
        if status is not None and now + delay - first_at > self.settings.callback_retry_for:
            self.store.finish_callback(
                member,
                token,
                outcome="failed",
                ending=record.message_id,
                status=status,
                now=now,
                count=[*failed_attempt, counter_field("callbacks_failed", kind=kind)],
            )
            log.error(
                "callback %s to %s given up after %d attempt(s) over %.0fs (last status %s)",
                member,
                safe_target(claim.url),
                attempts,
                now - first_at,
                status,
            )
            return None
        by_countdown = delay <= self.settings.longest_countdown
        due = now + delay
        self.store.finish_callback(
            member,
            token,
            outcome="retry",
            ending=record.message_id,
            status=status,
            now=now,
            due_at=due,
            # A countdown's message is on its way: the sweeper steps in only if it is lost.
            send_at=due + LOST_RETRY_GRACE if by_countdown else due,
            count=failed_attempt if status is not None else (),
        )
        log.warning(
            "callback %s to %s: attempt %d answered %s; next in %.0fs",
            member,
            safe_target(claim.url),
            attempts,
            status if status else "nothing",
            delay,
        )
        return round(delay, 3) if by_countdown else None

    def _post(self, member: str, url: str, record: FinalRecord) -> int | None:
        """POST the signed record: the HTTP status, 0 when no answer came, None when
        nothing could be sent (no secret configured: the next attempt may have one)."""
        try:
            key = self.settings.require_callback_secret()
        except ConfigError as exc:
            log.error("callback %s not sent: %s", member, exc)
            return None
        body = record.body()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signed_headers(key, record.message_id, body, time.time()),
        }
        timeout = self.settings.callback_timeout
        try:
            response = self.http.post(
                url, data=body, headers=headers, timeout=(timeout, timeout), allow_redirects=False
            )
        except requests.RequestException as exc:
            # The exception's text names the URL (and so any token in it): its type only.
            reason = type(exc).__name__
            log.warning("callback %s: no answer from %s (%s)", member, safe_target(url), reason)
            return 0
        response.close()
        return response.status_code

    def _final_record(self, member: str) -> FinalRecord | None:
        kind, _, record_id = member.partition(":")
        if kind == "job":
            try:
                job = self.store.get(record_id)
            except JobNotFoundError:
                return None
            data = job.model_dump(mode="json", exclude=set(DELIVERY_FIELDS))
            return FinalRecord(f"job_{job.id}", f"job.{job.status.value}", job.completed_at, data)
        return self._chain_record(record_id)

    def _chain_record(self, chain_id: str) -> FinalRecord | None:
        """The chain's final record, or None while it runs (or once a step expired)."""
        try:
            snapshot = self.store.get_chain(chain_id)
        except JobNotFoundError:
            return None
        records = [r for r in self.store.get_many(snapshot.step_job_ids) if r is not None]
        if len(records) < len(snapshot.step_job_ids):
            return None
        chain = derive_chain_status(snapshot, records)
        if chain.ending_job_id is None:
            return None
        data = {k: v for k, v in chain.to_json().items() if k not in DELIVERY_FIELDS}
        ended = [r.completed_at for r in records if r.completed_at is not None]
        return FinalRecord(
            f"chain_{chain.id}_{chain.state.value}_{chain.ending_job_id}",
            f"chain.{chain.state.value}",
            max(ended, default=None),
            data,
        )


def members_for(job_id: str, callback_url: str | None, chain_id: str | None) -> list[str]:
    """The outbox members a job's ending may have added (the store says which it did)."""
    members = [f"job:{job_id}"] if callback_url else []
    if chain_id:
        members.append(f"chain:{chain_id}")
    return members
