"""The WaveSpeed account limits, shared by every worker through Redis.

Celery's ``rate_limit`` is per worker; WaveSpeed's limits are per account: N
images per minute, counted (like the emulator's ``--rate-limit-per-minute``) over
a sliding 60 s window, and a cap on predictions in flight. One Lua script, run
against Redis ``TIME`` (one clock for every worker, whatever the hosts' clocks
say), grants a submit or says how long to wait. A grant needs all of:

* **No fleet-wide pause.** ``pause()`` (a remote 429: its ``Retry-After``, or
  ``DEFAULT_PAUSE_SECONDS``) makes every ``acquire`` on every worker answer
  "wait" until Redis time passes the pause end. A pause only ever extends.
* **The window.** A log of recent grants (a sorted set scored by when each
  leaves the window, with a running total) admits ``images`` only if the grants
  of the last ``60 + margin`` seconds plus these stay within N. This is the
  exact rule the server applies, so it is the guarantee: never more than N
  images in any 60 s window at the server, as long as no POST reaches WaveSpeed
  more than ``margin`` seconds after its grant (the margin is that allowance;
  it costs ``margin / (60 + margin)`` of the rate: 3.2% at the default 2 s).
* **The pacer.** A GCRA token bucket refilled at ``N / (60 + margin)`` images per
  second with a small capacity (``burst_seconds`` of the rate, at least one
  image) spreads the grants evenly instead of letting N through at once and
  then nothing for a minute. Its capacity is what absorbs a waiting job coming
  back a little late, so lateness does not waste the rate.
* **The in-flight cap**, as before: a slot per job in a sorted set scored by
  expiry, so a slot a crashed worker never released ages out by itself; a job's
  terminal transition removes its slot (see ``store.transition``).

Why not one token bucket? A bucket of capacity B refilled at r lets B + r*60
through in a 60 s window; the old one started full with a whole minute of
tokens (B = N), so about 2N fitted in a window. Making a bucket alone safe needs
B + r*(60 + margin) <= N, which costs B/N of the rate on top of the margin (at
the 2/min tier, half of it). The window log is exact, so the pacer only shapes.

**A job larger than the window** (``images`` > N, or above the pacer's capacity)
is never blocked forever: it is granted once the log is empty and the pacer
full, and goes into debt. Its log entry holds the window ``images / N`` times as
long, and the pacer owes ``images`` intervals, so the average stays at N per
minute. (The server may still refuse a single request above its per-minute
limit; the limiter cannot help that one.)

**Who asks when.** A refused job is told when to come back: not "when the next
token is due" (every waiting job would then ask at that same instant), but its
place in line: the later of when capacity is due and the end of the line of
jobs already waiting (a sorted set of waiting job ids, and the line's end in the
state hash). A job that comes back early keeps its place; one whose turn passed
without capacity (another job took it) goes to the back. Any caller that finds
capacity free is granted at once, so no capacity waits for a job that never
comes back.

State: ``RATE_BUCKET_KEY`` (hash: pacer ``tat``, the line's ``horizon``,
``paused_until``, ``pause_reason``, the log's running total ``logged`` and a grant
``seq``), ``RATE_LOG_KEY``, ``RATE_WAITING_KEY``, ``IN_FLIGHT_KEY``. Times are Redis
``TIME`` seconds; tests pass ``now`` to drive them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from worker.constants import IN_FLIGHT_KEY, KEY_PREFIX, RATE_BUCKET_KEY

#: Grants in the window (members ``<seq>:<images>``, scored by when they leave it).
RATE_LOG_KEY = KEY_PREFIX + "ratelimit:log"
#: Jobs told to come back later (scored by when), so a job asking again keeps its place.
RATE_WAITING_KEY = KEY_PREFIX + "ratelimit:waiting"

WINDOW_SECONDS = 60.0
#: How late after its grant a POST may reach WaveSpeed and still count inside our window.
DEFAULT_MARGIN_SECONDS = 2.0
#: The pacer's capacity, in seconds of the rate.
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
-- KEYS: 1 state hash, 2 in-flight zset, 3 grant log zset, 4 waiting zset
-- ARGV: per_minute, max_in_flight, job_id, images, slot_ttl, window,
--       burst (pacer capacity, seconds), now ('' = TIME)
local limit = tonumber(ARGV[1])
local job = ARGV[3]
local cost = tonumber(ARGV[4])
local window = tonumber(ARGV[6])
local burst = tonumber(ARGV[7])
local interval = window / limit   -- the line's spacing: the window's long-run rate
local pace = 60 / limit           -- the pacer's: the nominal rate, so the log binds
local function cost_of(member) return tonumber(string.match(member, ':(%d+)$')) end

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
local s = redis.call('HMGET', KEYS[1], 'tat', 'horizon', 'paused_until', 'logged', 'seq')
local tat = tonumber(s[1]) or now
local horizon = tonumber(s[2]) or now
local paused_until = tonumber(s[3]) or 0
local logged = tonumber(s[4]) or 0
local seq = tonumber(s[5]) or 0

-- Grants whose window has passed leave the log.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #expired > 0 then
  for _, member in ipairs(expired) do logged = logged - cost_of(member) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
if logged < 0 or redis.call('ZCARD', KEYS[3]) == 0 then logged = 0 end
if #expired > 0 then redis.call('HSET', KEYS[1], 'logged', logged) end

-- Earliest moment each rule admits this job. The pacer (GCRA, capacity ``burst``
-- seconds): its debt plus these images within capacity (or no debt, for a job larger
-- than the capacity). The log: room for images (or an empty window).
local pacer_ready = tat - math.max(0, burst - cost * pace)
local room_needed = limit - math.min(cost, limit)
local log_ready = now
if logged > room_needed then
  if room_needed == 0 then
    log_ready = tonumber(redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')[2])
  else
    local need = logged - room_needed
    local oldest = redis.call('ZRANGE', KEYS[3], 0, need - 1, 'WITHSCORES')
    local freed = 0
    for i = 1, #oldest, 2 do
      freed = freed + cost_of(oldest[i])
      log_ready = tonumber(oldest[i + 1])
      if freed >= need then break end
    end
  end
end
local ready = math.max(now, pacer_ready, log_ready)
local why = 'rate'
if paused_until > ready then
  ready = paused_until
  why = 'paused'
end

if ready <= now then
  if not redis.call('ZSCORE', KEYS[2], job)
      and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
    return {0, '1', 'in_flight'}
  end
  seq = seq + 1
  -- A job larger than the window holds it proportionally longer: N per minute on average.
  local hold = window * math.max(1, cost / limit)
  redis.call('ZADD', KEYS[3], fmt(now + hold), seq .. ':' .. cost)
  redis.call('HSET', KEYS[1], 'tat', fmt(math.max(tat, now) + cost * pace),
    'logged', logged + cost, 'seq', seq)
  redis.call('ZADD', KEYS[2], fmt(now + tonumber(ARGV[5])), job)
  redis.call('ZREM', KEYS[4], job)
  return {1, '0', 'granted'}
end

-- Not yet. A job early for its place keeps it; one whose place comes before capacity
-- does (a slow predecessor, or a caller that found capacity first) is next; anyone
-- else, and everyone during a pause, joins the end of the line.
local place = tonumber(redis.call('ZSCORE', KEYS[4], job))
local come_back
if place and place > now and place >= ready then
  come_back = place
elseif place and why == 'rate' then
  come_back = ready
else
  come_back = math.max(ready, horizon)
  horizon = come_back + cost * interval
end
redis.call('ZADD', KEYS[4], fmt(come_back), job)
redis.call('HSET', KEYS[1], 'horizon', fmt(horizon))
return {0, fmt(come_back - now), why}
"""
)

