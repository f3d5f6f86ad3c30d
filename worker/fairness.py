"""Tenant fairness: the line of jobs waiting for a submission slot, and who goes next.

Celery's queues are FIFO lists: when tenant A enqueues 2,000 jobs and then tenant B 20,
B's messages sit behind A's. Ordering the messages cannot fix that; so a job that cannot
be submitted at once does not wait in a queue (nor with a slot reserved at the end of the
schedule, which is FIFO too). Its run puts it in **the line** and ends with no next
message (as a job behind the in-flight cap used to park). The shared limiter
(``worker.ratelimit``) then hands out submission slots: whenever the schedule has a slot
within ``horizon`` seconds and the in-flight cap has room, it picks the next tenant by
**smooth weighted round robin** among the tenants with jobs in the line, takes that
tenant's best job (high priority first, then oldest), reserves the slot for it and
returns it, so that the caller sends the job's message with a countdown to its slot.
Every ``acquire`` tops the reservations up, so a grant pulls in the next job; so do a
job's ending (a freed in-flight slot) and each sweeper pass (a lost message, a slot that
aged out).

Redis state (fixed keys, so every script declares the keys it touches):

* ``LINE_KEY``: one sorted set, every score 0, ordered by member (``ZRANGEBYLEX``). A
  member is ``<tenant>|<rank>|<order>|<job id>|<images>|<deadline>``: a tenant's jobs are
  one contiguous range, best first: rank 0 (back in line after losing its slot), 1 (high),
  2 (normal), then ``order`` (enqueue time, fixed width).
* ``LINE_INDEX_KEY``: hash job id -> its member, for every job in the line or holding a
  reservation it was given from the line. The terminal transition (``worker.store``)
  removes a job from both, so an ended job never takes a slot.
* ``DEPTH_KEY``: hash tenant -> jobs in the line (the active tenants; the exporter's
  per-tenant depth). ``CREDIT_KEY``: hash tenant -> its current weight for the round
  robin (dropped when the tenant's line empties, so nobody saves up credit).

Weights come from ``WAVEQUEUE_TENANT_WEIGHTS`` (``acme=3,beta=1``; others weigh
``DEFAULT_WEIGHT``): with weights 3 and 1 and both waiting, three slots go to the first
for every one to the second. Priority orders jobs within a tenant only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from worker.constants import KEY_PREFIX
from worker.models import Priority
from worker.tenants import DEFAULT_TENANT

#: The line: every job waiting for a submission slot (see the module docstring).
LINE_KEY = KEY_PREFIX + "fair:line"
#: job id -> its line member, while it waits in the line or holds a slot given from it.
LINE_INDEX_KEY = KEY_PREFIX + "fair:index"
#: tenant -> jobs of that tenant in the line.
DEPTH_KEY = KEY_PREFIX + "fair:depth"
#: tenant -> current weight of the smooth weighted round robin.
CREDIT_KEY = KEY_PREFIX + "fair:credit"

#: Slots are handed out this far ahead of their time (and one always, if none is).
DEFAULT_HORIZON_SECONDS = 5.0

#: Rank of a job put back in line after losing its slot (it goes first), then by priority.
RANK_FRONT = 0
_RANK_OF_PRIORITY = {Priority.HIGH: 1, Priority.NORMAL: 2}


def line_member(
    job_id: str,
    *,
    tenant: str = DEFAULT_TENANT,
    priority: Priority = Priority.NORMAL,
    order: float = 0.0,
    images: int = 1,
    deadline: float | None = None,
) -> str:
    """The job's member of ``LINE_KEY``. ``order``: when it was enqueued (seconds); the
    fixed width keeps the lexical order numeric."""
    rank = _RANK_OF_PRIORITY[Priority(priority)]
    ends = "" if deadline is None else repr(float(deadline))
    return f"{tenant}|{rank}|{max(0.0, order):020.6f}|{job_id}|{max(1, int(images))}|{ends}"


def member_job_id(member: str) -> str:
    return member.split("|")[3]


def member_tenant(member: str) -> str:
    return member.split("|", 1)[0]


def weights_json(weights: Mapping[str, int]) -> str:
    """What the gate script takes: ``{}`` decodes to an empty Lua table either way."""
    return json.dumps(dict(weights), separators=(",", ":"), sort_keys=True)


#: Lua shared by the limiter's scripts: the line and the round robin. Expects ``now``,
#: ``fmt`` and, for ``pick_tenant``, ``WEIGHTS`` and ``DEFAULT_WEIGHT`` in scope, and the
#: keys as ``K_LINE``, ``K_INDEX``, ``K_DEPTH``, ``K_CREDIT``.
LINE_LUA = """
local function parts(member)
  local tenant, rank, order, job, images, deadline =
    string.match(member, '^([^|]+)|(%d)|([^|]+)|([^|]+)|(%d+)|(.*)$')
  return tenant, tonumber(images), tonumber(deadline), job, rank, order
end
local function line_add(member)
  local tenant, _, _, job = parts(member)
  if redis.call('ZADD', K_LINE, 'NX', 0, member) == 1 then
    if redis.call('HINCRBY', K_DEPTH, tenant, 1) == 1 then redis.call('HDEL', K_CREDIT, tenant) end
  end
  redis.call('HSET', K_INDEX, job, member)
end
-- Put a job that lost its reserved slot back in line, in front of its tenant's others.
local function line_front(member)
  local tenant, images, deadline, job, _, order = parts(member)
  local front = tenant .. '|0|' .. order .. '|' .. job .. '|' .. images .. '|' .. (deadline or '')
  line_add(front)
end
local function tenant_left(tenant)
  if redis.call('HINCRBY', K_DEPTH, tenant, -1) <= 0 then
    redis.call('HDEL', K_DEPTH, tenant)
    redis.call('HDEL', K_CREDIT, tenant)
    return true
  end
  return false
end
-- Smooth weighted round robin (as nginx balances upstreams): every active tenant gains its
-- weight, the richest is picked and pays the sum of the weights. Ties go by name.
local function pick_tenant(active, credit)
  local total, best, best_credit = 0, nil, nil
  for _, tenant in ipairs(active) do
    local weight = tonumber(WEIGHTS[tenant]) or DEFAULT_WEIGHT
    credit[tenant] = (credit[tenant] or 0) + weight
    total = total + weight
    if best == nil or credit[tenant] > best_credit
       or (credit[tenant] == best_credit and tenant < best) then
      best, best_credit = tenant, credit[tenant]
    end
  end
  credit[best] = credit[best] - total
  return best
end
local function first_of(tenant)
  local found = redis.call('ZRANGEBYLEX', K_LINE, '[' .. tenant .. '|', '[' .. tenant .. '|\\255',
    'LIMIT', 0, 1)
  return found[1]
end
"""
