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
   inference milliseconds), which is kept long after the record expires; so is what the
   job cost (``SPEND_KEY``, per tenant: billed for a completion, unconfirmed for an
   ending while its prediction may still run), and its budget reservation is given back.

Budgets (``worker.budgets``): the submit claim passes a ``Budget``; the script checks the
day's caps and reserves the job's estimate in the same step as the claim, or holds the
job (``held: budget``, ``HELD_KEY``) and writes nothing else.

The status machine (``MOVES``) is defined here, once, and baked into the Lua::

    queued ──> submitting ──> submitted ──> processing ──> completed
       │            │            │  ^            │    ^
       │            │            │  │            └──> persisting (outputs being copied;
       │            │            │  │                 ``worker.keep_outputs``) ──> completed
       │            │            └──┼── submitting (a new prediction after    | cancelled
       │            │               │   WaveSpeed failed the old one, 5xxx)
       └────────────┴────────────┴──┴────────────┴──> failed | timed_out | cancelled

A live job may be cancelled whatever it is doing (``cancel``): like every terminal status,
``cancelled`` refuses every later write, so a poll, a webhook or a duplicate message that
arrives afterwards changes nothing.

Deadlines: a caller may pass ``live_at`` (the submit claim does): the write is refused
(``Moved.PAST_DEADLINE``) when the record's deadline is at or before it, so a job still
queued past its deadline is never submitted, however late its message runs.

Callbacks (``worker.callbacks``): a move into a terminal status of a record that has a
``callback_url`` (or is a step of a chain that has one, ``chain_callback``) also puts
``job:<id>`` (``chain:<id>``) in the outbox ``CALLBACKS_KEY``, in the same step, so no
ending is ever left without its delivery. The delivery's own fields (attempts, last
status, lease) change only through ``claim_callback`` / ``finish_callback``, on records
that have ended.

Bookkeeping fields:

- ``submit_token``: who holds the right to send the submit POST ("" = nobody).
- ``submit_lease_until``: when that right expires (a crashed submitter's lease
  expires, and the next copy of the message applies the ambiguous-submit policy).
- ``poll_seq``: the sequence number of the one poll message that should be alive; older
  copies drop themselves (its due time is ``next_run_at``, which only a poll claim moves
  while a prediction is polled).
- ``error_retries``: error retries used so far (polls do not count).
- ``next_run_at``: when the job's next message is due (mirrored in ``NEXT_RUN_KEY``).
- ``last_write``: a random id (``new_write_id``) of the last applied ``transition``, so
  that redis-py retrying a script call whose reply was lost (a connection dropped
  mid-call) finds it applied instead of failing its own compare-and-set.
- ``inline_images``: "1" while the request holds inline-image markers, whose images the
  worker uploads before the first submit (``worker.inline_images``).
- ``awaiting_image``: "1" while a chain step waits for the step before's output as its
  ``image`` ("0" once filled in at run time).
- ``outcome_unknown_at``: with webhooks on, when the job's submit outcome was found
  unknown: the job then waits for a webhook to prove its prediction (the receiver adopts
  it) before the ambiguous-submit policy applies. Cleared when the policy applies.
