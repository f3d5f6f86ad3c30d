"""The shared WaveSpeed limiter against a real redis-server, driven with explicit time.

Every ``acquire`` here passes ``now`` (the script uses Redis ``TIME`` otherwise), so the
tests control the clock: minutes of saturated traffic run in well under a second, and
nothing depends on how fast the machine is. The emulator's own sliding-window limiter
(``emulator.limits.RateLimiter``, what answers 429 over HTTP) is the judge of bursts.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest
import redis

from emulator.limits import RateLimiter
from worker.ratelimit import (
    DEFAULT_MARGIN_SECONDS,
    DEFAULT_PAUSE_SECONDS,
    MAX_PAUSE_SECONDS,
    AccountLimiter,
)

T0 = 1_000_000.0  # an arbitrary "Redis time" origin for the explicit clock


def _limiter(redis_url: str, per_minute: int, max_in_flight: int = 100_000) -> AccountLimiter:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return AccountLimiter(client, per_minute=per_minute, max_in_flight=max_in_flight)


@dataclass
class Run:
    """What a saturated fleet got: (grant time relative to T0, images) per grant."""

    grants: list[tuple[float, int]] = field(default_factory=list)
    asks: int = 0

    def images_between(self, start: float, end: float) -> int:
        return sum(images for at, images in self.grants if start <= at < end)


def saturate(
    limiter: AccountLimiter,
    costs: list[int],
    *,
    seconds: float,
    seed: int = 7,
    max_wait: float = 60.0,
) -> Run:
    """Every job asks at 0, and comes back when told (capped like the runner caps it, plus
    the runner's 0-0.25 s jitter) until granted or ``seconds`` have passed. A job put in
    the fair line asks again only once a call gives it a slot (its message is sent then)."""
    rng = random.Random(seed)
    cost_of = {f"job{index}": cost for index, cost in enumerate(costs)}
    waiting = [(0.0, job_id, cost) for job_id, cost in cost_of.items()]
    heapq.heapify(waiting)
    run = Run()
    while waiting:
        at, job_id, cost = heapq.heappop(waiting)
        if at >= seconds:
            break
        run.asks += 1
        permit = limiter.acquire(job_id, images=cost, slot_ttl=3600, now=T0 + at)
        for admitted in permit.admitted:
            back = at + min(admitted.wait, max_wait) + rng.uniform(0, 0.25)
            heapq.heappush(waiting, (back, admitted.job_id, cost_of[admitted.job_id]))
        if permit.granted:
            run.grants.append((at, cost))
        elif not permit.in_line:
            assert permit.wait > 0, permit
            back = at + min(permit.wait, max_wait) + rng.uniform(0, 0.25)
            heapq.heappush(waiting, (back, job_id, cost))
    return run


def arrivals_the_server_refuses(run: Run, per_minute: int, delays: list[float]) -> int:
    """Replay the grants at the emulator's sliding window, each POST arriving its delay
    after its grant; count the 429s it would answer."""
    timed = zip(run.grants, delays, strict=True)
    arrivals = sorted((at + delay, images) for (at, images), delay in timed)
    server = RateLimiter()
    return sum(
        server.try_take("key", images, per_minute, arrived) is not None
        for arrived, images in arrivals
    )


@pytest.mark.parametrize(("per_minute", "costs"), [(60, [1]), (120, [1, 1, 1, 2, 4]), (2, [1])])
def test_no_60s_window_at_the_server_ever_holds_more_than_the_limit(
    redis_url: str, per_minute: int, costs: list[int]
) -> None:
    limiter = _limiter(redis_url, per_minute)
    rng = random.Random(per_minute)
    jobs = [rng.choice(costs) for _ in range(per_minute * 6 + 10)]
    run = saturate(limiter, jobs, seconds=300)

    # The old bucket started with a whole minute of tokens: ~2N got through the first 60 s.
    assert run.images_between(0, 60) <= per_minute
    # Each POST reaching the server anywhere from at once to `margin` late: never a 429.
    for delays in (
        [0.0] * len(run.grants),
        [DEFAULT_MARGIN_SECONDS] * len(run.grants),
        [rng.uniform(0, DEFAULT_MARGIN_SECONDS) for _ in run.grants],
        # earlier grants later than later ones: the windows at the server shrink
        [DEFAULT_MARGIN_SECONDS * (1 - index / len(jobs)) for index in range(len(run.grants))],
    ):
        assert arrivals_the_server_refuses(run, per_minute, delays) == 0


@pytest.mark.parametrize(("per_minute", "costs"), [(60, [1]), (120, [1]), (500, [1, 1, 1, 1, 2])])
def test_a_saturated_fleet_gets_the_configured_rate_less_the_margin(
    redis_url: str, per_minute: int, costs: list[int]
) -> None:
    limiter = _limiter(redis_url, per_minute)
    rng = random.Random(3)
    seconds = 600.0
    jobs = [rng.choice(costs) for _ in range(per_minute * 11)]
    run = saturate(limiter, jobs, seconds=seconds, max_wait=float("inf"))

    per_minute_after_the_first = run.images_between(60, seconds) / (seconds - 60) * 60
    assert limiter.steady_rate_per_minute == pytest.approx(per_minute * 60 / 62)
    assert 0.95 * per_minute <= per_minute_after_the_first <= per_minute
    # Waiting jobs have their own slots, so they do not all ask again at every token:
    # one ask to get a slot, one to use it, and rarely one more to wait for the log.
    assert run.asks <= len(jobs) + 1.1 * len(run.grants)


def at_once(limiter: AccountLimiter) -> int:
    """How many one-image submits an idle schedule grants at the same instant."""
    return max(1, int(limiter.burst // limiter.interval))


def test_grants_are_spread_not_bunched(redis_url: str) -> None:
    limiter = _limiter(redis_url, per_minute=120)
    permits = [limiter.acquire(f"job{index}", images=1, slot_ttl=60, now=T0) for index in range(50)]
    granted = [permit for permit in permits if permit.granted]
    # 2 s of the rate at once (3 images), not the old bucket's whole minute (120).
    assert len(granted) == at_once(limiter) == 3
    refused = [permit for permit in permits if not permit.granted]
    assert {permit.reason for permit in refused} == {"rate", "queued"}
    # The next few seconds' slots are given out, one each, one interval (62 s / 120) apart;
    # the rest wait in the line with no slot (and no message) until their turn.
    waits = [permit.wait for permit in refused if permit.reason == "rate"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(waits)]
    assert gaps == pytest.approx([62 / 120] * len(gaps), abs=1e-5)
    assert max(waits) <= limiter.horizon + limiter.interval
    assert limiter.waiting() == len(refused) - len(waits) > 30


def test_a_reserved_slot_is_kept_and_nobody_else_takes_it(redis_url: str) -> None:
    limiter = _limiter(redis_url, per_minute=60)
    for index in range(at_once(limiter)):
        assert limiter.acquire(f"first{index}", images=1, slot_ttl=60, now=T0).granted
    queued = limiter.acquire("queued", images=1, slot_ttl=60, now=T0)
    later = limiter.acquire("later", images=1, slot_ttl=60, now=T0)
    assert not queued.granted and not later.granted and later.wait > queued.wait

    # Back early (the runner caps its countdown): the same slot, not the end of the line.
    again = limiter.acquire("queued", images=1, slot_ttl=60, now=T0 + queued.wait / 2)
    assert not again.granted
    assert again.wait == pytest.approx(queued.wait / 2, abs=1e-5)
    # A newcomer at the slot's time does not get it; the job it belongs to does.
    newcomer = limiter.acquire("newcomer", images=1, slot_ttl=60, now=T0 + queued.wait)
    assert not newcomer.granted and newcomer.wait > later.wait - queued.wait
    assert limiter.acquire("queued", images=1, slot_ttl=60, now=T0 + queued.wait + 0.3).granted


def test_a_job_larger_than_the_limit_is_granted_at_the_average_rate(redis_url: str) -> None:
    """num_images 4 against 2 images per minute: the old bucket never held 4 tokens."""
    limiter = _limiter(redis_url, per_minute=2)
    granted_at: list[float] = []
    now = 0.0
    while len(granted_at) < 4:
        permit = limiter.acquire(f"job{len(granted_at)}", images=4, slot_ttl=60, now=T0 + now)
        if permit.granted:
            granted_at.append(now)
        else:
            assert 0 < permit.wait <= 4 * limiter.interval  # always a finite answer
            now += permit.wait
    assert granted_at[0] == 0.0
    # 4 images take 4 slots of 31 s (62 s per 2 images): the average rate, never faster.
    gaps = [later - earlier for earlier, later in itertools.pairwise(granted_at)]
    assert gaps == pytest.approx([4 * limiter.interval] * 3, abs=0.01)


def test_a_job_larger_than_the_burst_goes_into_debt(redis_url: str) -> None:
    limiter = _limiter(redis_url, per_minute=60)  # slots 62/60 s apart; a 2 s burst
    assert 4 * limiter.interval > limiter.burst
    assert limiter.acquire("big", images=4, slot_ttl=60, now=T0).granted
    small = limiter.acquire("small", images=1, slot_ttl=60, now=T0)
    assert not small.granted
    # The big job took 4 slots; the next one is due when the schedule is back within the burst.
    assert small.wait == pytest.approx(5 * limiter.interval - limiter.burst, abs=1e-5)
    assert limiter.acquire("small", images=1, slot_ttl=60, now=T0 + small.wait).granted


def test_pause_stops_every_worker_until_it_ends_and_only_ever_extends(redis_url: str) -> None:
    one, other = _limiter(redis_url, per_minute=600), _limiter(redis_url, per_minute=600)
    assert one.paused_until() == 0.0
    assert one.pause(30, "429 from WaveSpeed", now=T0) == T0 + 30

    during = other.acquire("job", images=1, slot_ttl=60, now=T0 + 1)
    assert not during.granted and during.reason == "paused"
    assert during.wait == pytest.approx(29, abs=1e-3)

    assert one.pause(5, "a shorter one", now=T0 + 2) == T0 + 30  # never shortens
    state = other.pause_state(now=T0 + 2)
    assert (state.until, state.reason, state.remaining, state.active) == (
        T0 + 30,
        "429 from WaveSpeed",
        28,
        True,
    )
    assert other.pause(40, "longer", now=T0 + 3) == T0 + 43  # extends
    assert one.paused_until() == T0 + 43

    assert not one.acquire("job", images=1, slot_ttl=60, now=T0 + 42.9).granted
    assert one.acquire("job", images=1, slot_ttl=60, now=T0 + 43).granted
    assert not other.pause_state(now=T0 + 43).active


def test_jobs_waiting_out_a_pause_come_back_spread_out(redis_url: str) -> None:
    limiter = _limiter(redis_url, per_minute=120)
    for index in range(10):  # jobs with slots over the next few seconds
        limiter.acquire(f"early{index}", images=1, slot_ttl=60, now=T0)
    limiter.pause(10, "429", now=T0 + 0.1)
    newcomers = [
        limiter.acquire(f"job{index}", images=1, slot_ttl=60, now=T0 + 1) for index in range(20)
    ]
    assert all(permit.in_line for permit in newcomers)
    # The jobs that had slots moved back by the pause, keeping their order.
    moved = [
        limiter.acquire(f"early{index}", images=1, slot_ttl=60, now=T0 + 1).wait
        for index in range(at_once(limiter), 10)
    ]
    assert min(moved) >= 9 - 0.1 and moved == sorted(moved)
    # Each of them, granted at its slot, gives the next slots out: after the pause and after
    # the jobs that had slots, one interval apart, not all at the pause's end.
    slots: list[float] = []
    for index, wait in zip(range(at_once(limiter), 10), moved, strict=True):
        at = T0 + 1 + wait
        permit = limiter.acquire(f"early{index}", images=1, slot_ttl=60, now=at)
        while not permit.granted:  # a slot at the pause's very end waits it out
            assert permit.reason == "paused" and permit.wait < 1
            at += permit.wait
            permit = limiter.acquire(f"early{index}", images=1, slot_ttl=60, now=at)
        slots += [at + admitted.wait for admitted in permit.admitted]
    assert len(slots) >= 5 and min(slots) > T0 + 1 + max(moved)
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert gaps == pytest.approx([62 / 120] * len(gaps), abs=1e-5)


def test_resume_ends_only_a_pause_of_its_reason_and_brings_the_line_forward(
    redis_url: str,
) -> None:
    limiter = _limiter(redis_url, per_minute=120)
    limiter.pause(30, "429 from WaveSpeed", now=T0)
    assert not limiter.resume("low balance", now=T0 + 1)  # another reason: it stands
    assert limiter.pause_state(now=T0 + 1).active

    other = _limiter(redis_url, per_minute=120)
    other._client.flushall()
    other.pause(60, "low balance: $0.40 is below WAVEQUEUE_LOW_BALANCE $0.50", now=T0)
    waiting = other.acquire("held-back", images=1, slot_ttl=60, now=T0 + 1)
    assert waiting.reason == "paused" and waiting.wait == pytest.approx(59, abs=1e-3)
    assert other.resume("low balance", now=T0 + 2)
    assert not other.pause_state(now=T0 + 2).active
    # The job told to wait out the pause keeps its place, now due at once; a newcomer is
    # served at the usual pace, not after the minute the pause had added.
    assert other.acquire("held-back", images=1, slot_ttl=60, now=T0 + 2).granted
    newcomer = other.acquire("newcomer", images=1, slot_ttl=60, now=T0 + 2)
    assert newcomer.granted or newcomer.wait < 2
    assert not other.resume("low balance", now=T0 + 3)  # nothing left to end


def test_pause_length_defaults_and_bounds_use_redis_time(redis_url: str) -> None:
    limiter = _limiter(redis_url, per_minute=60)
    # This test reads Redis's own clock: what earlier tests left at other times (a
    # schedule, a log) would be judged against it, so start from nothing.
    limiter._client.flushall()
    seconds, micros = limiter._client.time()
    redis_now = seconds + micros / 1e6
    ends = limiter.pause(None, "429 without Retry-After")
    assert redis_now + DEFAULT_PAUSE_SECONDS <= ends < redis_now + DEFAULT_PAUSE_SECONDS + 5
    assert limiter.pause_state().active
    refused = limiter.acquire("job", images=1, slot_ttl=60)  # Redis TIME, no explicit clock
    assert not refused.granted and refused.reason == "paused"
    assert refused.wait <= DEFAULT_PAUSE_SECONDS

    bogus = limiter.pause(10**9, "a Retry-After from another century")
    assert bogus < redis_now + MAX_PAUSE_SECONDS + 5


def test_in_flight_cap_is_shared_and_slots_age_out(redis_url: str) -> None:
    limiter = _limiter(redis_url, per_minute=6000, max_in_flight=2)
    assert limiter.acquire("a", images=1, slot_ttl=60, now=T0).granted
    assert limiter.acquire("b", images=1, slot_ttl=60, now=T0).granted
    over_cap = limiter.acquire("c", images=1, slot_ttl=60, now=T0)
    assert (over_cap.granted, over_cap.wait, over_cap.reason) == (False, 1.0, "in_flight")
    assert limiter.in_flight() == 2

    limiter.release("a")
    assert limiter.acquire("c", images=1, slot_ttl=60, now=T0).granted
    # A job that holds a slot (a resubmit) needs no second one.
    assert limiter.acquire("c", images=1, slot_ttl=60, now=T0 + 1).granted
    # A slot its worker never released ages out.
    assert not limiter.acquire("d", images=1, slot_ttl=60, now=T0 + 59).granted
    assert limiter.acquire("d", images=1, slot_ttl=60, now=T0 + 61).granted


def test_under_overload_slots_go_only_to_jobs_that_can_still_use_them(redis_url: str) -> None:
    """A burst far above the rate: jobs whose slot would come after their deadline get
    none and do not push the schedule, so a job arriving later is still served (the
    schedule used to run past every deadline and then serve nobody)."""
    limiter = _limiter(redis_url, per_minute=60)
    burst = [
        limiter.acquire(f"burst{i}", images=1, slot_ttl=600, deadline=T0 + 60, now=T0)
        for i in range(300)
    ]
    slots = [p.wait for p in burst if p.reason == "rate"]
    slots += [a.wait for p in burst for a in p.admitted]
    assert all(wait <= 60 for wait in slots)
    assert sum(p.in_line for p in burst) > 250
    fresh = limiter.acquire("fresh", images=1, slot_ttl=600, deadline=T0 + 200, now=T0 + 61)
    assert fresh.granted or fresh.wait < 10, fresh
