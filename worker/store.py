"""Job and chain records in Redis, changed only by compare-and-set.

A job is one hash at ``wq:job:<id>``. Public fields mirror ``JobRecord``;
bookkeeping fields (below) belong to the worker and never leave this module's
callers. Every change goes through ``transition()``, one Lua script that checks
expected field values and applies updates atomically, so two copies of the same
Celery message can never both submit or both complete a job. A terminal
transition also sets the record's TTL, frees its in-flight slot, drops it from
the deadline index and publishes it on ``JOB_EVENTS_CHANNEL`` — in the same
atomic step, so a waiter can never miss the news for a record it just read.

Bookkeeping fields:

- ``submit_token``: who holds the right to send the submit POST ("" = nobody).
- ``submit_lease_until``: when that right expires (a crashed submitter's lease
  expires, and the next copy of the message applies the ambiguous-submit policy).
- ``poll_seq`` / ``poll_due_at``: the sequence number and due time of the one poll
  message that should be alive; older copies drop themselves.
- ``error_retries``: error retries used so far (polls do not count).
- ``awaiting_image``: "1" while a chain step waits for the step before's output as its
  ``image`` ("0" once filled in at run time).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

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
)
from worker.errors import JobNotFoundError
from worker.models import JobRecord, JobStatus

#: Record fields stored as JSON (everything else is a plain string; "" means unset).
_JSON_FIELDS = frozenset({"input", "outputs", "has_nsfw_contents", "error", "metadata"})

_TRANSITION_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local expected = cjson.decode(ARGV[1])
for field, want in pairs(expected) do
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
local flat = {}
for field, value in pairs(updates) do
  table.insert(flat, field)
  table.insert(flat, value)
end
if #flat > 0 then redis.call('HSET', KEYS[1], unpack(flat)) end
if updates['next_run_at'] then redis.call('ZADD', KEYS[4], updates['next_run_at'], ARGV[6]) end
for field, amount in pairs(cjson.decode(ARGV[3])) do
  redis.call('HINCRBY', KEYS[1], field, amount)
end
if tonumber(ARGV[4]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('ZREM', KEYS[2], ARGV[6])
  redis.call('ZREM', KEYS[3], ARGV[6])
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('PUBLISH', ARGV[5], ARGV[7])
end
return 1
"""

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


def decode_record(raw: Mapping[str, str]) -> JobRecord:
    """Hash fields (bookkeeping ignored) back to a JobRecord."""
    values: dict[str, Any] = {}
    for field in JobRecord.model_fields:
        text = raw.get(field, "")
        if text == "":
            continue
        values[field] = json.loads(text) if field in _JSON_FIELDS else text
    return JobRecord.model_validate(values)


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
    """Reads and atomically changes job and chain records."""

    def __init__(self, client: redis.Redis, *, record_ttl: int) -> None:
        self.client = client
        self.record_ttl = record_ttl
        self._transition = client.register_script(_TRANSITION_LUA)
        self._create = client.register_script(_CREATE_LUA)

    @classmethod
    def from_url(cls, url: str, *, record_ttl: int) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True), record_ttl=record_ttl)

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
                "created_at": repr(time.time()),
                "metadata": json.dumps(dict(metadata)),
            },
        )

    # reading ------------------------------------------------------------------

    def snapshot(self, job_id: str) -> JobSnapshot:
        raw: dict[str, str] = self.client.hgetall(JOB_KEY.format(job_id=job_id))  # type: ignore[assignment]
        if not raw:
            raise JobNotFoundError(f"no job {job_id!r} (never created, or expired)")
        return JobSnapshot(record=decode_record(raw), raw=raw)

    def get(self, job_id: str) -> JobRecord:
        return self.snapshot(job_id).record

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord | None]:
        """Records in one round trip; ``None`` where a record is missing."""
        pipe = self.client.pipeline(transaction=False)
        ids = list(job_ids)
        for job_id in ids:
            pipe.hgetall(JOB_KEY.format(job_id=job_id))
        return [decode_record(raw) if raw else None for raw in pipe.execute()]

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
        expect: Mapping[str, str | list[str]],
        updates: Mapping[str, Any] | None = None,
        increments: Mapping[str, int] | None = None,
    ) -> bool:
        """Apply ``updates``/``increments`` iff every ``expect`` field matches.

        Returns False when another copy got there first (or the record is gone).
        An update of ``next_run_at`` also indexes the job for the sweeper; a move into
        a terminal status expires, unindexes and announces the record.
        """
        fields = {k: _encode(v, k) for k, v in (updates or {}).items()}
        new_status = fields.get("status")
        terminal = new_status is not None and JobStatus(new_status).is_terminal
        event = json.dumps({"job_id": job_id, "status": new_status}) if terminal else ""
        result = self._transition(
            keys=[JOB_KEY.format(job_id=job_id), IN_FLIGHT_KEY, DEADLINES_KEY, NEXT_RUN_KEY],
            args=[
                json.dumps(dict(expect)),
                json.dumps(fields),
                json.dumps(dict(increments or {})),
                self.record_ttl if terminal else 0,
                JOB_EVENTS_CHANNEL,
                job_id,
                event,
            ],
        )
        return bool(result == 1)

    def count(self, name: str, *, job_id: str | None = None, **labels: str) -> None:
        """Bump the global counter ``name{labels}``; with ``job_id``, also the record's
        own field ``name`` (e.g. ``polls``, ``error_retries``). One round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(COUNTERS_KEY, counter_field(name, **labels), 1)
        if job_id is not None:
            pipe.hincrby(JOB_KEY.format(job_id=job_id), name, 1)
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

    def mark_due(self, job_id: str, due: float) -> None:
        """Index when the job's next message is due (outside a compare-and-set)."""
        self.client.zadd(NEXT_RUN_KEY, {job_id: due})

    def mark_due_many(self, job_ids: Iterable[str], due: float) -> None:
        self.client.zadd(NEXT_RUN_KEY, dict.fromkeys(job_ids, due))

    def unmark_due(self, job_id: str) -> None:
        self.client.zrem(NEXT_RUN_KEY, job_id)

    def overdue(self, before: float, limit: int) -> list[str]:
        """Jobs whose next message was due before ``before``."""
        ids: list[str] = self.client.zrangebyscore(NEXT_RUN_KEY, "-inf", before, 0, limit)  # type: ignore[assignment]
        return ids

    def past_deadline(self, now: float, limit: int) -> list[str]:
        """Live jobs whose deadline has passed."""
        ids: list[str] = self.client.zrangebyscore(DEADLINES_KEY, "-inf", now, 0, limit)  # type: ignore[assignment]
        return ids

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

    def expire_chain(self, chain_id: str) -> None:
        self.client.expire(CHAIN_KEY.format(chain_id=chain_id), self.record_ttl)

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
