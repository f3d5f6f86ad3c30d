"""The fair line of the shared limiter against a real redis-server, with explicit time.

Jobs that find no submission slot wait in one line per tenant; each call that can give
slots out picks the next tenant by weighted round robin and that tenant's best job
(high priority first, then oldest). Here every job that gets a slot "comes back" at
once and takes it, which is what a worker does when the slot's countdown ends.
"""

from __future__ import annotations

from collections import Counter

import redis

from worker.fairness import DEPTH_KEY, line_member
from worker.models import Priority
from worker.ratelimit import AccountLimiter, Permit

T0 = 2_000_000.0


def _limiter(redis_url: str, weights: dict[str, int] | None = None) -> AccountLimiter:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # 60 a minute: slots ~1 s apart, so each explicit second is one slot.
    return AccountLimiter(client, per_minute=60, max_in_flight=100_000, tenant_weights=weights)


#: Jobs given a slot while the test enqueued, and when their slot is (what a worker sends).
Due = dict[str, float]


def _ask(
    limiter: AccountLimiter, due: Due, job_id: str, tenant: str, order: float, **kw: object
) -> Permit:
    member = line_member(job_id, tenant=tenant, order=order, **kw)  # type: ignore[arg-type]
    permit = limiter.acquire(job_id, images=1, slot_ttl=3600, member=member, now=T0 + order)
    due.update({a.job_id: T0 + order + a.wait for a in permit.admitted})
    if permit.reason == "rate":
        due[job_id] = T0 + order + permit.wait
    return permit


def _drain(limiter: AccountLimiter, due: Due, start: float, grants: int) -> list[str]:
    """Run the account for ``grants`` grants from ``start``: each job given a slot comes
    back at its slot and takes it; returns the job ids in the order they were granted."""
    now = start
    granted: list[str] = []
    due.update({a.job_id: now + a.wait for a in limiter.give_out(now=now)})
    while len(granted) < grants and due:
        job_id = min(due, key=lambda j: (due[j], j))
        now = max(now, due.pop(job_id))
        permit = limiter.acquire(job_id, images=1, slot_ttl=3600, now=now)
        for admitted in permit.admitted:
            due[admitted.job_id] = now + admitted.wait
        if permit.granted:
            granted.append(job_id)
        else:
            assert permit.reason == "rate", permit
            due[job_id] = now + permit.wait
    return granted


def test_a_late_small_tenant_is_served_between_a_big_backlog(redis_url: str) -> None:
    limiter, due = _limiter(redis_url), Due()
    for index in range(2000):
        _ask(limiter, due, f"a{index:04}", "a", order=index / 1000)
    for index in range(20):
        assert _ask(limiter, due, f"b{index:02}", "b", order=3 + index / 1000).in_line
    waiting = limiter._client.hgetall(DEPTH_KEY)  # per tenant
    assert int(waiting["b"]) == 20 and 1900 < int(waiting["a"]) < 2000
    order = _drain(limiter, due, T0 + 4, grants=60)
    last_b = max(index for index, job_id in enumerate(order) if job_id.startswith("b"))
    # B's 20 go out alternating with A's (after the few slots given out before B came).
    assert sum(job_id.startswith("b") for job_id in order) == 20
    assert last_b < 50, order
    # Within a tenant, oldest first.
    assert [j for j in order if j.startswith("b")] == [f"b{i:02}" for i in range(20)]
    a_order = [j for j in order if j.startswith("a")]
    assert a_order == sorted(a_order)


def test_weights_share_the_slots_between_tenants_with_work_waiting(redis_url: str) -> None:
    limiter, due = _limiter(redis_url, weights={"gold": 3}), Due()
    for index in range(200):
        _ask(limiter, due, f"gold{index:03}", "gold", order=index / 1000)
        _ask(limiter, due, f"std{index:03}", "std", order=index / 1000)
    order = _drain(limiter, due, T0 + 1, grants=100)
    shares = Counter(job_id[:3] for job_id in order[10:90])
    assert shares["gol"] == 60 and shares["std"] == 20, shares


def test_priority_orders_jobs_within_a_tenant(redis_url: str) -> None:
    limiter, due = _limiter(redis_url), Due()
    for index in range(30):
        _ask(limiter, due, f"normal{index:02}", "t", order=index / 1000)
    for index in range(5):
        _ask(limiter, due, f"high{index}", "t", order=1 + index / 1000, priority=Priority.HIGH)
    order = _drain(limiter, due, T0 + 2, grants=20)
    first_high = min(i for i, job_id in enumerate(order) if job_id.startswith("high"))
    last_high = max(i for i, job_id in enumerate(order) if job_id.startswith("high"))
    # Only the slots given out before the high jobs came go to normal ones first.
    assert last_high - first_high == 4 and first_high < 10


def test_a_tenant_alone_gets_every_slot(redis_url: str) -> None:
    limiter, due = _limiter(redis_url, weights={"other": 5}), Due()
    for index in range(50):
        _ask(limiter, due, f"solo{index:02}", "solo", order=index / 1000)
    order = _drain(limiter, due, T0 + 1, grants=40)
    first = int(order[0].removeprefix("solo"))  # solo00 was granted at once, when it came
    assert order == [f"solo{i:02}" for i in range(first, first + 40)]
