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
   publishes it on the job's ``JOB_EVENT_CHANNEL``, and the counters that must count each
   job once (completed, failed, timed out) are bumped in the same step, as is the
   day's aggregate (``DAILY_KEY``: jobs by status and model, images delivered,
   inference milliseconds), which is kept long after the record expires.

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
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import pydantic
import redis
from redis.commands.core import Script

from worker.clock import Clock, RedisClock
from worker.constants import (
    CHAIN_KEY,
    COUNTERS_KEY,
    DAILY_KEY,
    DAILY_TTL,
    DEADLINES_KEY,
    DUE_POLLS_KEY,
    HISTOGRAM_KEY,
    IDEMPOTENCY_KEY,
    IN_FLIGHT_KEY,
    JOB_EVENT_CHANNEL,
    JOB_KEY,
    LATENCY_KEY,
    LATENCY_SAMPLE_SIZE,
    LIVE_KEY,
    NEXT_RUN_KEY,
    PARKED_KEY,
    QUARANTINE_KEY,
    REQUEST_KEY,
    WAKING_KEY,
)
from worker.errors import JobNotFoundError, UnreadableRecordError
from worker.models import TERMINAL_STATUSES, JobRecord, JobState, JobStatus
from worker.redis_connection import redis_client
from worker.settings import Settings

#: State fields stored as JSON (everything else is a plain string; absent means unset).
_JSON_FIELDS = frozenset({"outputs", "has_nsfw_contents", "error"})
#: Bookkeeping fields the worker reads as numbers.
_NUMERIC_BOOKKEEPING = (
    "poll_seq",
    "poll_due_at",
    "next_run_at",
    "submit_lease_until",
    "error_retries",
    "inflight_waits",
)
#: Values a new record does not store: absent reads back as the default.
_DEFAULTS = {"priority": "normal", "images": "1", "attempts": "0", "polls": "0"}
#: JobRecord fields that are not the job's state (``encode_state``).
_NOT_STATE: set[str] = {"id", "input", "metadata"}

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
-- KEYS: 1 job, 2 its request, 3 in-flight set, 4 deadlines, 5 next-run, 6 counters,
--       7 live counts, 8 today's aggregate, 9 parked jobs, 10 waking jobs, 11 due polls,
--       12.. keys of the side effects
-- ARGV: 1 expect, 2 updates, 3 increments, 4 counters always, 5 counters if applied,
--       6 terminal TTL, 7 event channel, 8 job id, 9 write id, 10 new request ('' = keep),
--       11 side effects if applied: [[op, key index, a, b], ...], 12 aggregate TTL,
--       13 when the deferred poll is due ('' = its message is sent by the caller)
local MOVES = __MOVES__
local TERMINAL = __TERMINAL__
-- One read of every field this call looks at (the idempotency mark, the status, the
-- model for the live counts, the expected fields).
local names = {'last_write', 'status', 'model'}
local expected = {}
for field, want in pairs(cjson.decode(ARGV[1])) do
  table.insert(names, field)
  table.insert(expected, want)
end
local got = redis.call('HMGET', KEYS[1], unpack(names))
-- The same call again (redis-py retried it after its reply was lost): it was applied.
if got[1] == ARGV[9] then return 1 end
-- HTTP calls that happened are counted whatever this write decides.
for _, field in ipairs(cjson.decode(ARGV[4])) do redis.call('HINCRBY', KEYS[6], field, 1) end
local status = got[2]
if not status then return -1 end
if TERMINAL[status] then return -2 end
local allowed = MOVES[status]
if allowed == nil then return -4 end
for i, want in ipairs(expected) do
  local have = got[3 + i]
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
local empty = {}
for field, value in pairs(updates) do
  -- An empty value is an unset field: not stored, so the hash stays small.
  if value == '' then table.insert(empty, field) else
    table.insert(flat, field)
    table.insert(flat, value)
  end
end
redis.call('HSET', KEYS[1], unpack(flat))
if #empty > 0 then redis.call('HDEL', KEYS[1], unpack(empty)) end
for field, amount in pairs(cjson.decode(ARGV[3])) do
  redis.call('HINCRBY', KEYS[1], field, amount)
