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
``RATE_LOG_KEY``, ``RATE_RESERVED_KEY``, ``IN_FLIGHT_KEY``. Times are Redis ``TIME``
seconds; tests pass ``now`` to drive the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from worker.constants import IN_FLIGHT_KEY, KEY_PREFIX, PARKED_KEY, RATE_BUCKET_KEY, WAKING_KEY

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
-- Parked again after a wake: ahead of every job parked in the usual way.
local FRONT = 1e10
"""

_ACQUIRE_LUA = (
    _NOW_LUA
    + """
-- KEYS: 1 state hash, 2 in-flight zset, 3 grant log zset, 4 reserved slots zset,
--       5 parked jobs zset (waiting for an in-flight slot, scored by when they parked),
--       6 waking jobs zset (taken from the parked set and sent again, scored by when)
-- ARGV: per_minute, max_in_flight, job_id, images, slot_ttl, window (log, seconds),
--       interval (schedule, seconds per image), burst (seconds), the job's deadline
--       ('' = none), now ('' = TIME)
local limit = tonumber(ARGV[1])
local job = ARGV[3]
local cost = tonumber(ARGV[4])
local window = tonumber(ARGV[6])
local interval = tonumber(ARGV[7])
local burst = tonumber(ARGV[8])
local function cost_of(member) return tonumber(string.match(member, ':(%d+)$')) end
-- Refused for the cap: park. A woken job refused again (a newcomer took the slot) goes
-- back to the front of the line, not to its end.
local function park()
  local woken = redis.call('ZSCORE', KEYS[6], job)
  if woken then
    redis.call('ZREM', KEYS[6], job)
    redis.call('ZADD', KEYS[5], fmt(tonumber(woken) - FRONT), job)
  else
    redis.call('ZADD', KEYS[5], 'NX', fmt(now), job)
  end
end

local s = redis.call('HMGET', KEYS[1], 'tat', 'shift', 'paused_until', 'logged', 'seq')
local tat = tonumber(s[1]) or now
local shift = tonumber(s[2]) or 0
local paused_until = tonumber(s[3]) or 0
local logged = tonumber(s[4]) or 0
local seq = tonumber(s[5]) or 0

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window - shift)
-- Grants whose window has passed leave the log.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #expired > 0 then
  for _, member in ipairs(expired) do logged = logged - cost_of(member) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
if logged < 0 or redis.call('ZCARD', KEYS[3]) == 0 then logged = 0 end
if #expired > 0 then redis.call('HSET', KEYS[1], 'logged', logged) end

local holds_slot = redis.call('ZSCORE', KEYS[2], job)
local full = not holds_slot and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2])
local slot = tonumber(redis.call('ZSCORE', KEYS[4], job))
if slot then
  slot = slot + shift
  if slot > now then return {0, fmt(slot - now), 'rate'} end  -- early: keep the slot
else
  if full then  -- takes nothing from the schedule; parks until a slot frees
    park()
    return {0, '1', 'in_flight'}
  end
  -- A slot on the schedule: now if it is at most `burst` ahead (with these images),
  -- else at its end; a job larger than the burst waits for the schedule to catch up.
  slot = math.max(now, paused_until, tat - math.max(0, burst - cost * interval))
  -- A slot after the job's deadline would be used by nobody while the schedule moves on
  -- for everyone: under overload, reserve only what can still be used.
  local deadline = tonumber(ARGV[9])
  if deadline and slot > deadline then
    return {0, fmt(math.max(0, deadline - now)), 'late'}
  end
  tat = math.max(tat, slot) + cost * interval
  redis.call('HSET', KEYS[1], 'tat', fmt(tat))
  if slot > now then
    redis.call('ZADD', KEYS[4], fmt(slot - shift), job)
    return {0, fmt(slot - now), slot == paused_until and 'paused' or 'rate'}
  end
end

-- This job's slot has come. It still needs the pause over, room in the window and an
-- in-flight slot; until then it keeps its slot.
local keep = function() redis.call('ZADD', KEYS[4], fmt(slot - shift), job) end
if paused_until > now then
  keep()
  return {0, fmt(paused_until - now), 'paused'}
