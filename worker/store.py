"""Job and chain records in Redis: the one owner of the job status machine.

A job is one hash at ``wq:job:<id>``. Public fields mirror ``JobRecord``;
bookkeeping fields (below) belong to the worker and never leave this module's
callers. Every change to a job record goes through ``transition()``: one Lua
script that, atomically,

1. refuses any write to a record that is gone, already terminal (nothing revives
   a finished job: a late POST or GET answer is dropped, never applied), or in a
   status this version does not know (a newer version wrote it);
2. checks the caller's expected field values (compare-and-set), so two copies of
   the same Celery message can never both submit or both complete a job;
3. refuses a status change the machine below does not allow;
4. applies the updates and increments; a move into a terminal status also sets
   the record's TTL, frees its in-flight slot, drops it from the indexes and
   publishes it on ``JOB_EVENTS_CHANNEL``, and the counters that must count each
   job once (completed, failed, timed out) are bumped in the same step.

The status machine (``MOVES``) is defined here, once, and baked into the Lua::

    queued ──> submitting ──> submitted ──> processing ──> completed
       │            │            │  ^            │
       │            │            └──┼── submitting (a new prediction after
       │            │               │   WaveSpeed failed the old one, 5xxx)
       └────────────┴────────────┴──┴────────────┴──> failed | timed_out

Bookkeeping fields:

- ``submit_token``: who holds the right to send the submit POST ("" = nobody).
- ``submit_lease_until``: when that right expires (a crashed submitter's lease
  expires, and the next copy of the message applies the ambiguous-submit policy).
- ``poll_seq`` / ``poll_due_at``: the sequence number and due time of the one poll
  message that should be alive; older copies drop themselves.
- ``error_retries``: error retries used so far (polls do not count).
- ``next_run_at``: when the job's next message is due (mirrored in ``NEXT_RUN_KEY``).
- ``last_write``: a random id of the last applied ``transition``, so that redis-py retrying
  a script call whose reply was lost (a connection dropped mid-call) finds it applied
  instead of failing its own compare-and-set.
- ``awaiting_image``: "1" while a chain step waits for the step before's output as its
  ``image`` ("0" once filled in at run time).
"""

from __future__ import annotations

import json
import math
import statistics
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import pydantic
import redis

from worker.clock import Clock, RedisClock
from worker.constants import (
    CHAIN_KEY,
    COUNTERS_KEY,
    DEADLINES_KEY,
    HISTOGRAM_KEY,
    IDEMPOTENCY_KEY,
    IN_FLIGHT_KEY,
    JOB_EVENTS_CHANNEL,
    JOB_KEY,
    LATENCY_KEY,
    LATENCY_SAMPLE_SIZE,
    NEXT_RUN_KEY,
    QUARANTINE_KEY,
)
from worker.errors import JobNotFoundError, UnreadableRecordError
from worker.models import TERMINAL_STATUSES, JobRecord, JobStatus
from worker.redis_connection import redis_client
from worker.settings import Settings

#: Record fields stored as JSON (everything else is a plain string; "" means unset).
_JSON_FIELDS = frozenset({"input", "outputs", "has_nsfw_contents", "error", "metadata"})

_S = JobStatus
#: Which status may follow which. A status may also stay as it is (bookkeeping only).
MOVES: Mapping[JobStatus, frozenset[JobStatus]] = {
    _S.QUEUED: frozenset({_S.SUBMITTING, _S.FAILED, _S.TIMED_OUT}),
    _S.SUBMITTING: frozenset({_S.SUBMITTED, _S.FAILED, _S.TIMED_OUT}),
    _S.SUBMITTED: frozenset({_S.PROCESSING, _S.COMPLETED, _S.FAILED, _S.TIMED_OUT, _S.SUBMITTING}),
    _S.PROCESSING: frozenset({_S.COMPLETED, _S.FAILED, _S.TIMED_OUT, _S.SUBMITTING}),
    **{status: frozenset() for status in TERMINAL_STATUSES},
}


def is_legal_move(current: JobStatus, new: JobStatus) -> bool:
    """What the Lua enforces, for callers that want to ask first."""
    return not current.is_terminal and (new == current or new in MOVES[current])


def _lua_table(moves: Mapping[JobStatus, frozenset[JobStatus]]) -> str:
    """``MOVES`` as a Lua table literal, baked into the script (one SHA, no per-call JSON)."""
    rows = []
    for status, targets in moves.items():
        inner = ",".join(f"{target.value}=true" for target in sorted(targets))
        rows.append(f"{status.value}={{{inner}}}")
    return "{" + ",".join(rows) + "}"