end
if ARGV[10] ~= '' then redis.call('SET', KEYS[2], ARGV[10], 'KEEPTTL') end
if new and new ~= status then
  local model = got[3] or ''
  redis.call('HINCRBY', KEYS[7], status .. '|' .. model, -1)
  if not TERMINAL[new] then redis.call('HINCRBY', KEYS[7], new .. '|' .. model, 1) else
    -- The day's aggregate outlives the record; its TTL is set when a field is new.
    if redis.call('HINCRBY', KEYS[8], new .. '|' .. model, 1) == 1 then
      redis.call('EXPIRE', KEYS[8], ARGV[12])
    end
    local ms = tonumber(updates['inference_ms'])
    if ms then redis.call('HINCRBY', KEYS[8], 'inference_ms|' .. model, math.floor(ms + 0.5)) end
    local outputs = (updates['outputs'] or '') ~= '' and #cjson.decode(updates['outputs']) or 0
    if outputs > 0 then redis.call('HINCRBY', KEYS[8], 'outputs|' .. model, outputs) end
  end
end
if new and TERMINAL[new] then
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('ZREM', KEYS[3], ARGV[8])
  redis.call('ZREM', KEYS[4], ARGV[8])
  redis.call('ZREM', KEYS[5], ARGV[8])
  -- An ended job waits for no in-flight slot: a wake must not be spent on it.
  redis.call('ZREM', KEYS[9], ARGV[8])
  redis.call('ZREM', KEYS[10], ARGV[8])
  redis.call('ZREM', KEYS[11], ARGV[8])
  redis.call('PUBLISH', ARGV[7], cjson.encode({job_id = ARGV[8], status = new}))
else
  if updates['next_run_at'] then redis.call('ZADD', KEYS[5], updates['next_run_at'], ARGV[8]) end
  if updates['deadline_at'] then redis.call('ZADD', KEYS[4], updates['deadline_at'], ARGV[8]) end
  -- No message for this poll: it waits in the due set, not in the next-run index (there
  -- is no message to lose); the dispatcher's claim moves it back when it sends it.
  if ARGV[13] ~= '' then
    redis.call('ZADD', KEYS[11], ARGV[13], ARGV[8])
    redis.call('ZREM', KEYS[5], ARGV[8])
  end
end
for _, field in ipairs(cjson.decode(ARGV[5])) do redis.call('HINCRBY', KEYS[6], field, 1) end
for _, e in ipairs(cjson.decode(ARGV[11])) do
  local key = KEYS[e[2]]
  if e[1] == 'hincrby' then redis.call('HINCRBY', key, e[3], e[4])
  elseif e[1] == 'hincrbyfloat' then redis.call('HINCRBYFLOAT', key, e[3], e[4])
  elseif e[1] == 'sample' then
    redis.call('LPUSH', key, e[3])
    redis.call('LTRIM', key, 0, e[4] - 1)
  end
end
return 1
""".replace("__MOVES__", _lua_table(MOVES)).replace(
    "__TERMINAL__", "{" + ",".join(f"{s.value}=true" for s in TERMINAL_STATUSES) + "}"
)


_CLAIM_DUE_POLLS_LUA = """
-- KEYS: 1 due polls, 2 next-run index. ARGV: 1 take those due by, 2 how many at most, 3 now.
-- Takes the polls due out of the set (each taken by exactly one caller, which sends its
-- message) into the next-run index, due now: if the message is never sent (the caller
-- died), the sweeper finds the job overdue there. Answers them, then the next due time
-- ('' = none left).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('ZADD', KEYS[2], ARGV[3], job)
end
local following = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
table.insert(due, following[2] or '')
return due
"""


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
-- KEYS: 1 job, 2 deadlines, 3 idempotency key (only when ARGV[4] == '1'), 4 next-run index,
--       5 the job's request, 6 live counts, 7 a list to push ARGV[8] on (only when not '')
-- ARGV: 1 id, 2 deadline, 3 idempotency TTL, 4 use-key flag, 5 created_at, 6 request JSON,
--       7 live-count field, 8 message ('' = none), 9.. hash fields
if ARGV[4] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return existing end
end
-- The same call again (redis-py retried it after its reply was lost): it was applied.
if redis.call('EXISTS', KEYS[1]) == 1 then return ARGV[1] end
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('SET', KEYS[5], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
-- Indexed for the sweeper from the start: a first message can be lost too.
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('HINCRBY', KEYS[6], ARGV[7], 1)
-- The first message goes out with the record, never without it.
if ARGV[8] ~= '' then redis.call('LPUSH', KEYS[7], ARGV[8]) end
return ARGV[1]
"""


def utc_day(seconds: float) -> str:
    """The UTC date (``YYYY-MM-DD``) of an epoch time: the name of that day's aggregate."""
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


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