end
local room_needed = limit - math.min(cost, limit)  -- above N: an empty window
if logged > room_needed then
  local ready
  if room_needed == 0 then
    ready = tonumber(redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')[2])
  else
    local need = logged - room_needed
    local oldest = redis.call('ZRANGE', KEYS[3], 0, need - 1, 'WITHSCORES')
    local freed = 0
    for i = 1, #oldest, 2 do
      freed = freed + cost_of(oldest[i])
      ready = tonumber(oldest[i + 1])
      if freed >= need then break end
    end
  end
  keep()
  return {0, fmt(ready - now), 'rate'}
end
if full then
  keep()
  park()
  return {0, '1', 'in_flight'}
end
seq = seq + 1
-- A job larger than the window holds it proportionally longer: N per window on average.
redis.call('ZADD', KEYS[3], fmt(now + window * math.max(1, cost / limit)), seq .. ':' .. cost)
redis.call('HSET', KEYS[1], 'logged', logged + cost, 'seq', seq)
redis.call('ZADD', KEYS[2], fmt(now + tonumber(ARGV[5])), job)
redis.call('ZREM', KEYS[4], job)
redis.call('ZREM', KEYS[5], job)
redis.call('ZREM', KEYS[6], job)
return {1, '0', 'granted'}
"""
)

_UNPARK_LUA = (
    _NOW_LUA
    + """
-- KEYS: 1 parked, 2 waking. ARGV: count, now ('' = TIME)
local taken = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local ids = {}
for i = 1, #taken, 2 do
  redis.call('ZADD', KEYS[2], fmt(now), taken[i])
  table.insert(ids, taken[i])
end
return ids
"""
)

_REQUEUE_LUA = (
    _NOW_LUA
    + """
-- KEYS: 1 parked, 2 waking. ARGV: older than (seconds), now ('' = TIME)
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]), 'WITHSCORES')
for i = 1, #stale, 2 do
  redis.call('ZREM', KEYS[2], stale[i])
  redis.call('ZADD', KEYS[1], fmt(tonumber(stale[i + 1]) - FRONT), stale[i])
end
return #stale / 2
"""
)

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
class Permit:
    granted: bool
    #: When not granted: seconds until it is worth asking again (this job's slot).
    wait: float
    #: "granted", or what refused: "rate", "paused", "in_flight" or "late" (no slot before
    #: the job's deadline).
    reason: str = "granted"


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
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._pause = client.register_script(_PAUSE_LUA)
        self._unpark = client.register_script(_UNPARK_LUA)
        self._requeue = client.register_script(_REQUEUE_LUA)
        self._resume = client.register_script(_RESUME_LUA)
        self._client = client

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
        now: float | None = None,
    ) -> Permit:
        """Take ``images`` of the rate and an in-flight slot for ``job_id``, or say how long
        to wait. A job whose slot would come after its ``deadline`` (Redis time) gets none
        (reason "late"): under overload the schedule serves jobs that can still use it.
        ``now`` (Redis ``TIME`` when None) is for tests."""
        granted, wait, reason = self._acquire(
            keys=[
                RATE_BUCKET_KEY,
                IN_FLIGHT_KEY,
                RATE_LOG_KEY,
                RATE_RESERVED_KEY,
                PARKED_KEY,
                WAKING_KEY,
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
                _now_arg(now),
            ],
        )
        return Permit(granted=bool(int(granted)), wait=float(wait), reason=_text(reason))

    def release(self, job_id: str) -> None:
        """Give the slot back when a submit provably created nothing."""
        self._client.zrem(IN_FLIGHT_KEY, job_id)

    def in_flight(self) -> int:
        return int(self._client.zcard(IN_FLIGHT_KEY))

    def unpark(self, count: int, *, now: float | None = None) -> list[str]:
        """Take the ``count`` jobs parked longest (refused for the in-flight cap) to send
        them again now that slots are free. They move to the waking set in the same step,
        so a wake that never arrives (its sender died) is not lost: ``requeue_stale_wakes``."""
        if count < 1:
            return []
        taken = self._unpark(keys=[PARKED_KEY, WAKING_KEY], args=[count, _now_arg(now)])
        return [_text(member) for member in taken]

    def woke(self, job_id: str) -> None:
        """A taken job needs no slot after all (it ended, or is already submitting)."""
        self._client.zrem(WAKING_KEY, job_id)

    def requeue_stale_wakes(self, older_than: float, *, now: float | None = None) -> int:
        """Park again, at the front, the jobs taken more than ``older_than`` seconds ago
        whose run never came (no grant, no ending): their wake was lost."""
        return int(self._requeue(keys=[PARKED_KEY, WAKING_KEY], args=[older_than, _now_arg(now)]))

    def parked(self) -> int:
        return int(self._client.zcard(PARKED_KEY))

    def free_slots(self) -> int:
        """In-flight slots free now (slots past their expiry count as free)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.zcard(IN_FLIGHT_KEY)
        pipe.zcount(IN_FLIGHT_KEY, "-inf", "(" + repr(float(self._client.time()[0])))
        held, expired = pipe.execute()
        return max(0, self.max_in_flight - int(held) + int(expired))

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