_TRANSITION_LUA = """
-- KEYS: 1 job, 2 in-flight set, 3 deadlines, 4 next-run, 5 counters
-- ARGV: 1 expect, 2 updates, 3 increments, 4 counters always, 5 counters if applied,
--       6 terminal TTL, 7 event channel, 8 job id, 9 write id
local MOVES = __MOVES__
local TERMINAL = __TERMINAL__
-- The same call again (redis-py retried it after its reply was lost): it was applied.
if redis.call('HGET', KEYS[1], 'last_write') == ARGV[9] then return 1 end
-- HTTP calls that happened are counted whatever this write decides.
for _, field in ipairs(cjson.decode(ARGV[4])) do redis.call('HINCRBY', KEYS[5], field, 1) end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if TERMINAL[status] then return -2 end
local allowed = MOVES[status]
if allowed == nil then return -4 end
for field, want in pairs(cjson.decode(ARGV[1])) do
  local have = redis.call('HGET', KEYS[1], field)
  if not have then have = '' end
  if type(want) == 'table' then
    local matched = false
    for _, candidate in ipairs(want) do
      if have == candidate then matched = true end
    end
    if not matched then return 0 end
  elseif have ~= want then
    return 0
  end
end
local updates = cjson.decode(ARGV[2])
local new = updates['status']
if new and new ~= status and not allowed[new] then return -3 end
local flat = {'last_write', ARGV[9]}
for field, value in pairs(updates) do
  table.insert(flat, field)
  table.insert(flat, value)
end
redis.call('HSET', KEYS[1], unpack(flat))
for field, amount in pairs(cjson.decode(ARGV[3])) do
  redis.call('HINCRBY', KEYS[1], field, amount)
end
if new and TERMINAL[new] then
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('ZREM', KEYS[2], ARGV[8])
  redis.call('ZREM', KEYS[3], ARGV[8])
  redis.call('ZREM', KEYS[4], ARGV[8])
  redis.call('PUBLISH', ARGV[7], cjson.encode({job_id = ARGV[8], status = new}))
else
  if updates['next_run_at'] then redis.call('ZADD', KEYS[4], updates['next_run_at'], ARGV[8]) end
  if updates['deadline_at'] then redis.call('ZADD', KEYS[3], updates['deadline_at'], ARGV[8]) end
end
for _, field in ipairs(cjson.decode(ARGV[5])) do redis.call('HINCRBY', KEYS[5], field, 1) end
return 1
""".replace("__MOVES__", _lua_table(MOVES)).replace(
    "__TERMINAL__", "{" + ",".join(f"{s.value}=true" for s in TERMINAL_STATUSES) + "}"
)


class Moved(IntEnum):
    """What ``transition()`` did. Truthy only when the change was applied."""

    APPLIED = 1
    #: An expected field did not match: another copy got there first.
    MISMATCH = 0
    #: No such record (never created, expired, or deleted).
    MISSING = -1
    #: The record is terminal: nothing changes a finished job.
    FINISHED = -2
    #: The status machine does not allow this status change.
    ILLEGAL = -3
    #: The record's status is unknown to this version (a newer one wrote it).
    UNKNOWN_STATUS = -4

    def __bool__(self) -> bool:
        return self is Moved.APPLIED


_CREATE_LUA = """
-- KEYS[1] job, KEYS[2] deadlines, KEYS[3] idempotency key (only when ARGV[4] == '1'),
-- KEYS[4] next-run index; ARGV: id, deadline, idempotency TTL, use-key flag, created_at, fields
if ARGV[4] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return existing end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
-- Indexed for the sweeper from the start: a first message can be lost too.
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
return ARGV[1]
"""


def counter_field(name: str, **labels: str) -> str:
    """``name|k=v|k=v`` with labels sorted, so one counter is always one field."""
    return "|".join([name, *(f"{k}={v}" for k, v in sorted(labels.items()))])