def encode_state(record: JobRecord) -> dict[str, str]:
    """A new record's hash fields: its state, without unset or default values (every field
    small, so Redis keeps the hash in its compact encoding). ``images`` comes from the
    request, so that the limiter never needs the request."""
    # The key holds the id; input and metadata are the request, stored apart.
    dumped = record.model_dump(mode="json", exclude=_NOT_STATE)
    dumped["images"] = int(record.input.get("num_images", 1))
    return {
        field: text
        for field, value in dumped.items()
        # Unset values are not stored (a new record has many: skip encoding them).
        if value is not None and value != []
        and (text := _encode(value, field)) not in ("", "[]", "null")
        and _DEFAULTS.get(field) != text
    }  # fmt: skip


def _unreadable(job_id: str, exc: ValueError) -> UnreadableRecordError:
    # pydantic's ValidationError is a ValueError too; name the fields, never the values.
    if isinstance(exc, pydantic.ValidationError):
        fields = sorted({".".join(str(p) for p in e["loc"]) or "record" for e in exc.errors()})
        return UnreadableRecordError(job_id, "bad or missing field(s): " + ", ".join(fields))
    return UnreadableRecordError(job_id, "a JSON field does not parse")


def decode_state(raw: Mapping[str, str], job_id: str) -> JobState:
    """Hash fields (bookkeeping ignored) back to a JobState; ``UnreadableRecordError``
    when they do not make one (corrupt JSON, a missing field, an unknown status)."""
    values: dict[str, Any] = {"id": job_id}
    try:
        for field in JobState.model_fields:
            text = raw.get(field, "")
            if text == "":
                continue
            values[field] = json.loads(text) if field in _JSON_FIELDS else text
        return JobState.model_validate(values)
    except ValueError as exc:
        raise _unreadable(raw.get("id") or job_id, exc) from None


def decode_record(raw: Mapping[str, str], request: str | None, job_id: str) -> JobRecord:
    """A job's hash and request back to the public JobRecord."""
    state = decode_state(raw, job_id)
    try:
        body = json.loads(request) if request else {}
        return JobRecord.model_validate(
            {
                **state.model_dump(),
                "input": body.get("input", {}),
                "metadata": body.get("metadata", {}),
            }
        )
    except ValueError as exc:
        raise _unreadable(state.id, exc) from None


@dataclass(frozen=True)
class JobSnapshot:
    """A job's hash as read once: its state plus the worker's bookkeeping (not its
    request: ``JobStore.request`` reads that, for the one run that needs it)."""

    state: JobState
    raw: dict[str, str]

    def field(self, name: str) -> str:
        return self.raw.get(name, "")

    def number(self, name: str) -> float:
        text = self.raw.get(name, "")
        try:
            return float(text) if text else 0.0
        except ValueError:
            raise UnreadableRecordError(self.state.id, f"{name} is not a number") from None