- ``ended_by``: "webhook" when a WaveSpeed callback ended the job (the receiver then
  continued its chain, so the job's own pending message must not).
- ``chain_callback``: "1" on the steps of a chain that has a ``callback_url``.
- ``status_at``: when the job entered its status (``%014.3f`` seconds): its member of the
  list index (``worker.job_listing``), which every status change moves.
- ``timeline``: what happened to the job and when, a few bytes per event
  (``worker.timeline``), appended by every write that changes its status or counts a
  poll, an error retry or an in-flight wait.
- ``reserved``: the estimate this job reserved against the daily budgets at its submit
  claim (kept while it resubmits; given back by its ending). Records written by
  earlier releases name it ``reserved_micros``; the script still reads and gives it back.
- ``callback_token`` / ``callback_lease_until``: who holds the right to POST the callback,
  and until when; ``callback_due_at``: the next attempt's time; ``callback_first_at``:
  the first attempt's (the retry window counts from it); ``callback_for``: the ending the
  attempts are for, ``callback_ending``: the last ending delivered (or given up on).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import pydantic
import redis
from redis.commands.core import Script

from worker.clock import Clock, RedisClock
from worker.constants import (
    BUDGETS_KEY,
    CALLBACK_SEND_GRACE,
    CALLBACKS_KEY,
    CHAIN_KEY,
    COUNTERS_KEY,
    DAILY_KEY,
    DAILY_TTL,
    DEADLINES_KEY,
    DEFAULT_TENANT,
    DUE_POLLS_KEY,
    HELD_KEY,
    HISTOGRAM_KEY,
    IDEMPOTENCY_KEY,
    IN_FLIGHT_KEY,
    INLINE_KEY,
    JOB_EVENT_CHANNEL,
    JOB_KEY,
    JOBS_INDEX_KEY,
    JOBS_INDEX_PREFIX,
    JOBS_REGISTRY_KEY,
    LATENCY_KEY,
    LATENCY_SAMPLE_SIZE,
    LIVE_KEY,
    NEXT_RUN_KEY,
    PREDICTION_OWNER_KEY,
    QUARANTINE_KEY,
    REQUEST_KEY,
    RESERVED_KEY,
    SPEND_KEY,
    TENANT_LIVE_KEY,
)
from worker.errors import IdempotencyConflictError, JobNotFoundError, UnreadableRecordError
from worker.fairness import CREDIT_KEY, DEPTH_KEY, LINE_INDEX_KEY, LINE_KEY
from worker.inline_images import INLINE_FIELD, split_inline
from worker.models import (
    TERMINAL_STATUSES,
    JobRecord,
    JobState,
    JobStatus,
    to_the_millisecond,
)
from worker.redis_connection import redis_client
from worker.settings import Settings
from worker.timeline import (
    TIMELINE_INCREMENT_CODES,
    TIMELINE_LIMIT,
    TIMELINE_STATUS_CODES,
    lua_codes,
)

#: State fields stored as JSON (everything else is a plain string; absent means unset).
_JSON_FIELDS = frozenset(
    {"outputs", "has_nsfw_contents", "error", "stored_outputs", "persist_error"}
)
#: Bookkeeping fields the worker reads as numbers.
_NUMERIC_BOOKKEEPING = (
    "poll_seq",
    "next_run_at",
    "submit_lease_until",
    "error_retries",
    "inflight_waits",
)
#: Values a new record does not store: absent reads back as the default.
_DEFAULTS = {
    "priority": "normal",
    "tenant": DEFAULT_TENANT,
    "on_budget": "wait",
    "cost_unconfirmed": "0",
    "images": "1",
    "attempts": "0",
    "polls": "0",
    "callback_attempts": "0",
    "persist_attempts": "0",
}
#: JobRecord fields that are not the job's state (``encode_state``).
_NOT_STATE: set[str] = {"id", "input", "metadata"}

_S = JobStatus
#: Every live status may end like this (cancel stops a job whatever it is doing).
_ENDINGS = frozenset({_S.FAILED, _S.TIMED_OUT, _S.CANCELLED})
#: Which status may follow which. A status may also stay as it is (bookkeeping only).
MOVES: Mapping[JobStatus, frozenset[JobStatus]] = {
    _S.QUEUED: frozenset({_S.SUBMITTING, *_ENDINGS}),
    _S.SUBMITTING: frozenset({_S.SUBMITTED, *_ENDINGS}),
    _S.SUBMITTED: frozenset({_S.PROCESSING, _S.PERSISTING, _S.COMPLETED, _S.SUBMITTING, *_ENDINGS}),
    _S.PROCESSING: frozenset({_S.PERSISTING, _S.COMPLETED, _S.SUBMITTING, *_ENDINGS}),
    # Completed at WaveSpeed: the copy of its outputs completes it; a cancel stops the copy.
    _S.PERSISTING: frozenset({_S.COMPLETED, _S.CANCELLED}),
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


_TRANSITION_LUA = (
    """
-- KEYS: 1 job, 2 its request, 3 in-flight set, 4 deadlines, 5 next-run, 6 counters,
--       7 live counts, 8 today's aggregate, 9 the fair line's index, 10 the fair line,
--       11 due polls, 12 callbacks outbox, 13 today's spend, 14 reservations, 15 run-time
--       caps, 16 held jobs, 17 live counts per tenant, 18 line depth per tenant,
--       19 round-robin credit, 20.. keys of the side effects, then the claimed key (if any)
-- ARGV: 1 expect, 2 updates, 3 increments, 4 counters always, 5 counters if applied,
--       6 terminal TTL, 7 event channel, 8 job id, 9 write id, 10 new request ('' = keep),
--       11 side effects if applied: [[op, key index, a, b], ...], 12 aggregate TTL,
--       13 when the deferred poll is due ('' = its message is sent by the caller),
--       14 live at ('' = any time: else refused when the deadline is at or before it),
--       15 when the sweeper sends a new ending's callback if nobody did,
--       16 claim ('' = none): [key index, value, TTL],
--       17 budget ('' = none): {mode = reserve | check, amount, caps = [global, tenant, any
--          tenant] from the settings (-1 = none), hold_until, now},
--       18 billing of an ending that is not a completion ('' = unconfirmed if a prediction
--          exists or a submit is claimed, else none; 'none'; 'unconfirmed'),
--       19 list index key prefix, 20 now (seconds)
local MOVES = __MOVES__
local TERMINAL = __TERMINAL__
local TIMELINE_STATUSES = __TIMELINE_STATUSES__
local TIMELINE_INCREMENTS = __TIMELINE_INCREMENTS__
-- One read of every field this call looks at (the idempotency mark, the status, the
-- model for the live counts, the deadline, what a callback needs, what places the job in
-- the list index and its timeline, the expected fields).
local names = {'last_write', 'status', 'model', 'deadline_at', 'callback_url', 'chain_callback',
               'chain_id', 'tenant', 'reserved', 'prediction_id', 'submit_token',
               'on_budget', 'estimated_cost_micros', 'held', 'cost_micros', 'status_at',
               'created_at', 'timeline', 'reserved_micros'}
local FIXED = #names
local expected = {}
for field, want in pairs(cjson.decode(ARGV[1])) do
  table.insert(names, field)
  table.insert(expected, want)
end
local got = redis.call('HMGET', KEYS[1], unpack(names))
-- A reservation recorded under the field's older name.
if not got[9] then got[9] = got[19] end
-- The same call again (redis-py retried it after its reply was lost): it was applied.
if got[1] == ARGV[9] then return 1 end
-- HTTP calls that happened are counted whatever this write decides.
for _, field in ipairs(cjson.decode(ARGV[4])) do redis.call('HINCRBY', KEYS[6], field, 1) end
local status = got[2]
if not status then return -1 end
if TERMINAL[status] then return -2 end
local allowed = MOVES[status]
if allowed == nil then return -4 end
if ARGV[14] ~= '' and got[4] and tonumber(got[4]) <= tonumber(ARGV[14]) then return -5 end
for i, want in ipairs(expected) do
  local have = got[FIXED + i]
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
-- A key this job takes for itself (a prediction id it owns): refused if another holds it.
local claim = nil
if ARGV[16] ~= '' then
  claim = cjson.decode(ARGV[16])
  local holder = redis.call('GET', KEYS[claim[1]])
  if holder and holder ~= claim[2] then return -6 end
end
local tenant = got[8] or 'default'
local function num(x) return tonumber(x) or 0 end
-- The daily budgets, checked (and the job's estimate reserved) in the same step as the
-- submit claim, so workers racing for the last dollars cannot all get them.
local reserve = nil
if ARGV[17] ~= '' then
  local budget = cjson.decode(ARGV[17])
  -- A job that holds a reservation (a new prediction after a remote failure) has paid.
  if got[9] then
    if budget.mode == 'check' then return 2 end
  else
    local rt = redis.call('HMGET', KEYS[15], 'global', 'tenant:' .. tenant, 'tenant:*')
    local function pick(runtime, setting)
      if runtime then
        if runtime == 'none' then return -1 end
        return tonumber(runtime)
      end
      if setting >= 0 then return setting end
      return nil
    end
    local gcap = pick(rt[1], budget.caps[1]) or -1
    local tcap = pick(rt[2], budget.caps[2])
    if tcap == nil then tcap = pick(rt[3], budget.caps[3]) or -1 end
    local amount = budget.amount
    local over = false
    if gcap >= 0 or tcap >= 0 then  -- no cap at all: nothing to read
      local spent = redis.call('HMGET', KEYS[13], 'billed', 'unconfirmed', 'billed|' .. tenant,
                               'unconfirmed|' .. tenant)
      local held = redis.call('HMGET', KEYS[14], 'total', tenant)
      over = (gcap >= 0 and num(spent[1]) + num(spent[2]) + num(held[1]) + amount > gcap)
        or (tcap >= 0 and num(spent[3]) + num(spent[4]) + num(held[2]) + amount > tcap)
    end
    if over then
      if got[12] == 'fail' then return -8 end
      -- Held: no message until room appears (the sweeper, or a raised cap, sends it).
      redis.call('HSET', KEYS[1], 'held', 'budget', 'next_run_at', budget.hold_until)
      redis.call('ZADD', KEYS[5], budget.hold_until, ARGV[8])
      redis.call('ZADD', KEYS[16], budget.now, ARGV[8])
      return -7
    end
    if budget.mode == 'check' then return 2 end
    reserve = amount
  end
end
local flat = {'last_write', ARGV[9]}
local moving = new and new ~= status
-- When the job entered its status: its place in the list index (lexical, so that equal
-- times order by id and a page boundary is exact).
local status_at = nil
if moving then
  status_at = string.format('%014.3f', tonumber(ARGV[20]))
  table.insert(flat, 'status_at')
  table.insert(flat, status_at)
end
-- The job's timeline (the jobs page draws it): what this write did, at seconds since the
-- job was created, appended to a short text field (``worker.timeline`` reads it). Only a
-- job's ending is still added once it is long.
local increments = cjson.decode(ARGV[3])
local events = {}
for field, code in pairs(TIMELINE_INCREMENTS) do
  if increments[field] then table.insert(events, code) end
end
if moving then table.insert(events, TIMELINE_STATUSES[new]) end
local timeline = got[18] or ''
if #events > 0 and (#timeline < __TIMELINE_LIMIT__ or TERMINAL[new]) then
  local at = string.format('%.1f', tonumber(ARGV[20]) - (tonumber(got[17] or '0') or 0))
  for _, code in ipairs(events) do timeline = timeline .. code .. at .. ' ' end
  table.insert(flat, 'timeline')
  table.insert(flat, timeline)
end
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
for field, amount in pairs(increments) do
  redis.call('HINCRBY', KEYS[1], field, amount)
end
if ARGV[10] ~= '' then redis.call('SET', KEYS[2], ARGV[10], 'KEEPTTL') end
if reserve then
  redis.call('HINCRBY', KEYS[14], 'total', reserve)
  redis.call('HINCRBY', KEYS[14], tenant, reserve)
  redis.call('HSET', KEYS[1], 'reserved', reserve, 'estimated_cost_micros', reserve)
  if got[14] then
    redis.call('HDEL', KEYS[1], 'held')
    redis.call('ZREM', KEYS[16], ARGV[8])
  end
end
if claim then redis.call('SET', KEYS[claim[1]], claim[2], 'EX', claim[3]) end
-- What the job cost, counted once. The write that records a completed prediction's cost
-- (``cost_micros``, the first time) bills it to today's spend and gives the job's
-- reservation back, whatever status it moves to.
local labels = '|model=' .. (got[3] or '') .. '|tenant=' .. tenant
-- The day's spend outlives the records; its TTL is set when its first total is written.
local function add(measure, amount)
  if redis.call('HINCRBY', KEYS[13], measure, amount) == amount then
    redis.call('EXPIRE', KEYS[13], ARGV[12])
  end
  redis.call('HINCRBY', KEYS[13], measure .. '|' .. tenant, amount)
end
local function give_back()
  local reserved = tonumber(got[9])
  if reserved then
    redis.call('HINCRBY', KEYS[14], 'total', -reserved)
    redis.call('HINCRBY', KEYS[14], tenant, -reserved)
    redis.call('HDEL', KEYS[1], 'reserved', 'reserved_micros')
  end
end
local billed_now = false
local cost = tonumber(updates['cost_micros'])
if cost and cost > 0 and not got[15] then
  give_back()
  local images = (updates['outputs'] or '') ~= '' and #cjson.decode(updates['outputs']) or 0
  add('billed', cost)
  add('images', images)
  add('jobs', 1)
  redis.call('HINCRBY', KEYS[6], 'spend_micros' .. labels, cost)
  redis.call('HINCRBY', KEYS[6], 'images_billed' .. labels, images)
  billed_now = true
end
if moving then
  local model = got[3] or ''
  -- The list index: from the old status's (status, model, tenant) set to the new one's.
  local place = model .. '|' .. tenant
  local was = got[16] or string.format('%014.3f', tonumber(got[17] or '0') or 0)
  redis.call('ZREM', ARGV[19] .. status .. '|' .. place, was .. ':' .. ARGV[8])
  local index = ARGV[19] .. new .. '|' .. place
  redis.call('ZADD', index, 0, status_at .. ':' .. ARGV[8])
  if TERMINAL[new] then
    -- Ended jobs stay listed as long as their records live: older entries go, and a set
    -- that gets no more ends expires with the last of its records.
    local oldest = string.format('%014.3f', tonumber(ARGV[20]) - tonumber(ARGV[6]))
    redis.call('ZREMRANGEBYLEX', index, '-', '(' .. oldest)
    redis.call('EXPIRE', index, ARGV[6])
  end
  redis.call('HINCRBY', KEYS[7], status .. '|' .. model, -1)
  redis.call('HINCRBY', KEYS[17], status .. '|' .. tenant, -1)
  if not TERMINAL[new] then
    redis.call('HINCRBY', KEYS[17], new .. '|' .. tenant, 1)
    -- Completed at WaveSpeed; its outputs are being copied: no deadline can time it out.
    if new == 'persisting' then redis.call('ZREM', KEYS[4], ARGV[8]) end
  else
    -- Per-tenant figures never expire (a field per tenant and ending).
    redis.call('HINCRBY', KEYS[6], 'tenant_jobs_ended|status=' .. new .. '|tenant=' .. tenant, 1)
  end
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
  -- An ended job waits for no submission slot: it leaves the fair line (worker.fairness).
  local member = redis.call('HGET', KEYS[9], ARGV[8])
  if member then
    redis.call('HDEL', KEYS[9], ARGV[8])
    if redis.call('ZREM', KEYS[10], member) == 1 then
      local waiting_tenant = string.match(member, '^([^|]+)|')
      if redis.call('HINCRBY', KEYS[18], waiting_tenant, -1) <= 0 then
        redis.call('HDEL', KEYS[18], waiting_tenant)
        redis.call('HDEL', KEYS[19], waiting_tenant)
      end
    end
  end
  redis.call('ZREM', KEYS[11], ARGV[8])
  redis.call('PUBLISH', ARGV[7], cjson.encode({job_id = ARGV[8], status = new}))
  -- The ending's callback is owed from this step on (NX: a pending one keeps its time).
  if got[5] then redis.call('ZADD', KEYS[12], 'NX', ARGV[15], 'job:' .. ARGV[8]) end
  if got[6] == '1' and got[7] then
    redis.call('ZADD', KEYS[12], 'NX', ARGV[15], 'chain:' .. got[7])
  end
  if got[14] then
    redis.call('ZREM', KEYS[16], ARGV[8])
    redis.call('HDEL', KEYS[1], 'held')
  end
  -- A job that ends without a bill: its reservation back, its cost 0, and its estimate
  -- counted as unconfirmed when WaveSpeed may still bill it (its prediction may run).
  if not billed_now then
    give_back()
    if not got[15] and not updates['cost_micros'] then
      redis.call('HSET', KEYS[1], 'cost_micros', '0')
      local billing = ARGV[18]
      if billing == '' then
        billing = (got[10] or got[11]) and 'unconfirmed' or 'none'
      end
      local amount = tonumber(got[9]) or num(got[13])
      if billing == 'unconfirmed' and amount > 0 then
        add('unconfirmed', amount)
        redis.call('HINCRBY', KEYS[6], 'spend_unconfirmed_micros' .. labels, amount)
        redis.call('HSET', KEYS[1], 'cost_unconfirmed', '1')
      end
    end
  end
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
""".replace("__MOVES__", _lua_table(MOVES))
    .replace("__TERMINAL__", "{" + ",".join(f"{s.value}=true" for s in TERMINAL_STATUSES) + "}")
    .replace("__TIMELINE_STATUSES__", lua_codes(TIMELINE_STATUS_CODES))
    .replace("__TIMELINE_INCREMENTS__", lua_codes(TIMELINE_INCREMENT_CODES))
    .replace("__TIMELINE_LIMIT__", str(TIMELINE_LIMIT))
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
    #: ``live_at`` was given and the record's deadline is at or before it.
    PAST_DEADLINE = -5
    #: The key the write claims (``Claim``) is held by another job.
    CLAIMED = -6
    #: A daily budget has no room for the job: nothing written but its hold (``held:
    #: budget``, in ``HELD_KEY``, next run at the ``Budget``'s ``hold_until``).
    HELD = -7
    #: A daily budget has no room and the job asked to fail then (``on_budget=fail``):
    #: nothing written.
    OVER_BUDGET = -8
    #: ``Budget(mode="check")``: the budgets have room for the job; nothing written.
    WITHIN_BUDGET = 2

    def __bool__(self) -> bool:
        return self is Moved.APPLIED


_CREATE_LUA = """
-- KEYS: 1 job, 2 deadlines, 3 idempotency key (only when ARGV[4] == '1'), 4 next-run index,
--       5 the job's request, 6 live counts, 7 a list to push ARGV[8] on (only when not ''),
--       8 live counts per tenant, 9 the job's list index set, 10 the list index's registry
--       (its model|tenant pairs), 11.. the keys of the inline images (ARGV[9] of them)
-- ARGV: 1 id, 2 deadline, 3 idempotency TTL, 4 use-key flag, 5 created_at, 6 request JSON,
--       7 live-count field, 8 message ('' = none), 9 inline image count n, 10 their TTL,
--       11 the per-tenant live-count field, 12 request fingerprint ('' = not checked),
--       13 the job's model|tenant pair for the registry, 14..13+n the images, then the
--       hash fields
if ARGV[4] == '1' then
  -- The key holds '<job id>' or '<job id> <fingerprint of its request>'.
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local id, print = string.match(existing, '^(%S+) ?(%S*)$')
    if ARGV[12] ~= '' and print ~= '' and print ~= ARGV[12] then return '!' .. id end
    return id
  end
end
-- The same call again (redis-py retried it after its reply was lost): it was applied.
if redis.call('EXISTS', KEYS[1]) == 1 then return ARGV[1] end
if ARGV[4] == '1' then
  local value = ARGV[1]
  if ARGV[12] ~= '' then value = value .. ' ' .. ARGV[12] end
  redis.call('SET', KEYS[3], value, 'EX', ARGV[3])
end
local inline = tonumber(ARGV[9])
for i = 1, inline do redis.call('SET', KEYS[10 + i], ARGV[13 + i], 'EX', ARGV[10]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 14 + inline))
redis.call('SET', KEYS[5], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
-- Indexed for the sweeper from the start: a first message can be lost too.
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('HINCRBY', KEYS[6], ARGV[7], 1)
redis.call('HINCRBY', KEYS[8], ARGV[11], 1)
-- Listed from the start, by when it was queued (transition() moves it on).
redis.call('ZADD', KEYS[9], 0, string.format('%014.3f', tonumber(ARGV[5])) .. ':' .. ARGV[1])
redis.call('SADD', KEYS[10], ARGV[13])
-- The first message goes out with the record, never without it.
if ARGV[8] ~= '' then redis.call('LPUSH', KEYS[7], ARGV[8]) end
return ARGV[1]
"""


_CLAIM_CALLBACK_LUA = """
-- KEYS: 1 the record (a job's or a chain's hash), 2 the callbacks outbox
-- ARGV: 1 outbox member, 2 token, 3 now, 4 lease until, 5 early tolerance (s), 6 job flag
--       ('1': a job's record, which must have ended)
-- Returns {verdict, ...}: missing | none | live | done | busy | {early, due} |
--         {claimed, callback_url, callback_ending, callback_for, attempts, first attempt}
local TERMINAL = __TERMINAL__
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'missing'}
end
local f = redis.call('HMGET', KEYS[1], 'callback_url', 'status', 'callback_delivered_at',
  'callback_failed_at', 'callback_token', 'callback_lease_until', 'callback_due_at',
  'callback_ending', 'callback_for', 'callback_attempts', 'callback_first_at')
if not f[1] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'none'}
end
if ARGV[6] == '1' then
  if not TERMINAL[f[2]] then return {'live'} end
  -- A job ends once: delivered (or given up on), its callback is done for good.
  if f[3] or f[4] then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return {'done'}
  end
end
local now = tonumber(ARGV[3])
if f[5] and tonumber(f[6] or '0') > now then return {'busy'} end
if f[7] and tonumber(f[7]) > now + tonumber(ARGV[5]) then return {'early', f[7]} end
redis.call('HSET', KEYS[1], 'callback_token', ARGV[2], 'callback_lease_until', ARGV[4])
-- Should this claimant die mid-POST, the sweeper sends another message once its lease ends.
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return {'claimed', f[1], f[8] or '', f[9] or '', f[10] or '0', f[11] or ''}
""".replace("__TERMINAL__", "{" + ",".join(f"{s.value}=true" for s in TERMINAL_STATUSES) + "}")

_FINISH_CALLBACK_LUA = """
-- KEYS: 1 the record, 2 the callbacks outbox, 3 counters
-- ARGV: 1 outbox member, 2 token, 3 outcome (delivered | retry | failed | skip),
--       4 HTTP status ('' = not attempted, 0 = no answer), 5 now, 6 ending,
--       7 next attempt due, 8 when the sweeper sends it (retry), 9 counters if applied (JSON)
if redis.call('HGET', KEYS[1], 'callback_token') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], 'callback_token', 'callback_lease_until')
local outcome = ARGV[3]
for _, field in ipairs(cjson.decode(ARGV[9])) do redis.call('HINCRBY', KEYS[3], field, 1) end
if outcome == 'skip' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
-- A chain that ends again (after retry_chain) starts its delivery afresh.
if redis.call('HGET', KEYS[1], 'callback_for') ~= ARGV[6] then
  redis.call('HDEL', KEYS[1], 'callback_attempts', 'callback_status', 'callback_first_at',
    'callback_delivered_at', 'callback_failed_at', 'callback_due_at')
  redis.call('HSET', KEYS[1], 'callback_for', ARGV[6])
end
if ARGV[4] ~= '' then
  redis.call('HINCRBY', KEYS[1], 'callback_attempts', 1)
  redis.call('HSET', KEYS[1], 'callback_status', ARGV[4])
  if redis.call('HEXISTS', KEYS[1], 'callback_first_at') == 0 then
    redis.call('HSET', KEYS[1], 'callback_first_at', ARGV[5])
  end
end
if outcome == 'retry' then
  redis.call('HSET', KEYS[1], 'callback_due_at', ARGV[7])
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
else
  local field = outcome == 'delivered' and 'callback_delivered_at' or 'callback_failed_at'
  redis.call('HSET', KEYS[1], field, ARGV[5], 'callback_ending', ARGV[6])
  redis.call('HDEL', KEYS[1], 'callback_due_at')
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""


class ClaimVerdict(StrEnum):
    """What ``claim_callback`` found."""

    #: This caller holds the right to POST now.
    CLAIMED = "claimed"
    #: The record is gone (expired): nothing left to deliver.
    MISSING = "missing"
    #: The record has no callback_url.
    NONE = "none"
    #: The job has not ended (a stray message): nothing to deliver yet.
    LIVE = "live"
    #: Delivered, or given up on, already.
    DONE = "done"
    #: Another copy holds the right to POST (its lease has not ended).
    BUSY = "busy"
    #: The next attempt is not due yet (a copy that came early).
    EARLY = "early"


@dataclass(frozen=True)
class CallbackClaim:
    verdict: ClaimVerdict
    url: str = ""
    #: The last ending delivered (or given up on): "" if none.
    delivered_ending: str = ""
    #: EARLY: when the next attempt is due.
    due_at: float | None = None
    #: The ending the attempts so far were for, how many, and when the first was made.
    attempts_for: str = ""
    attempts: int = 0
    first_attempt_at: float | None = None

    def attempts_made(self, ending: str) -> tuple[int, float | None]:
        """Attempts so far for ``ending`` and when the first was (none for a new ending)."""
        if ending != self.attempts_for:
            return 0, None
        return self.attempts, self.first_attempt_at


def _callback_fields(raw: Mapping[str, str]) -> dict[str, Any]:
    """A chain record's public callback fields (a job's are JobState fields)."""
    if not raw.get("callback_url"):
        return {}
    fields: dict[str, Any] = {name: None for name in CALLBACK_FIELDS}
    fields["callback_attempts"] = 0
    for name, kind in CALLBACK_FIELDS.items():
        if raw.get(name):
            fields[name] = kind(raw[name])
    return fields


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cancel_stage(raw: Mapping[str, str]) -> tuple[str, str]:
    """How far a live job had got when cancelled (the ``stage`` label), and its error's words."""
    prediction = raw.get("prediction_id", "")
    if prediction:
        return "submitted", (
            f"cancelled after it was submitted as prediction {prediction}: WaveSpeed has no "
            "cancel endpoint, so it may still run and be billed; its result is ignored"
        )
    if raw.get("submit_token"):
        return "submitting", (
            "cancelled while its submit was in flight: a prediction may exist on WaveSpeed "
            "and may be billed; its result is ignored"
        )
    return "queued", "cancelled before it was submitted: nothing was sent to WaveSpeed"


_PRUNE_INDEX_LUA = """
-- KEYS: 1 the list index's registry, 2.. index sets to remove a member from
-- ARGV: 1 the index key prefix, 2 JSON {members: [one per set in KEYS], pairs: [model|tenant
--       pairs that may be gone], statuses: [every status]}
-- A model|tenant pair with no set left in any status leaves the registry; checked here,
-- atomically, so that a job created meanwhile keeps its pair.
local args = cjson.decode(ARGV[2])
for i, member in ipairs(args['members']) do redis.call('ZREM', KEYS[i + 1], member) end
for _, pair in ipairs(args['pairs']) do
  local left = 0
  for _, status in ipairs(args['statuses']) do
    left = left + redis.call('EXISTS', ARGV[1] .. status .. '|' .. pair)
  end
  if left == 0 then redis.call('SREM', KEYS[1], pair) end
end
return 1
"""


def _conflict_why(reply: str) -> str:
    return (
        f"already used by job {reply[1:]} for a different request (the same key with the "
        "same request returns that job; a new request needs a new key)"
    )


def _conflict(problems: dict[str, str], reply: str) -> IdempotencyConflictError:
    return IdempotencyConflictError(problems, job_id=reply[1:])


def index_place(status: str, model: str, tenant: str) -> str:
    """The name of a (status, model, tenant) list index set, after ``JOBS_INDEX_PREFIX``."""
    return f"{status}|{model}|{tenant}"


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


def new_write_id() -> str:
    """A ``transition``'s id (the record's ``last_write``): 48 random bits. It only has to
    differ from the one write before on the same record; 12 characters, not 16, keep an
    in-flight record in a smaller allocation."""
    return uuid.uuid4().hex[:12]


#: Fields that hold a time (seconds since the epoch), stored to the millisecond.
TIME_FIELD_SUFFIXES: tuple[str, ...] = ("_at", "_until")


def _encode(value: Any, field: str) -> str:
    if value is None or (field in _JSON_FIELDS and value == ""):
        return ""  # unset: the field is removed from the hash
    if field in _JSON_FIELDS:
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and field.endswith(TIME_FIELD_SUFFIXES):
        # A time to the millisecond: 4 bytes less than a float's full repr for each of a
        # record's times, which keeps an in-flight record in a smaller allocation.
        return repr(to_the_millisecond(value))
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
        # No metadata, no key: 14 bytes less per request, which keeps a small request in
        # a smaller allocation (from_json reads a missing key as none).
        body = (
            {"input": self.input, "metadata": self.metadata}
            if self.metadata
            else {"input": self.input}
        )
        return json.dumps(body, separators=(",", ":"))

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
class Claim:
    """A key a ``transition()`` takes for its job: checked before the write (held by
    another value: ``Moved.CLAIMED``, nothing written) and set, with a TTL, with it. A
    prediction id's owner (``PREDICTION_OWNER_KEY``) is one: one job per prediction."""

    key: str
    value: str
    ttl: int


@dataclass(frozen=True)
class Budget:
    """The daily budgets, for a ``transition()`` that claims a submit (``mode="reserve"``:
    the job's ``amount`` is reserved with the write, or the write is refused and the job
    held) or asks first (``mode="check"``: nothing is written unless the job is held).
    ``caps`` are the settings' global, tenant and any-tenant caps in micro-dollars (-1:
    none); caps set at run time (``BUDGETS_KEY``) take precedence. A held job's next run
    is due at ``hold_until`` (the sweeper's re-send, should no wake come)."""

    mode: str
    amount: int
    caps: tuple[int, int, int]
    hold_until: float

    def to_json(self, now: float) -> str:
        return json.dumps(
            {
                "mode": self.mode,
                "amount": int(self.amount),
                "caps": [int(cap) for cap in self.caps],
                "hold_until": self.hold_until,
                "now": now,
            }
        )


#: ``transition(billing=)`` for an ending that WaveSpeed provably did not bill (its
#: prediction failed, or the submit was refused before anything was created) ...
NOT_BILLED = "none"
#: ... and for one it may still bill (its prediction may complete after the job ended).
MAYBE_BILLED = "unconfirmed"


@dataclass(frozen=True)
class Outgoing:
    """A message to push on a list (a Celery queue) in the same atomic step that creates a
    record, only if it creates it: the store does not read it, it only places it."""

    list_key: str
    payload: str


@dataclass(frozen=True)
class NewJob:
    """A record to create, with its idempotency key, extra bookkeeping fields, and the
    message that starts it (None: the caller sends one itself). ``fingerprint`` stands for
    the request behind the key (``request_fingerprint``): the key used again with another
    fingerprint is an ``IdempotencyConflictError``; None checks nothing."""

    record: JobRecord
    idempotency_key: str | None = None
    extra: Mapping[str, str] | None = None
    message: Outgoing | None = None
    fingerprint: str | None = None


def request_fingerprint(*parts: Any) -> str:
    """A short digest of a request as a caller made it (JSON-able parts: model, body,
    options), stored with its idempotency key."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


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
    #: ``callback_url`` and the delivery fields of ``JobState`` that the chain has.
    callback: dict[str, Any] = dataclasses.field(default_factory=dict)


#: The public callback fields (on a job's record, and on a chain's), and how they read back.
CALLBACK_FIELDS: Mapping[str, type] = {
    "callback_url": str,
    "callback_attempts": int,
    "callback_status": int,
    "callback_delivered_at": float,
    "callback_failed_at": float,
}


@dataclass(frozen=True)
class CancelResult:
    """What ``cancel`` did to one job: ``status`` is ``cancelled`` when this call cancelled
    it, else the status it had already ended with; None when there is no such job."""

    job_id: str
    status: JobStatus | None
    cancelled_now: bool
    #: Why, in the words the record's error keeps (only when cancelled now).
    message: str = ""


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
        self._claim_callback = client.register_script(_CLAIM_CALLBACK_LUA)
        self._finish_callback = client.register_script(_FINISH_CALLBACK_LUA)
        self._prune_index = client.register_script(_PRUNE_INDEX_LUA)

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
        fingerprint: str | None = None,
    ) -> tuple[str, bool]:
        """Write a new record. Returns ``(job_id, created)``; with an idempotency key
        already used, returns the first job's id and ``created=False`` (or raises
        ``IdempotencyConflictError`` if its ``fingerprint`` differs, see ``NewJob``)."""
        return self.create(NewJob(record, idempotency_key, extra, fingerprint=fingerprint))

    def create(self, job: NewJob) -> tuple[str, bool]:
        """``create_job`` for a ``NewJob`` (and its message, if any): one round trip.
        ``IdempotencyConflictError`` when its key was used for another request."""
        keys, args = self._create_call(job)
        job_id = str(self._create(keys=keys, args=args))
        if job_id.startswith("!"):
            raise _conflict({"idempotency_key": _conflict_why(job_id)}, job_id)
        return job_id, job_id == job.record.id

    def create_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        """Write many new records in one round trip (each atomically, as ``create_job``).
        Keys used before for other requests are one ``IdempotencyConflictError`` naming
        each (``itemN.idempotency_key``, N from 0), raised after the others were written."""
        calls = [(self._create, *self._create_call(job)) for job in jobs]
        replies = [str(job_id) for job_id in self._scripted_pipeline(calls)]
        conflicts = {
            f"item{index}.idempotency_key": _conflict_why(reply)
            for index, reply in enumerate(replies)
            if reply.startswith("!")
        }
        if conflicts:
            first = next(reply for reply in replies if reply.startswith("!"))
            raise _conflict(conflicts, first)
        return [
            (job_id, job_id == job.record.id) for job, job_id in zip(jobs, replies, strict=True)
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
        # Inline images go under their own keys; the request holds markers (see
        # worker.inline_images): no record ever holds the bytes.
        body, inline = split_inline(record.input)
        if inline:
            fields[INLINE_FIELD] = "1"
        # Until the deadline, then as long as an ended record: retry_chain may need it.
        inline_ttl = max(1, math.ceil(record.deadline_at - record.created_at)) + self.record_ttl
        use_key = job.idempotency_key is not None
        place = index_place(record.status.value, record.model, record.tenant)
        keys = [
            JOB_KEY.format(job_id=record.id),
            DEADLINES_KEY,
            IDEMPOTENCY_KEY.format(key=job.idempotency_key) if use_key else DEADLINES_KEY,
            NEXT_RUN_KEY,
            REQUEST_KEY.format(job_id=record.id),
            LIVE_KEY,
            job.message.list_key if job.message is not None else DEADLINES_KEY,
            TENANT_LIVE_KEY,
            JOBS_INDEX_KEY.format(place=place),
            JOBS_REGISTRY_KEY,
            *(INLINE_KEY.format(image_id=image_id) for image_id in inline),
        ]
        args = [
            record.id,
            # As the record stores them (to the millisecond): the index members made from
            # them must match what later writes make from the record's fields.
            _encode(record.deadline_at, "deadline_at"),
            self.record_ttl,
            "1" if use_key else "0",
            _encode(record.created_at, "created_at"),
            Request(body, record.metadata).to_json(),
            f"{record.status.value}|{record.model}",
            job.message.payload if job.message is not None else "",
            len(inline),
            inline_ttl,
            f"{record.status.value}|{record.tenant}",
            job.fingerprint or "",
            f"{record.model}|{record.tenant}",
            *inline.values(),
            *(item for pair in fields.items() for item in pair),
        ]
        return keys, args

    def create_chain(
        self,
        chain_id: str,
        step_job_ids: list[str],
        *,
        metadata: Mapping[str, Any],
        callback_url: str | None = None,
    ) -> None:
        """The chain's record. With a ``callback_url``, its steps must have been created
        with ``chain_callback`` = "1" (their endings put the chain in the outbox)."""
        mapping: dict[str | bytes, bytes | str | int | float] = {
            "id": chain_id,
            "steps": json.dumps(step_job_ids),
            "replaced": "[]",
            "created_at": repr(self.clock()),
            "metadata": json.dumps(dict(metadata)),
        }
        if callback_url:
            mapping["callback_url"] = callback_url
        self.client.hset(CHAIN_KEY.format(chain_id=chain_id), mapping=mapping)  # type: ignore[arg-type]

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

    def snapshots(self, job_ids: Sequence[str]) -> list[JobSnapshot | None]:
        """``snapshot`` of each job in one round trip; None where a record is missing or
        this version cannot read it (the sweeper's rules deal with those)."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(JOB_KEY.format(job_id=job_id))
        found: list[JobSnapshot | None] = []
        for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
            try:
                found.append(JobSnapshot(decode_state(raw, job_id), raw) if raw else None)
            except UnreadableRecordError:
                found.append(None)
        return found

    def prediction_owner(self, prediction_id: str) -> str | None:
        """The job that claimed ``prediction_id`` (``PREDICTION_OWNER_KEY``), if any."""
        owner = self.client.get(PREDICTION_OWNER_KEY.format(prediction_id=prediction_id))
        return None if owner is None else str(owner)

    def request(self, job_id: str) -> Request:
        """The job's request (what is sent to WaveSpeed, and the producer's metadata)."""
        text = self.client.get(REQUEST_KEY.format(job_id=job_id))
        if text is None:
            raise JobNotFoundError(f"no request for job {job_id!r} (expired, or never created)")
        return Request.from_json(str(text), job_id)

    def inline_images(self, image_ids: Sequence[str]) -> dict[str, str]:
        """The data URIs of these inline images (one round trip); a missing one (uploaded
        and deleted, or expired) is left out."""
        if not image_ids:
            return {}
        found = self.client.mget([INLINE_KEY.format(image_id=i) for i in image_ids])
        return {i: str(uri) for i, uri in zip(image_ids, found, strict=True) if uri is not None}

    def drop_inline_images(self, image_ids: Sequence[str]) -> None:
        """Forget inline images once uploaded (their URL is in the request now)."""
        if image_ids:
            self.client.delete(*(INLINE_KEY.format(image_id=i) for i in image_ids))

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

    def idempotent_job(self, key: str) -> str | None:
        """The job an idempotency key named, if the key is still kept."""
        value = self.client.get(IDEMPOTENCY_KEY.format(key=key))
        return str(value).split(" ", 1)[0] if value else None

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
            callback=_callback_fields(raw),
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
        live_at: float | None = None,
        defer_until: float | None = None,
        claim: Claim | None = None,
        budget: Budget | None = None,
        billing: str = "",
    ) -> Moved:
        """Apply ``updates``/``increments`` iff the record is live, every ``expect`` field
        matches, the status change (if any) is one ``MOVES`` allows and ``claim``'s key
        is free or already this job's.

        ``count`` are global counter fields (``counter_field``) bumped whatever happens
        (an HTTP call that was made); ``count_if_applied`` only when the change is applied,
        in the same atomic step (so a job's ending is counted exactly once), like
        ``effects`` (histogram and latency-sample writes). ``request`` replaces the job's
        request body (a chain step's input image, filled in at run time). ``live_at``:
        refuse (``PAST_DEADLINE``) if the job's deadline is at or before it. An update of
        ``next_run_at``/``deadline_at`` also updates the sweeper's indexes; a move into a
        terminal status expires, unindexes and announces the record. ``defer_until``: the
        caller sends no message for the job's next poll; it goes into ``DUE_POLLS_KEY`` with
        this score, for a dispatcher (``claim_due_polls``) to send when due. ``budget``:
        check the daily budgets first (see ``Budget``; ``Moved.HELD``, ``OVER_BUDGET`` and
        ``WITHIN_BUDGET`` answer it).

        Cost: the write that first records a positive ``updates["cost_micros"]`` (a
        completed prediction's bill, whatever status it moves the job to) bills it to
        today's spend (``SPEND_KEY``) under the job's tenant and gives back the job's
        reservation. A move into a terminal status without a bill gives the reservation
        back, sets ``cost_micros`` 0 and, when WaveSpeed may still bill the job
        (``billing``: ``MAYBE_BILLED``, or by default when it has a prediction or a
        claimed submit; ``NOT_BILLED`` says it cannot), counts its estimate as
        unconfirmed spend.
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
            live_at=live_at,
            defer_until=defer_until,
            claim=claim,
            budget=budget,
            billing=billing,
        )
        return Moved(int(self._transition(keys=keys, args=args)))

    def transition_and_read_request(
        self,
        job_id: str,
        *,
        expect: Mapping[str, str | list[str]],
        updates: Mapping[str, Any],
        increments: Mapping[str, int] | None = None,
        live_at: float | None = None,
        budget: Budget | None = None,
    ) -> tuple[Moved, Request | None]:
        """``transition()`` and the job's request in one round trip (the submit claim,
        which needs the body it is about to POST). The request is None when not applied."""
        keys, args = self._transition_call(
            job_id, expect, updates, increments, live_at=live_at, budget=budget
        )
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
        live_at: float | None = None,
        defer_until: float | None = None,
        claim: Claim | None = None,
        budget: Budget | None = None,
        billing: str = "",
    ) -> tuple[list[str], list[Any]]:
        fields = {k: _encode(v, k) for k, v in (updates or {}).items()}
        now = self.clock()
        keys = [
            JOB_KEY.format(job_id=job_id),
            REQUEST_KEY.format(job_id=job_id),
            IN_FLIGHT_KEY,
            DEADLINES_KEY,
            NEXT_RUN_KEY,
            COUNTERS_KEY,
            LIVE_KEY,
            DAILY_KEY.format(day=utc_day(now)),
            LINE_INDEX_KEY,
            LINE_KEY,
            DUE_POLLS_KEY,
            CALLBACKS_KEY,
            SPEND_KEY.format(day=utc_day(now)),
            RESERVED_KEY,
            BUDGETS_KEY,
            HELD_KEY,
            TENANT_LIVE_KEY,
            DEPTH_KEY,
            CREDIT_KEY,
        ]
        ops = []
        for effect in effects:
            keys.append(effect.key)
            ops.append([effect.op, len(keys), effect.a, effect.b])
        claimed = ""
        if claim is not None:
            keys.append(claim.key)
            claimed = json.dumps([len(keys), claim.value, claim.ttl])
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
            write_id or new_write_id(),
            request.to_json() if request is not None else "",
            json.dumps(ops),
            DAILY_TTL,
            repr(defer_until) if defer_until is not None else "",
            "" if live_at is None else repr(live_at),
            now + CALLBACK_SEND_GRACE,
            claimed,
            "" if budget is None else budget.to_json(now),
            billing,
            JOBS_INDEX_PREFIX,
            repr(now),
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

    def prune_index(self, entries: Sequence[tuple[str, str]], pairs: Iterable[str] = ()) -> None:
        """Drop list index entries (``(set key, member)``) whose record is gone (it expired
        while live), and the registry's ``model|tenant`` pairs that have no set left
        (``worker.job_listing``)."""
        wanted = sorted(set(pairs))
        if entries or wanted:
            keys = [JOBS_REGISTRY_KEY, *(key for key, _ in entries)]
            body = {
                "members": [member for _, member in entries],
                "pairs": wanted,
                "statuses": [status.value for status in JobStatus],
            }
            self._prune_index(keys=keys, args=[JOBS_INDEX_PREFIX, json.dumps(body)])

    # cancelling ---------------------------------------------------------------

    def cancel(self, job_ids: Sequence[str]) -> list[CancelResult]:
        """End every live job of ``job_ids`` ``cancelled``, all in one atomic step (a
        chain's steps together), whatever each is doing; jobs that ended already keep their
        ending. Idempotent: cancelling again changes nothing and says how each had ended.

        A job not yet submitted is never submitted: its submit claim finds it ended. A job
        whose submit POST is in flight, or that WaveSpeed already runs, ends at once too;
        the answer or result that arrives later is refused (terminal), and the prediction
        may still be billed: WaveSpeed has no cancel endpoint. The error says which case it
        was; ``jobs_cancelled`` counts each job once, by model and ``stage``."""
        ids = list(dict.fromkeys(job_ids))
        results: dict[str, CancelResult] = {}
        self.client.script_load(_TRANSITION_LUA)  # MULTI cannot load it on NOSCRIPT
        pending = ids
        # A job that moved on between the read and the write (a submit claimed meanwhile)
        # is read again: statuses only move forward, so this ends within a few rounds.
        for _ in range(len(JobStatus) + 1):
            if not pending:
                break
            pending = self._cancel_round(pending, results)
        if pending:
            raise RuntimeError(f"cancel did not settle for job(s) {pending}")
        return [results[job_id] for job_id in ids]

    def _cancel_round(self, job_ids: list[str], results: dict[str, CancelResult]) -> list[str]:
        read = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            read.hgetall(JOB_KEY.format(job_id=job_id))
        live: list[tuple[str, dict[str, str], str, str]] = []
        for job_id, raw in zip(job_ids, read.execute(), strict=True):
            if not raw:
                results[job_id] = CancelResult(job_id, None, cancelled_now=False)
                continue
            state = decode_state(raw, job_id)
            if state.is_terminal:
                results[job_id] = CancelResult(job_id, state.status, cancelled_now=False)
                continue
            stage, message = _cancel_stage(raw)
            live.append((job_id, raw, stage, message))
        if not live:
            return []
        now = self.clock()
        write = self.client.pipeline(transaction=True)
        for job_id, raw, stage, message in live:
            keys, args = self._transition_call(
                job_id,
                {
                    "prediction_id": raw.get("prediction_id", ""),
                    "submit_token": raw.get("submit_token", ""),
                },
                {
                    "status": JobStatus.CANCELLED.value,
                    "error": {"code": "cancelled", "message": message},
                    "completed_at": now,
                },
                None,
                count_if_applied=[
                    counter_field("jobs_cancelled", model=raw.get("model", ""), stage=stage),
                    counter_field("jobs_ended", model=raw.get("model", ""), outcome="cancelled"),
                ],
            )
            write.evalsha(self._transition.sha, len(keys), *keys, *args)
        again = []
        for (job_id, _, _, message), moved in zip(live, write.execute(), strict=True):
            verdict = Moved(int(moved))
            if verdict is Moved.APPLIED:
                results[job_id] = CancelResult(job_id, JobStatus.CANCELLED, True, message)
            else:
                again.append(job_id)  # moved on, or ended, meanwhile: read it again
        return again

    # callbacks ----------------------------------------------------------------

    def claim_callback(
        self, member: str, token: str, *, now: float, lease: float, early: float = 1.0
    ) -> CallbackClaim:
        """Take the right to POST the callback of outbox ``member`` (``job:<id>`` or
        ``chain:<id>``) for ``lease`` seconds; see ``ClaimVerdict`` for what else it may
        find. Only one copy of a delivery message can hold it at a time."""
        is_job = "1" if member.startswith("job:") else "0"
        reply = self._claim_callback(
            keys=[self._callback_record_key(member), CALLBACKS_KEY],
            args=[member, token, repr(now), repr(now + lease), early, is_job],
        )
        verdict = ClaimVerdict(_text(reply[0]))
        if verdict is ClaimVerdict.CLAIMED:
            first = _text(reply[5])
            return CallbackClaim(
                verdict,
                url=_text(reply[1]),
                delivered_ending=_text(reply[2]),
                attempts_for=_text(reply[3]),
                attempts=int(_text(reply[4])),
                first_attempt_at=float(first) if first else None,
            )
        if verdict is ClaimVerdict.EARLY:
            return CallbackClaim(verdict, due_at=float(_text(reply[1])))
        return CallbackClaim(verdict)

    def finish_callback(
        self,
        member: str,
        token: str,
        *,
        outcome: str,
        ending: str = "",
        status: int | None = None,
        now: float = 0.0,
        due_at: float = 0.0,
        send_at: float = 0.0,
        count: Sequence[str] = (),
    ) -> bool:
        """Record what the claimed attempt did, iff ``token`` still holds the claim:
        ``delivered`` (a 2xx), ``retry`` (next attempt at ``due_at``; the sweeper sends a
        message at ``send_at`` unless one is on its way), ``failed`` (given up) or ``skip``
        (nothing to deliver: a chain still running, or an ending delivered already).
        ``status``: the HTTP status answered, 0 for none, None when nothing was sent.
        ``count``: counter fields bumped iff recorded."""
        done = self._finish_callback(
            keys=[self._callback_record_key(member), CALLBACKS_KEY, COUNTERS_KEY],
            args=[
                member,
                token,
                outcome,
                "" if status is None else str(status),
                repr(now),
                ending,
                repr(due_at),
                repr(send_at),
                json.dumps(list(count)),
            ],
        )
        return bool(done)

    def callbacks_due(self, now: float, limit: int) -> list[str]:
        """Outbox members whose delivery message the sweeper should send now, oldest first."""
        members: list[str] = self.client.zrangebyscore(CALLBACKS_KEY, "-inf", now, 0, limit)  # type: ignore[assignment]
        return members

    def callbacks_owed(self, members: Sequence[str]) -> list[str]:
        """Those of ``members`` that are in the outbox (one round trip)."""
        if not members:
            return []
        scores = self.client.zmscore(CALLBACKS_KEY, list(members))
        return [m for m, score in zip(members, scores, strict=True) if score is not None]

    def callbacks_sent(self, members: Sequence[str], until: float) -> None:
        """The sweeper is sending these members' messages: not again before ``until`` (XX:
        an entry delivered meanwhile stays gone). Called before sending, never after."""
        if members:
            self.client.zadd(CALLBACKS_KEY, dict.fromkeys(members, until), xx=True)

    @staticmethod
    def _callback_record_key(member: str) -> str:
        kind, _, record_id = member.partition(":")
        if kind == "job":
            return JOB_KEY.format(job_id=record_id)
        if kind == "chain":
            return CHAIN_KEY.format(chain_id=record_id)
        raise ValueError(f"not a callbacks outbox member: {member!r}")

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