_PAUSE_LUA = (
    _NOW_LUA
    + """
-- KEYS[1] state hash; ARGV: seconds, reason, now ('' = TIME). Only ever extends.
local ends = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if ends > current then
  redis.call('HSET', KEYS[1], 'paused_until', fmt(ends), 'pause_reason', ARGV[2])
  return fmt(ends)
end
return fmt(current)
"""
)


@dataclass(frozen=True)
class Permit:
    granted: bool
    #: When not granted: seconds until it is worth asking again (this job's place in line).
    wait: float
    #: "granted", or what refused: "rate", "paused" or "in_flight".
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
    """Images-per-minute window, pacer, fleet-wide pause and in-flight cap, shared by all
    workers through Redis (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        per_minute: int,
        max_in_flight: int,
        margin: float = DEFAULT_MARGIN_SECONDS,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        default_pause: float = DEFAULT_PAUSE_SECONDS,
    ) -> None:
        if per_minute < 1 or max_in_flight < 1:
            raise ValueError("per_minute and max_in_flight must be at least 1")
        self.per_minute = per_minute
        self.max_in_flight = max_in_flight
        #: Grants are counted over this many seconds: the server's 60 s plus the margin.
        self.window = WINDOW_SECONDS + max(0.0, margin)
        #: Seconds between images at the steady rate.
        self.interval = self.window / per_minute
        #: The pacer's capacity in seconds: one image, plus ``burst_seconds`` of lateness
        #: or burst it absorbs.
        self.capacity = WINDOW_SECONDS / per_minute + max(0.0, burst_seconds)
        self.default_pause = default_pause
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._pause = client.register_script(_PAUSE_LUA)
        self._client = client

    @property
    def steady_rate_per_minute(self) -> float:
        """What a saturated fleet gets: N per (60 + margin) seconds."""
        return self.per_minute * WINDOW_SECONDS / self.window

    def acquire(
        self, job_id: str, *, images: int, slot_ttl: float, now: float | None = None
    ) -> Permit:
        """Take ``images`` of the rate and an in-flight slot for ``job_id``, or say how long
        to wait. ``now`` (Redis ``TIME`` when None) is for tests."""
        granted, wait, reason = self._acquire(
            keys=[RATE_BUCKET_KEY, IN_FLIGHT_KEY, RATE_LOG_KEY, RATE_WAITING_KEY],
            args=[
                self.per_minute,
                self.max_in_flight,
                job_id,
                max(1, int(images)),
                slot_ttl,
                self.window,
                self.capacity,
                _now_arg(now),
            ],
        )
        return Permit(granted=bool(int(granted)), wait=float(wait), reason=_text(reason))

    def release(self, job_id: str) -> None:
        """Give the slot back when a submit provably created nothing."""
        self._client.zrem(IN_FLIGHT_KEY, job_id)

    def in_flight(self) -> int:
        return int(self._client.zcard(IN_FLIGHT_KEY))

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