@dataclass(frozen=True)
class Request:
    """A job's request: the body sent to WaveSpeed, and the producer's metadata."""

    input: dict[str, Any]
    metadata: dict[str, Any]

    def with_input(self, new_input: Mapping[str, Any]) -> Request:
        return Request(dict(new_input), self.metadata)

    def to_json(self) -> str:
        return json.dumps({"input": self.input, "metadata": self.metadata}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, job_id: str) -> Request:
        try:
            body = json.loads(text)
            return cls(dict(body["input"]), dict(body.get("metadata") or {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise UnreadableRecordError(job_id, f"its request does not parse ({exc})") from None


@dataclass(frozen=True)
class Effect:
    """A write ``transition()`` makes only when it applies its change: ``hincrby`` (field,
    amount), ``hincrbyfloat`` (field, amount) or ``sample`` (value, list length) on ``key``."""

    op: str
    key: str
    a: Any
    b: Any


@dataclass(frozen=True)
class Outgoing:
    """A message to push on a list (a Celery queue) in the same atomic step that creates a
    record, only if it creates it: the store does not read it, it only places it."""

    list_key: str
    payload: str


@dataclass(frozen=True)
class NewJob:
    """A record to create, with its idempotency key, extra bookkeeping fields, and the
    message that starts it (None: the caller sends one itself)."""

    record: JobRecord
    idempotency_key: str | None = None
    extra: Mapping[str, str] | None = None
    message: Outgoing | None = None


@dataclass(frozen=True)
class DayTotals:
    """One UTC day's finished jobs (``DAILY_KEY``): ``by_model[model][measure]``, where a
    measure is a terminal status (jobs), ``outputs`` (images) or ``inference_ms`` (summed
    WaveSpeed inference time, whole milliseconds)."""

    day: str
    by_model: dict[str, dict[str, int]]


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
        self._claim_due_polls = client.register_script(_CLAIM_DUE_POLLS_LUA)
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
        return self.create(NewJob(record, idempotency_key, extra))

    def create(self, job: NewJob) -> tuple[str, bool]:
        """``create_job`` for a ``NewJob`` (and its message, if any): one round trip."""
        keys, args = self._create_call(job)
        job_id = str(self._create(keys=keys, args=args))
        return job_id, job_id == job.record.id

    def create_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        """Write many new records in one round trip (each atomically, as ``create_job``)."""
        calls = [(self._create, *self._create_call(job)) for job in jobs]
        return [
            (str(job_id), str(job_id) == job.record.id)
            for job, job_id in zip(jobs, self._scripted_pipeline(calls), strict=True)
        ]

    def _scripted_pipeline(
        self,
        calls: Sequence[tuple[Script, list[str], list[Any]]],
        get_after: str | None = None,
    ) -> list[Any]:
        """Scripts (then a GET of ``get_after``) in one pipeline, each script called by its SHA.

        redis-py asks ``SCRIPT EXISTS`` before every pipeline that holds a ``Script``
        (one more round trip per call); by SHA it is one. A Redis without the script
        (a restart, a failover) answers NOSCRIPT for every call of the pipeline, so
        none ran: the scripts are loaded and the pipeline sent once more."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if get_after is not None:
                pipe.get(get_after)
            try:
                return list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                for script in {id(c[0]): c[0] for c in calls}.values():
                    self.client.script_load(script.script)
        raise AssertionError("unreachable")

    def _create_call(self, job: NewJob) -> tuple[list[str], list[Any]]:
        record = job.record
        fields = {**encode_state(record), **(job.extra or {})}
        use_key = job.idempotency_key is not None
        keys = [
            JOB_KEY.format(job_id=record.id),
            DEADLINES_KEY,
            IDEMPOTENCY_KEY.format(key=job.idempotency_key) if use_key else DEADLINES_KEY,
            NEXT_RUN_KEY,
            REQUEST_KEY.format(job_id=record.id),
            LIVE_KEY,
            job.message.list_key if job.message is not None else DEADLINES_KEY,
        ]
        args = [
            record.id,
            record.deadline_at,
            self.record_ttl,
            "1" if use_key else "0",
            record.created_at,
            Request(record.input, record.metadata).to_json(),
            f"{record.status.value}|{record.model}",
            job.message.payload if job.message is not None else "",
            *(item for pair in fields.items() for item in pair),
        ]
        return keys, args

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
        """The job's state and bookkeeping (one HGETALL; not its request).
        ``JobNotFoundError`` if there is none, ``UnreadableRecordError`` if this version
        cannot decode it."""
        raw: dict[str, str] = self.client.hgetall(JOB_KEY.format(job_id=job_id))  # type: ignore[assignment]
        if not raw:
            raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
        snap = JobSnapshot(state=decode_state(raw, job_id), raw=raw)
        for name in _NUMERIC_BOOKKEEPING:
            snap.number(name)  # a corrupt one is UnreadableRecordError now, not mid-decision
        return snap

    def request(self, job_id: str) -> Request:
        """The job's request (what is sent to WaveSpeed, and the producer's metadata)."""
        text = self.client.get(REQUEST_KEY.format(job_id=job_id))
        if text is None:
            raise JobNotFoundError(f"no request for job {job_id!r} (expired, or never created)")
        return Request.from_json(str(text), job_id)

    def get(self, job_id: str) -> JobRecord:
        record = self.get_many([job_id])[0]
        if record is None:
            raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
        return record

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord | None]:
        """Records (state and request) in one round trip; ``None`` where one is missing."""
        pipe = self.client.pipeline(transaction=False)
        ids = list(job_ids)
        for job_id in ids:
            pipe.hgetall(JOB_KEY.format(job_id=job_id))
            pipe.get(REQUEST_KEY.format(job_id=job_id))
        replies = pipe.execute()
        return [
            decode_record(raw, request, job_id) if raw else None
            for job_id, raw, request in zip(ids, replies[::2], replies[1::2], strict=True)
        ]

    def get_states(self, job_ids: Iterable[str]) -> list[JobState | None]:
        """States only (no requests), in one round trip; for waiting and status checks."""
        pipe = self.client.pipeline(transaction=False)
        ids = list(job_ids)
        for job_id in ids:
            pipe.hgetall(JOB_KEY.format(job_id=job_id))
        return [
            decode_state(raw, job_id) if raw else None
            for job_id, raw in zip(ids, pipe.execute(), strict=True)
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

    def daily_totals(self, days: Sequence[str]) -> list[DayTotals]:
        """The aggregates of ``days`` (UTC dates, ``utc_day``), in one round trip; a day
        with nothing finished (or older than ``DAILY_TTL``) has an empty ``by_model``."""
        pipe = self.client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(DAILY_KEY.format(day=day))
        totals = []
        for day, raw in zip(days, pipe.execute(), strict=True):
            by_model: dict[str, dict[str, int]] = {}
            for field, value in raw.items():
                measure, _, model = str(field).partition("|")
                by_model.setdefault(model, {})[measure] = int(value)
            totals.append(DayTotals(day, by_model))
        return totals

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
        request: Request | None = None,
        effects: Sequence[Effect] = (),
        write_id: str | None = None,
        defer_until: float | None = None,
    ) -> Moved:
        """Apply ``updates``/``increments`` iff the record is live, every ``expect`` field
        matches and the status change (if any) is one ``MOVES`` allows.

        ``count`` are global counter fields (``counter_field``) bumped whatever happens
        (an HTTP call that was made); ``count_if_applied`` only when the change is applied,
        in the same atomic step (so a job's ending is counted exactly once), like
        ``effects`` (histogram and latency-sample writes). ``request`` replaces the job's
        request body (a chain step's input image, filled in at run time). An update of
        ``next_run_at``/``deadline_at`` also updates the sweeper's indexes; a move into a
        terminal status expires, unindexes and announces the record. ``defer_until``: the
        caller sends no message for the job's next poll; it goes into ``DUE_POLLS_KEY`` with
        this score, for a dispatcher (``claim_due_polls``) to send when due.
        """
        keys, args = self._transition_call(
            job_id,
            expect,
            updates,
            increments,
            count=count,
            count_if_applied=count_if_applied,
            request=request,
            effects=effects,
            write_id=write_id,
            defer_until=defer_until,
        )
        return Moved(int(self._transition(keys=keys, args=args)))

    def transition_and_read_request(
        self,
        job_id: str,
        *,
        expect: Mapping[str, str | list[str]],
        updates: Mapping[str, Any],
        increments: Mapping[str, int] | None = None,
    ) -> tuple[Moved, Request | None]:
        """``transition()`` and the job's request in one round trip (the submit claim,
        which needs the body it is about to POST). The request is None when not applied."""
        keys, args = self._transition_call(job_id, expect, updates, increments)
        result, text = self._scripted_pipeline(
            [(self._transition, keys, args)], get_after=REQUEST_KEY.format(job_id=job_id)
        )
        moved = Moved(int(result))
        if not moved or text is None:
            return moved, None
        return moved, Request.from_json(str(text), job_id)

    def _transition_call(
        self,
        job_id: str,
        expect: Mapping[str, str | list[str]] | None,
        updates: Mapping[str, Any] | None,
        increments: Mapping[str, int] | None,
        *,
        count: Sequence[str] = (),
        count_if_applied: Sequence[str] = (),
        request: Request | None = None,
        effects: Sequence[Effect] = (),
        write_id: str | None = None,
        defer_until: float | None = None,
    ) -> tuple[list[str], list[Any]]:
        fields = {k: _encode(v, k) for k, v in (updates or {}).items()}
        keys = [
            JOB_KEY.format(job_id=job_id),
            REQUEST_KEY.format(job_id=job_id),
            IN_FLIGHT_KEY,
            DEADLINES_KEY,
            NEXT_RUN_KEY,
            COUNTERS_KEY,
            LIVE_KEY,
            DAILY_KEY.format(day=utc_day(self.clock())),
            PARKED_KEY,
            WAKING_KEY,
            DUE_POLLS_KEY,
        ]
        ops = []
        for effect in effects:
            keys.append(effect.key)
            ops.append([effect.op, len(keys), effect.a, effect.b])
        args = [
            json.dumps(dict(expect or {})),
            json.dumps(fields),
            json.dumps(dict(increments or {})),
            json.dumps(list(count)),
            json.dumps(list(count_if_applied)),
            self.record_ttl,
            JOB_EVENT_CHANNEL.format(job_id=job_id),
            job_id,
            # Makes the call idempotent: a retry after a lost reply finds it applied.
            write_id or uuid.uuid4().hex[:16],
            request.to_json() if request is not None else "",
            json.dumps(ops),
            DAILY_TTL,
            repr(defer_until) if defer_until is not None else "",
        ]
        return keys, args

    @staticmethod
    def observation(name: str, value: float, buckets: Iterable[float]) -> list[Effect]:
        """The writes that add ``value`` to histogram ``name``, for ``transition(effects=)``."""
        bound = next((b for b in buckets if value <= b), math.inf)
        key = HISTOGRAM_KEY.format(name=name)
        return [
            Effect("hincrby", key, f"le={bound!r}", 1),
            Effect("hincrbyfloat", key, "sum", value),
            Effect("hincrby", key, "count", 1),
        ]

    @staticmethod
    def latency_sample(model: str, seconds: float) -> Effect:
        """The write that records a completion's inference time, for ``transition(effects=)``."""
        return Effect("sample", LATENCY_KEY.format(model=model), repr(seconds), LATENCY_SAMPLE_SIZE)

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

    def overdue(
        self, before: float, limit: int, start: str = "-inf", skip: int = 0
    ) -> list[tuple[str, float]]:
        """Jobs whose next message was due before ``before``, the longest overdue first, with
        when it was due; from ``start`` on (a ZRANGEBYSCORE bound, ``"12.5"``), past the
        first ``skip`` of those, so a pass can page through them by score."""
        return self._due(NEXT_RUN_KEY, start, before, skip, limit)

    def past_deadline(
        self, now: float, limit: int, start: str = "-inf", skip: int = 0
    ) -> list[tuple[str, float]]:
        """Live jobs whose deadline has passed, the earliest first, with their deadline;
        paged like ``overdue``."""
        return self._due(DEADLINES_KEY, start, now, skip, limit)

    def _due(
        self, index: str, start: str, end: float, skip: int, limit: int
    ) -> list[tuple[str, float]]:
        entries: list[tuple[str, float]] = self.client.zrangebyscore(  # type: ignore[assignment]
            index, start, end, skip, limit, withscores=True
        )
        return entries

    def claim_due_polls(
        self, now: float, limit: int, *, due_by: float | None = None
    ) -> tuple[list[str], float | None]:
        """Deferred polls due by ``now`` (or ``due_by``; at most ``limit``), taken: the caller
        must send their messages (if it cannot, the sweeper finds them overdue in the
        next-run index, where they are put, due ``now``). Also when the next one left is
        due (None: none left)."""
        upto = now if due_by is None else due_by
        reply = self._claim_due_polls(
            keys=[DUE_POLLS_KEY, NEXT_RUN_KEY], args=[repr(upto), limit, repr(now)]
        )
        *job_ids, following = [str(item) for item in reply]
        return job_ids, float(following) if following else None

    def forget(self, job_ids: Iterable[str]) -> None:
        """Drop index entries of jobs whose record is gone or terminal: a record that
        expired while live (a chain step that never ran) must not fill every batch."""
        ids = list(job_ids)
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(DEADLINES_KEY, *ids)
            pipe.zrem(NEXT_RUN_KEY, *ids)
            pipe.zrem(DUE_POLLS_KEY, *ids)
            pipe.execute()

    def quarantine(self, job_id: str, now: float) -> None:
        """Move an unreadable record's index entries aside (``QUARANTINE_KEY``), so it
        neither stops the sweeper nor fills its batches; ``readmit`` brings it back."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(QUARANTINE_KEY, {job_id: now})
        pipe.zrem(DEADLINES_KEY, job_id)
        pipe.zrem(NEXT_RUN_KEY, job_id)
        pipe.zrem(DUE_POLLS_KEY, job_id)
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
        pipe.zrem(QUARANTINE_KEY, snap.state.id)
        if not snap.state.is_terminal:
            pipe.zadd(DEADLINES_KEY, {snap.state.id: snap.state.deadline_at})
            pipe.zadd(NEXT_RUN_KEY, {snap.state.id: now})
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
            pipe.expire(REQUEST_KEY.format(job_id=job_id), ttl)
        pipe.execute()

    # latency ------------------------------------------------------------------

    def latency_samples(self, model: str) -> list[float]:
        """The model's recent inference times (seconds), newest first."""
        samples: list[str] = self.client.lrange(LATENCY_KEY.format(model=model), 0, -1)  # type: ignore[assignment]
        return [float(sample) for sample in samples]
