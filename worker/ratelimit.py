"""The WaveSpeed account limits, shared by every worker through Redis.

Celery's ``rate_limit`` is per worker; WaveSpeed's limits are per account. One
Lua script takes a token from a bucket refilled at ``per_minute / 60`` per
second (capacity ``per_minute``) and a slot in the in-flight set (capped at
``max_in_flight``), or neither. Slots are members of a sorted set scored by
expiry, so a slot a crashed worker never released ages out by itself; a job's
terminal transition removes its slot (see ``store.transition``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.constants import IN_FLIGHT_KEY, RATE_BUCKET_KEY

_ACQUIRE_LUA = """
-- KEYS[1] bucket hash, KEYS[2] in-flight zset
-- ARGV: per_minute, max_in_flight, job_id, cost, slot_ttl
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1e6
local per_minute = tonumber(ARGV[1])
local cost = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local holds = redis.call('ZSCORE', KEYS[2], ARGV[3])
if not holds and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  return {0, '1'}
end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or per_minute)
local stamp = tonumber(redis.call('HGET', KEYS[1], 'stamp') or now)
tokens = math.min(per_minute, tokens + (now - stamp) * per_minute / 60)
if tokens < cost then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
  return {0, tostring((cost - tokens) * 60 / per_minute)}
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - cost), 'stamp', tostring(now))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[3])
return {1, '0'}
"""


@dataclass(frozen=True)
class Permit:
    granted: bool
    #: When not granted: seconds until it is worth asking again.
    wait: float


class AccountLimiter:
    """Token bucket (images per minute) plus in-flight cap, shared across workers."""

    def __init__(self, client: redis.Redis, *, per_minute: int, max_in_flight: int) -> None:
        self.per_minute = per_minute
        self.max_in_flight = max_in_flight
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._client = client

    def acquire(self, job_id: str, *, images: int, slot_ttl: float) -> Permit:
        """Take ``images`` tokens and an in-flight slot for ``job_id``, or say how long to wait."""
        granted, wait = self._acquire(
            keys=[RATE_BUCKET_KEY, IN_FLIGHT_KEY],
            args=[self.per_minute, self.max_in_flight, job_id, images, slot_ttl],
        )
        return Permit(granted=bool(int(granted)), wait=float(wait))

    def release(self, job_id: str) -> None:
        """Give the slot back when a submit provably created nothing."""
        self._client.zrem(IN_FLIGHT_KEY, job_id)

    def in_flight(self) -> int:
        return int(self._client.zcard(IN_FLIGHT_KEY))
