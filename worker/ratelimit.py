"""The WaveSpeed account limits, shared by every worker through Redis.

Celery's ``rate_limit`` is per worker; WaveSpeed's limits are per account: N
images per minute, counted (like the emulator's ``--rate-limit-per-minute``) over
a sliding 60 s window, and a cap on predictions in flight. One Lua script, run on
Redis ``TIME`` (one clock for every worker, whatever the hosts' clocks say),
grants a submit or says how long to wait, from four rules:

* **One schedule** (GCRA with reservations). Submits get slots ``(60 + margin +
  slack) / N`` seconds apart per image; ``tat`` (the theoretical arrival time) is
  the end of the schedule. A submit is granted at once if, with its images, the
  schedule runs at most ``burst_seconds`` ahead of now, so an idle fleet may start a
  couple of seconds' worth at once; otherwise the job is given its own slot at the
  end and told to come back then. The slot is reserved (nobody else can take it), so
  waiting jobs come back one by one, not all together at every token, and a job
  that comes back early keeps its slot. A slot nobody claims within a window of
  its time lapses (its job failed or timed out meanwhile).
* **The window.** A log of actual grants (a sorted set scored by when each leaves
  the window, with a running total) admits a job only if the grants of the last
  ``60 + margin`` seconds plus its images stay within N: the server's own rule,
  so this is the guarantee that no 60 s window at WaveSpeed ever holds more than N,
  provided no POST arrives more than ``margin`` seconds after its grant (the
  margin is that allowance). The schedule alone would let ``burst + N`` through a
  window after an idle spell; the log makes that first burst wait for room.
* **The in-flight cap**, as before: a slot per job in a sorted set scored by
  expiry, so a slot a crashed worker never released ages out by itself; a job's
  terminal transition removes its slot (see ``store.transition``).
* **The fair line** (``worker.fairness``). A job that cannot be granted at once does not
  take a slot at the end of the schedule (that would serve jobs in arrival order, and
  one tenant's backlog ahead of everyone): it joins the line, with no message, and each
  call hands the slots of the next ``horizon`` seconds (while the in-flight cap has room
  for every slot given out) to the jobs in line, tenant by weighted round robin. The
  caller sends their messages (``Permit.admitted``, ``give_out``).
* **A fleet-wide pause.** ``pause()`` (a remote 429: its ``Retry-After``, or
  ``DEFAULT_PAUSE_SECONDS``) makes every ``acquire`` on every worker answer "wait"
  until Redis time passes the pause end. A pause only ever extends, and moves the
  whole schedule back by what it adds (reserved slots are stored relative to a
  ``shift``), so the jobs waiting out a pause come back spread out as before.

Why the slack: slots run ``slack`` seconds per N images slower than the log's
window, so a job that is granted a little after its slot (Celery countdowns,
jitter) does not leave its successor one window later without room, and waiting
on the log stays the exception. A saturated fleet therefore gets N images per
``60 + margin + slack`` seconds: 96.8% of N with the defaults (1.5 s + 0.5 s).

Why not one token bucket: a bucket of capacity B refilled at r lets ``B + r*60``
through in 60 s. The old one started full with a whole minute (B = N): about 2N
in the first window. Safe needs ``B + r*(60 + margin) <= N``, which costs B/N of
the rate on top of the margin (at the 2/min tier, half of it); the log is exact.

**A job larger than the limit** (``images`` > N) or than the burst is never
blocked forever: it waits until the schedule is not ahead of now (and, above N,
until the log is empty), is granted, and takes ``images`` slots of the schedule;
its log entry holds the window ``images / N`` times as long. So the average stays
at N per window. (The server may still refuse a single request above its
per-minute limit; no limiter can help that one.)

State: ``RATE_BUCKET_KEY`` (hash: ``tat``, ``shift``, ``paused_until``,
``pause_reason``, the log's running total ``logged`` and a grant ``seq``),
``RATE_LOG_KEY``, ``RATE_RESERVED_KEY`` (slots given to jobs of the line), ``IN_FLIGHT_KEY``,
and the line's keys (``worker.fairness``). Times are Redis ``TIME``
seconds; tests pass ``now`` to drive the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from worker.constants import COUNTERS_KEY, IN_FLIGHT_KEY, KEY_PREFIX, RATE_BUCKET_KEY
from worker.fairness import (
    CREDIT_KEY,
    DEFAULT_HORIZON_SECONDS,
    DEPTH_KEY,
    LINE_INDEX_KEY,
    LINE_KEY,
    LINE_LUA,
    line_member,
    weights_json,
)
from worker.settings import Settings
from worker.tenants import DEFAULT_WEIGHT

#: Grants in the window (members ``<seq>:<images>``, scored by when they leave it).
RATE_LOG_KEY = KEY_PREFIX + "ratelimit:log"
#: Reserved slots of jobs told to come back (job id, scored by slot time - shift).
RATE_RESERVED_KEY = KEY_PREFIX + "ratelimit:reserved"

WINDOW_SECONDS = 60.0
#: How late after its grant a POST may reach WaveSpeed and still count inside our window.
DEFAULT_MARGIN_SECONDS = 1.5
#: How much slower than the window the schedule runs, per N images (see the docstring).
DEFAULT_SLACK_SECONDS = 0.5
#: How far ahead of now the schedule may run and still grant at once.
DEFAULT_BURST_SECONDS = 2.0
#: A 429 without ``Retry-After`` pauses the fleet this long.
DEFAULT_PAUSE_SECONDS = 10.0
#: No ``Retry-After`` (a bogus date, say) stops the whole fleet for longer than this.
MAX_PAUSE_SECONDS = 600.0
_MAX_REASON_LENGTH = 200

_NOW_LUA = """
local now
if ARGV[#ARGV] ~= '' then
  now = tonumber(ARGV[#ARGV])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local function fmt(x) return string.format('%.6f', x) end
"""

_ACQUIRE_LUA = (
    _NOW_LUA
    + """
-- KEYS: 1 state hash, 2 in-flight zset, 3 grant log zset, 4 reserved slots zset,
--       5 the line, 6 its index, 7 depth per tenant, 8 round-robin credit, 9 counters
--       (worker.fairness)
-- ARGV: 1 per_minute, 2 max_in_flight, 3 job_id ('' = only hand out slots), 4 images,
--       5 slot_ttl, 6 window (log, seconds), 7 interval (schedule, seconds per image),
--       8 burst (seconds), 9 the job's deadline ('' = none), 10 its line member,
--       11 weights (JSON), 12 default weight, 13 horizon (seconds), 14 now ('' = TIME)
local K_LINE, K_INDEX, K_DEPTH, K_CREDIT = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local WEIGHTS = cjson.decode(ARGV[11])
local DEFAULT_WEIGHT = tonumber(ARGV[12])
__LINE_LUA__
local limit = tonumber(ARGV[1])
local max_in_flight = tonumber(ARGV[2])
local job = ARGV[3]
local cost = tonumber(ARGV[4])
local window = tonumber(ARGV[6])
local interval = tonumber(ARGV[7])
local burst = tonumber(ARGV[8])
local horizon = tonumber(ARGV[13])
local function cost_of(member) return tonumber(string.match(member, ':(%d+)$')) end

local s = redis.call('HMGET', KEYS[1], 'tat', 'shift', 'paused_until', 'logged', 'seq')
local tat = tonumber(s[1]) or now
local shift = tonumber(s[2]) or 0
local paused_until = tonumber(s[3]) or 0
local logged = tonumber(s[4]) or 0
local seq = tonumber(s[5]) or 0

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
-- A slot given out whose job never came for it (its message was lost): the slot lapses and
-- the job goes back to the front of its tenant's line (unless it ended meanwhile).
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - window - shift)
if #lapsed > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window - shift)
  for _, id in ipairs(lapsed) do
    local member = redis.call('HGET', K_INDEX, id)
    if member then line_front(member) end
  end
end
-- Grants whose window has passed leave the log.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #expired > 0 then
  for _, member in ipairs(expired) do logged = logged - cost_of(member) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
if logged < 0 or redis.call('ZCARD', KEYS[3]) == 0 then logged = 0 end
if #expired > 0 then redis.call('HSET', KEYS[1], 'logged', logged) end

-- When the window has room for this job's images, or when it will have.
local function window_ready()
  local room_needed = limit - math.min(cost, limit)  -- above N: an empty window
  if logged <= room_needed then return nil end
  if room_needed == 0 then
    return tonumber(redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')[2])
  end
  local need = logged - room_needed
  local oldest = redis.call('ZRANGE', KEYS[3], 0, need - 1, 'WITHSCORES')
  local freed, ready = 0, now
  for i = 1, #oldest, 2 do
    freed = freed + cost_of(oldest[i])
    ready = tonumber(oldest[i + 1])
    if freed >= need then break end
  end
  return ready
end

-- Hand out the slots of the next `horizon` seconds (at least one, if none is out) to the
-- jobs in the line, tenant by weighted round robin, while the in-flight cap has room for
-- every slot given out. Returns {job, seconds to its slot, ...}; `late`: this caller's
-- deadline when it was taken but could not get a slot before it.
local late
local function give_out()
  local picked = {}
  local counts = redis.call('HGETALL', K_DEPTH)
  if #counts == 0 then return picked end
  local active = {}
  for i = 1, #counts, 2 do table.insert(active, counts[i]) end
  local credit = {}
  local stored = redis.call('HMGET', K_CREDIT, unpack(active))
  for i, tenant in ipairs(active) do credit[tenant] = tonumber(stored[i]) or 0 end
  local reserved = redis.call('ZCARD', KEYS[4])
  local room = max_in_flight - redis.call('ZCARD', KEYS[2]) - reserved
  local moved = false
  while room > 0 and #active > 0 do
    local earliest = math.max(now, paused_until, tat - math.max(0, burst - interval))
    if reserved > 0 and earliest > now + horizon then break end
    local tenant = pick_tenant(active, credit)
    moved = true
    local member = first_of(tenant)
    local emptied
    if member then
      redis.call('ZREM', K_LINE, member)
      emptied = tenant_left(tenant)
    else  -- a depth without jobs (should not happen): forget the tenant
      redis.call('HDEL', K_DEPTH, tenant)
      redis.call('HDEL', K_CREDIT, tenant)
      emptied = true
    end
    if emptied then
      local still = {}
      for _, other in ipairs(active) do if other ~= tenant then table.insert(still, other) end end
      active = still
      credit[tenant] = nil
    end
    if member then
      local _, images, deadline, id = parts(member)
      local slot = math.max(now, paused_until, tat - math.max(0, burst - images * interval))
      if deadline and slot > deadline then
        -- No slot before its deadline: none is spent on it (the sweeper times it out).
        redis.call('HDEL', K_INDEX, id)
        if id == job then late = deadline end
      else
        tat = math.max(tat, slot) + images * interval
        redis.call('ZADD', KEYS[4], fmt(slot - shift), id)
        reserved = reserved + 1
        room = room - 1
        table.insert(picked, id)
        table.insert(picked, fmt(slot - now))
      end
    end
  end
  if moved then
    redis.call('HSET', KEYS[1], 'tat', fmt(tat))
    for _, tenant in ipairs(active) do redis.call('HSET', K_CREDIT, tenant, credit[tenant]) end
  end
  return picked
end

local grant
-- The caller's answer, with the slots given out to others (the caller sends their messages).
local function answer(granted, wait, reason)
  local picked = give_out()
  local rest = {}
  for i = 1, #picked, 2 do
    if picked[i] == job then
      -- The caller itself got a slot: used at once if it is now (no run wasted on coming
      -- back), else it comes back at its time.
      if tonumber(picked[i + 1]) <= 0 and paused_until <= now and not window_ready() then
        grant()
        granted, wait, reason = 1, '0', 'granted'
      else
        -- Within a millisecond of the pause's end is the pause (the wait is rounded to
        -- the microsecond: a slot at the end of the pause came out a hair later).
        local waits_out_pause = paused_until > now
          and now + tonumber(picked[i + 1]) <= paused_until + 0.001
        granted, wait, reason = 0, picked[i + 1], waits_out_pause and 'paused' or 'rate'
      end
    else
      table.insert(rest, picked[i])
      table.insert(rest, picked[i + 1])
    end
  end
  if late and reason ~= 'rate' then
    granted, wait, reason = 0, fmt(math.max(0, late - now)), 'late'
  end
  return {granted, wait, reason, unpack(rest)}
end

if job == '' then return answer(0, '0', 'none') end
local my_member = ARGV[10]
local tenant = parts(my_member)

grant = function()
  seq = seq + 1
  -- A job larger than the window holds it proportionally longer: N per window on average.
  redis.call('ZADD', KEYS[3], fmt(now + window * math.max(1, cost / limit)), seq .. ':' .. cost)
  redis.call('HSET', KEYS[1], 'logged', logged + cost, 'seq', seq)
  redis.call('ZADD', KEYS[2], fmt(now + tonumber(ARGV[5])), job)
  redis.call('ZREM', KEYS[4], job)
  redis.call('HDEL', K_INDEX, job)
  redis.call('HINCRBY', KEYS[9], 'tenant_admitted|tenant=' .. tenant, 1)
end

local holds_slot = redis.call('ZSCORE', KEYS[2], job)
local slot = tonumber(redis.call('ZSCORE', KEYS[4], job))
if slot then
  slot = slot + shift
  -- Early: the slot stays this job's, nobody else takes it. (Within a millisecond is on
  -- time: slots are stored to the microsecond.)
  if slot - now > 0.001 then return {0, fmt(slot - now), 'rate'} end
  -- Its slot has come. It still needs the pause over and room in the window; until
  -- then it keeps its slot.
  if paused_until > now then return {0, fmt(paused_until - now), 'paused'} end
  local ready = window_ready()
  if ready then return {0, fmt(ready - now), 'rate'} end
  if not holds_slot and redis.call('ZCARD', KEYS[2]) >= max_in_flight then
    -- Slots given out never exceed the cap's room; this is a slot that aged out late,
    -- or a cap lowered meanwhile: back to the front of the line.
    redis.call('ZREM', KEYS[4], job)
    line_front(redis.call('HGET', K_INDEX, job) or my_member)
    return answer(0, '1', 'in_flight')
  end
  grant()
  return answer(1, '0', 'granted')
end

local indexed = redis.call('HGET', K_INDEX, job)
if indexed and redis.call('ZSCORE', K_LINE, indexed) then
  -- Already in line (another copy of its message, or the sweeper's re-send): it stays.
  return answer(0, '1', 'queued')
end

if holds_slot then
  -- Admitted already (a copy of a granted job's message): it takes no slot from the line.
  local at = math.max(now, paused_until, tat - math.max(0, burst - cost * interval))
  if at > now then return {0, fmt(at - now), 'rate'} end
  local ready = window_ready()
  if ready then return {0, fmt(ready - now), 'rate'} end
  tat = math.max(tat, at) + cost * interval
  redis.call('HSET', KEYS[1], 'tat', fmt(tat))
  grant()
  return answer(1, '0', 'granted')
end

-- Nobody waits and the slot is now: granted at once (an idle account's only path).
local full = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[4]) >= max_in_flight
if not full and redis.call('HLEN', K_DEPTH) == 0 and paused_until <= now then
  local at = math.max(now, tat - math.max(0, burst - cost * interval))
  if at <= now and not window_ready() then
    tat = math.max(tat, at) + cost * interval
    redis.call('HSET', KEYS[1], 'tat', fmt(tat))
    grant()
    return answer(1, '0', 'granted')
  end
end
-- Otherwise into the line, and the round robin decides who gets the next slots.
line_add(my_member)
return answer(0, '1', full and 'in_flight' or 'queued')
"""
).replace("__LINE_LUA__", LINE_LUA)

_PAUSE_LUA = (
    _NOW_LUA
    + """
-- KEYS[1] state hash; ARGV: seconds, reason, now ('' = TIME). Only ever extends, and
-- moves the schedule (and every reserved slot, through `shift`) back by what it adds.
local ends = now + tonumber(ARGV[1])
local s = redis.call('HMGET', KEYS[1], 'paused_until', 'tat', 'shift')
local current = tonumber(s[1]) or 0
if ends <= current then return fmt(current) end
local added = ends - math.max(current, now)
redis.call('HSET', KEYS[1], 'paused_until', fmt(ends), 'pause_reason', ARGV[2],
  'tat', fmt(math.max(tonumber(s[2]) or now, now) + added),
  'shift', fmt((tonumber(s[3]) or 0) + added))
return fmt(ends)
"""
)


_RESUME_LUA = (
    _NOW_LUA
    + """
-- KEYS[1] state hash; ARGV: reason prefix, now ('' = TIME). Ends the pause now if its
-- latest reason starts with the prefix (what paused it is over); any other pause stands.
-- The schedule (and every reserved slot, through `shift`) comes forward by what is cut,
-- undoing what the pause had moved it back by.
local s = redis.call('HMGET', KEYS[1], 'paused_until', 'pause_reason', 'tat', 'shift')
local ends = tonumber(s[1]) or 0
if ends <= now then return 0 end
if string.sub(s[2] or '', 1, #ARGV[1]) ~= ARGV[1] then return 0 end
local cut = ends - now
redis.call('HSET', KEYS[1], 'paused_until', fmt(now),
  'tat', fmt(math.max(now, (tonumber(s[3]) or now) - cut)),
  'shift', fmt((tonumber(s[4]) or 0) - cut))
return 1
"""
)


@dataclass(frozen=True)
class Admission:
    """A job in the line that was given a submission slot: send its message so that it
    runs in ``wait`` seconds (``worker.fairness``)."""

    job_id: str
    wait: float


@dataclass(frozen=True)
class Permit:
    granted: bool
    #: When not granted: seconds until it is worth asking again (this job's slot).
    wait: float
    #: "granted", or what refused: "rate", "paused", "late" (no slot before the job's
    #: deadline), or "queued" / "in_flight": the job waits in the line with no message
    #: until it is given a slot.
    reason: str = "granted"
    #: Other jobs of the line given slots by this call: the caller sends their messages.
    admitted: tuple[Admission, ...] = ()

    @property
    def in_line(self) -> bool:
        return self.reason in ("queued", "in_flight")


@dataclass(frozen=True)
class PauseState:
    #: Redis time (Unix seconds) at which the fleet-wide pause ends; 0.0 if never paused.
    until: float
    #: Why the latest extension was made ("" if never paused).
    reason: str
    #: Seconds left, 0.0 when not paused.
    remaining: float

    @property
    def active(self) -> bool:
        return self.remaining > 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _now_arg(now: float | None) -> str:
    return "" if now is None else repr(float(now))


def _admissions(flat: list[Any]) -> tuple[Admission, ...]:
    return tuple(Admission(_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2))


class AccountLimiter:
    """The images-per-minute schedule and window, the in-flight cap and the fleet-wide
    pause, shared by all workers through Redis (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        per_minute: int,
        max_in_flight: int,
        margin: float = DEFAULT_MARGIN_SECONDS,
        slack: float = DEFAULT_SLACK_SECONDS,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        default_pause: float = DEFAULT_PAUSE_SECONDS,
        tenant_weights: Mapping[str, int] | None = None,
        horizon: float = DEFAULT_HORIZON_SECONDS,
    ) -> None:
        if per_minute < 1 or max_in_flight < 1:
            raise ValueError("per_minute and max_in_flight must be at least 1")
        self.per_minute = per_minute
        self.max_in_flight = max_in_flight
        #: The log counts grants over this many seconds: the server's 60 s plus the margin.
        self.window = WINDOW_SECONDS + max(0.0, margin)
        #: Seconds between slots on the schedule, per image.
        self.interval = (self.window + max(0.0, slack)) / per_minute
        #: How far ahead of now the schedule may be and still grant at once.
        self.burst = max(0.0, burst_seconds)
        self.default_pause = default_pause
        #: Round-robin weight per tenant (others: ``DEFAULT_WEIGHT``), as the script takes it.
        self._weights = weights_json(tenant_weights or {})
        #: Slots are given to jobs in the line this far ahead of their time.
        self.horizon = max(0.0, horizon)
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._pause = client.register_script(_PAUSE_LUA)
        self._resume = client.register_script(_RESUME_LUA)
        self._client = client

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> AccountLimiter:
        """The limiter every worker (and the webhook receiver) shares: the account's rate
        and in-flight cap, and the tenants' weights."""
        return cls(
            client,
            per_minute=settings.rate_limit_per_minute,
            max_in_flight=settings.max_in_flight,
            tenant_weights=settings.tenant_weight_map,
        )

    @property
    def steady_rate_per_minute(self) -> float:
        """What a saturated fleet gets: one image per ``interval``."""
        return WINDOW_SECONDS / self.interval

    def acquire(
        self,
        job_id: str,
        *,
        images: int,
        slot_ttl: float,
        deadline: float | None = None,
        member: str | None = None,
        now: float | None = None,
    ) -> Permit:
        """Take ``images`` of the rate and an in-flight slot for ``job_id``, or say how long
        to wait, or put it in the line (``Permit.in_line``: its run ends; it is sent again
        when given a slot). ``member``: its place in the line (``fairness.line_member``:
        tenant, priority, enqueue time); None: the default tenant, normal priority. A job
        whose slot would come after its ``deadline`` (Redis time) gets none (reason
        "late"). ``now`` (Redis ``TIME`` when None) is for tests."""
        if member is None:
            member = line_member(job_id, images=images, deadline=deadline)
        granted, wait, reason, *admitted = self._call(
            job_id, images=images, slot_ttl=slot_ttl, deadline=deadline, member=member, now=now
        )
        return Permit(
            granted=bool(int(granted)),
            wait=float(wait),
            reason=_text(reason),
            admitted=_admissions(admitted),
        )

    def give_out(self, *, now: float | None = None) -> tuple[Admission, ...]:
        """Give the slots free now (and up to ``horizon`` ahead) to jobs in the line, by
        weighted round robin: after an ending freed an in-flight slot, and on every sweeper
        pass (a lost message, a slot that aged out). The caller sends their messages."""
        _, _, _, *admitted = self._call("", images=1, slot_ttl=0, member="", now=now)
        return _admissions(admitted)

    def _call(
        self,
        job_id: str,
        *,
        images: int,
        slot_ttl: float,
        member: str,
        deadline: float | None = None,
        now: float | None = None,
    ) -> list[Any]:
        reply: list[Any] = self._acquire(
            keys=[
                RATE_BUCKET_KEY,
                IN_FLIGHT_KEY,
                RATE_LOG_KEY,
                RATE_RESERVED_KEY,
                LINE_KEY,
                LINE_INDEX_KEY,
                DEPTH_KEY,
                CREDIT_KEY,
                COUNTERS_KEY,
            ],
            args=[
                self.per_minute,
                self.max_in_flight,
                job_id,
                max(1, int(images)),
                slot_ttl,
                self.window,
                self.interval,
                self.burst,
                "" if deadline is None else repr(float(deadline)),
                member,
                self._weights,
                DEFAULT_WEIGHT,
                self.horizon,
                _now_arg(now),
            ],
        )
        return reply

    def release(self, job_id: str) -> None:
        """Give the slot back when a submit provably created nothing."""
        self._client.zrem(IN_FLIGHT_KEY, job_id)

    def in_flight(self) -> int:
        return int(self._client.zcard(IN_FLIGHT_KEY))

    def waiting(self) -> int:
        """Jobs in the line (every tenant)."""
        return int(self._client.zcard(LINE_KEY))

    def pause(self, seconds: float | None, reason: str, *, now: float | None = None) -> float:
        """Stop every worker's submits for ``seconds`` (``default_pause`` when None, at most
        ``MAX_PAUSE_SECONDS``) from Redis time now; a pause only ever extends. Returns when the
        pause ends (Redis time). ``reason`` is stored for operators: keep it short and free
        of secrets (e.g. "429 from WaveSpeed")."""
        length = self.default_pause if seconds is None else seconds
        length = min(max(0.0, float(length)), MAX_PAUSE_SECONDS)
        ends = self._pause(
            keys=[RATE_BUCKET_KEY],
            args=[repr(length), reason[:_MAX_REASON_LENGTH], _now_arg(now)],
        )
        return float(ends)

    def resume(self, reason_prefix: str, *, now: float | None = None) -> bool:
        """End the fleet-wide pause now if the reason it was last extended for starts with
        ``reason_prefix`` (the low-balance pause, once the balance is back); a pause for
        anything else (a 429) runs its course. True when a pause was ended."""
        ended = self._resume(keys=[RATE_BUCKET_KEY], args=[reason_prefix, _now_arg(now)])
        return bool(int(ended))

    def paused_until(self) -> float:
        """Redis time (Unix seconds) the fleet-wide pause ends; 0.0 if never paused. A gauge
        an exporter can show as is (compare with ``time()``)."""
        value = self._client.hget(RATE_BUCKET_KEY, "paused_until")
        return float(value) if value is not None else 0.0

    def pause_state(self, *, now: float | None = None) -> PauseState:
        """The pause end, its reason and the seconds left by Redis time (or ``now``)."""
        until, reason = self._client.hmget(RATE_BUCKET_KEY, ["paused_until", "pause_reason"])
        if now is None:
            seconds, micros = self._client.time()
            now = seconds + micros / 1e6
        ends = float(until) if until is not None else 0.0
        return PauseState(
            until=ends,
            reason=_text(reason) if reason is not None else "",
            remaining=max(0.0, ends - now),
        )