def parse_counter_field(field: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    name, *pairs = field.split("|")
    labels = tuple(tuple(pair.split("=", 1)) for pair in pairs)
    return name, labels  # type: ignore[return-value]


def _encode(value: Any, field: str) -> str:
    if field in _JSON_FIELDS:
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def encode_record(record: JobRecord) -> dict[str, str]:
    """A JobRecord as hash fields."""
    dumped = record.model_dump(mode="json")
    return {field: _encode(value, field) for field, value in dumped.items()}


def decode_record(raw: Mapping[str, str], job_id: str = "?") -> JobRecord:
    """Hash fields (bookkeeping ignored) back to a JobRecord; ``UnreadableRecordError``
    when they do not make one (corrupt JSON, a missing field, an unknown status)."""
    values: dict[str, Any] = {}
    try:
        for field in JobRecord.model_fields:
            text = raw.get(field, "")
            if text == "":
                continue
            values[field] = json.loads(text) if field in _JSON_FIELDS else text
        return JobRecord.model_validate(values)
    except (ValueError, pydantic.ValidationError) as exc:
        # pydantic's ValidationError is a ValueError too; name the fields, never the values.
        if isinstance(exc, pydantic.ValidationError):
            fields = sorted({".".join(str(p) for p in e["loc"]) or "record" for e in exc.errors()})
            reason = "bad or missing field(s): " + ", ".join(fields)
        else:
            reason = "a JSON field does not parse"
        raise UnreadableRecordError(raw.get("id") or job_id, reason) from None


@dataclass(frozen=True)
class JobSnapshot:
    """A record as read once: the public view plus the worker's bookkeeping."""

    record: JobRecord
    raw: dict[str, str]

    def field(self, name: str) -> str:
        return self.raw.get(name, "")

    def number(self, name: str) -> float:
        text = self.raw.get(name, "")
        return float(text) if text else 0.0


@dataclass(frozen=True)
class ChainSnapshot:
    id: str
    step_job_ids: list[str]
    created_at: float
    metadata: dict[str, Any]
    #: Job ids that earlier attempts of a step used before ``retry_chain`` replaced them.
    replaced_job_ids: list[str]


class JobStore:
    """Reads and atomically changes job and chain records; the only writer of them."""

    def __init__(self, client: redis.Redis, *, record_ttl: int, clock: Clock | None = None) -> None:
        self.client = client
        self.record_ttl = record_ttl
        #: The one "now" for records, leases and deadlines on every host (see worker.clock).
        self.clock: Clock = clock or RedisClock(client)
        self._transition = client.register_script(_TRANSITION_LUA)
        self._create = client.register_script(_CREATE_LUA)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock | None = None) -> JobStore:
        """The store on the Redis that ``settings`` name (plain, TLS or Sentinel), with
        bounded retries while Redis is away (``worker.redis_connection``)."""
        return cls(redis_client(settings), record_ttl=settings.record_ttl, clock=clock)

    @classmethod
    def from_url(cls, url: str, *, record_ttl: int, clock: Clock | None = None) -> JobStore:
        """The store on a plain ``redis://`` URL with default settings (tests use it)."""
        return cls.from_settings(Settings(redis_url=url, record_ttl=record_ttl), clock=clock)

    # creating -----------------------------------------------------------------

    def create_job(
        self,
        record: JobRecord,
        *,
        idempotency_key: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> tuple[str, bool]:
        """Write a new record. Returns ``(job_id, created)``; with an idempotency key
        already used, returns the first job's id and ``created=False``."""
        fields = {**encode_record(record), **(extra or {})}
        flat = [item for pair in fields.items() for item in pair]
        use_key = idempotency_key is not None
        keys = [
            JOB_KEY.format(job_id=record.id),
            DEADLINES_KEY,
            IDEMPOTENCY_KEY.format(key=idempotency_key) if use_key else DEADLINES_KEY,
            NEXT_RUN_KEY,
        ]
        args = [
            record.id,
            record.deadline_at,
            self.record_ttl,
            "1" if use_key else "0",
            record.created_at,
            *flat,
        ]
        job_id = str(self._create(keys=keys, args=args))
        return job_id, job_id == record.id

    def create_chain(
        self, chain_id: str, step_job_ids: list[str], *, metadata: Mapping[str, Any]
    ) -> None:
        self.client.hset(
            CHAIN_KEY.format(chain_id=chain_id),
            mapping={
                "id": chain_id,
                "steps": json.dumps(step_job_ids),
                "replaced": "[]",
                "created_at": repr(self.clock()),
                "metadata": json.dumps(dict(metadata)),
            },
        )

    # reading ------------------------------------------------------------------

    def snapshot(self, job_id: str) -> JobSnapshot:
        """The record and its bookkeeping. ``JobNotFoundError`` if there is none,
        ``UnreadableRecordError`` if this version cannot decode it."""
        raw: dict[str, str] = self.client.hgetall(JOB_KEY.format(job_id=job_id))  # type: ignore[assignment]
        if not raw:
            raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
        return JobSnapshot(record=decode_record(raw, job_id), raw=raw)

    def get(self, job_id: str) -> JobRecord:
        return self.snapshot(job_id).record

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord | None]:
        """Records in one round trip; ``None`` where a record is missing."""
        pipe = self.client.pipeline(transaction=False)
        ids = list(job_ids)
        for job_id in ids:
            pipe.hgetall(JOB_KEY.format(job_id=job_id))
        raws = pipe.execute()
        return [
            decode_record(raw, job_id) if raw else None
            for job_id, raw in zip(ids, raws, strict=True)
        ]

    def get_chain(self, chain_id: str) -> ChainSnapshot:
        raw: dict[str, str] = self.client.hgetall(CHAIN_KEY.format(chain_id=chain_id))  # type: ignore[assignment]
        if not raw:
            raise JobNotFoundError(f"no chain {chain_id!r} (never created, or expired)")
        return ChainSnapshot(
            id=raw["id"],
            step_job_ids=json.loads(raw["steps"]),
            created_at=float(raw["created_at"]),
            metadata=json.loads(raw.get("metadata") or "{}"),
            replaced_job_ids=json.loads(raw.get("replaced") or "[]"),
        )

    # changing -----------------------------------------------------------------

    def transition(
        self,
        job_id: str,
        *,
        expect: Mapping[str, str | list[str]] | None = None,
        updates: Mapping[str, Any] | None = None,
        increments: Mapping[str, int] | None = None,
        count: Sequence[str] = (),
        count_if_applied: Sequence[str] = (),
        write_id: str | None = None,
    ) -> Moved:
        """Apply ``updates``/``increments`` iff the record is live, every ``expect`` field
        matches and the status change (if any) is one ``MOVES`` allows.

        ``count`` are global counter fields (``counter_field``) bumped whatever happens
        (an HTTP call that was made); ``count_if_applied`` only when the change is applied,
        in the same atomic step (so a job's ending is counted exactly once). An update of
        ``next_run_at``/``deadline_at`` also updates the sweeper's indexes; a move into a
        terminal status expires, unindexes and announces the record.
        """
        fields = {k: _encode(v, k) for k, v in (updates or {}).items()}
        result = self._transition(
            keys=[
                JOB_KEY.format(job_id=job_id),
                IN_FLIGHT_KEY,
                DEADLINES_KEY,
                NEXT_RUN_KEY,
                COUNTERS_KEY,
            ],
            args=[
                json.dumps(dict(expect or {})),
                json.dumps(fields),
                json.dumps(dict(increments or {})),
                json.dumps(list(count)),
                json.dumps(list(count_if_applied)),
                self.record_ttl,
                JOB_EVENTS_CHANNEL,
                job_id,
                # Makes the call idempotent: a retry after a lost reply finds it applied.
                write_id or uuid.uuid4().hex[:16],
            ],
        )
        return Moved(int(result))

    def count(self, name: str, **labels: str) -> None:
        """Bump the global counter ``name{labels}`` (never a record's field)."""
        self.client.hincrby(COUNTERS_KEY, counter_field(name, **labels), 1)

    def count_many(self, amounts: Mapping[str, int]) -> None:
        """Bump several global counters (``counter_field`` names) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for field, amount in amounts.items():
            if amount:
                pipe.hincrby(COUNTERS_KEY, field, amount)
        pipe.execute()

    def counters(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
        """Every global counter as ``{(name, ((label, value), ...)): count}``."""
        raw: dict[str, str] = self.client.hgetall(COUNTERS_KEY)  # type: ignore[assignment]
        return {parse_counter_field(field): int(value) for field, value in raw.items()}

    def observe(self, name: str, value: float, buckets: Iterable[float]) -> None:
        """Add ``value`` to histogram ``name`` (non-cumulative buckets; the exporter sums)."""
        self.observe_many({name: (value, buckets)})

    def observe_many(self, observations: Mapping[str, tuple[float, Iterable[float]]]) -> None:
        """Add one value to each named histogram, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for name, (value, buckets) in observations.items():
            bound = next((b for b in buckets if value <= b), math.inf)
            key = HISTOGRAM_KEY.format(name=name)
            pipe.hincrby(key, f"le={bound!r}", 1)
            pipe.hincrbyfloat(key, "sum", value)
            pipe.hincrby(key, "count", 1)
        pipe.execute()

    # sweeping -----------------------------------------------------------------

    def mark_due_many(self, job_ids: Iterable[str], due: float) -> None:
        """Push index entries to ``due`` (the sweeper: "looked at, not again before")."""
        mapping = dict.fromkeys(job_ids, due)
        if mapping:
            # XX: never re-index a job that ended meanwhile.
            self.client.zadd(NEXT_RUN_KEY, mapping, xx=True)

    def overdue(self, before: float, limit: int) -> list[str]:
        """Jobs whose next message was due before ``before``."""
        ids: list[str] = self.client.zrangebyscore(NEXT_RUN_KEY, "-inf", before, 0, limit)  # type: ignore[assignment]
        return ids

    def past_deadline(self, now: float, limit: int) -> list[str]:
        """Live jobs whose deadline has passed."""
        ids: list[str] = self.client.zrangebyscore(DEADLINES_KEY, "-inf", now, 0, limit)  # type: ignore[assignment]
        return ids

    def forget(self, job_ids: Iterable[str]) -> None:
        """Drop index entries of jobs whose record is gone or terminal: a record that
        expired while live (a chain step that never ran) must not fill every batch."""
        ids = list(job_ids)
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(DEADLINES_KEY, *ids)
            pipe.zrem(NEXT_RUN_KEY, *ids)
            pipe.execute()

    def quarantine(self, job_id: str, now: float) -> None:
        """Move an unreadable record's index entries aside (``QUARANTINE_KEY``), so it
        neither stops the sweeper nor fills its batches; ``readmit`` brings it back."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(QUARANTINE_KEY, {job_id: now})
        pipe.zrem(DEADLINES_KEY, job_id)
        pipe.zrem(NEXT_RUN_KEY, job_id)
        pipe.execute()

    def quarantined(self, limit: int) -> list[str]:
        """The longest-quarantined job ids first."""
        ids: list[str] = self.client.zrange(QUARANTINE_KEY, 0, limit - 1)  # type: ignore[assignment]
        return ids

    def requeue_quarantined(self, job_id: str, now: float) -> None:
        """Look at a quarantined record again later (still unreadable)."""
        self.client.zadd(QUARANTINE_KEY, {job_id: now}, xx=True)

    def readmit(self, snap: JobSnapshot, now: float) -> None:
        """A quarantined record this version can read (written by an older or newer
        version): index it again, or just drop it from quarantine if it ended."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(QUARANTINE_KEY, snap.record.id)
        if not snap.record.is_terminal:
            pipe.zadd(DEADLINES_KEY, {snap.record.id: snap.record.deadline_at})
            pipe.zadd(NEXT_RUN_KEY, {snap.record.id: now})
        pipe.execute()

    def drop_quarantined(self, job_id: str) -> None:
        self.client.zrem(QUARANTINE_KEY, job_id)

    # chains -------------------------------------------------------------------

    def replace_chain_step(self, chain_id: str, step: int, new_job_id: str) -> None:
        """Point a chain's ``step`` (1-based, like ``JobRecord.step``) at a fresh job
        (``retry_chain``), keeping the old id in ``replaced``."""
        snapshot = self.get_chain(chain_id)
        steps = list(snapshot.step_job_ids)
        replaced = [*snapshot.replaced_job_ids, steps[step - 1]]
        steps[step - 1] = new_job_id
        self.client.hset(
            CHAIN_KEY.format(chain_id=chain_id),
            mapping={"steps": json.dumps(steps), "replaced": json.dumps(replaced)},
        )

    def keep_alive(self, chain_id: str, job_ids: Iterable[str], ttl: int) -> None:
        """Give a chain record and its steps (which may never run, after a failure) a TTL.
        A step that ends gets the terminal TTL instead."""
        pipe = self.client.pipeline(transaction=False)
        pipe.expire(CHAIN_KEY.format(chain_id=chain_id), ttl)
        for job_id in job_ids:
            pipe.expire(JOB_KEY.format(job_id=job_id), ttl)
        pipe.execute()

    # latency ------------------------------------------------------------------

    def record_latency(self, model: str, seconds: float) -> None:
        key = LATENCY_KEY.format(model=model)
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(key, repr(seconds))
        pipe.ltrim(key, 0, LATENCY_SAMPLE_SIZE - 1)
        pipe.execute()

    def expected_latency(self, model: str) -> float | None:
        """Median of the model's recent inference times, or None with no history."""
        samples: list[str] = self.client.lrange(LATENCY_KEY.format(model=model), 0, -1)  # type: ignore[assignment]
        if not samples:
            return None
        return statistics.median(float(s) for s in samples)
