"""Daily budgets: caps on what a UTC day may spend, for the whole account and per tenant.

Where the money is counted (all integers of micro-dollars, ``worker.money``):

- ``SPEND_KEY`` (one hash per UTC day): what completed jobs were billed (``billed``,
  ``images``, ``jobs``) and what jobs that ended while their prediction might still run
  may be billed (``unconfirmed``), whole-account and per tenant. Written only by the
  store's transition script, in the step that ends the job: counted exactly once.
- ``RESERVED_KEY``: the estimates of jobs claimed for submission that have not ended.

A job's submit claim (``worker.runner``) passes a ``Budget`` to the store: in the same
atomic step as the claim, the script checks that ``billed + unconfirmed + reserved +
the job's estimate`` stays within every cap that applies, and reserves the estimate.
Workers racing for the last dollars of a cap are serialized by Redis: one gets them, the
others are refused, so the fleet never spends past a cap (a job completes for at most
its estimate: the price times the images it asked for). Its ending gives the reservation
back and bills what WaveSpeed charged (or nothing: a failed prediction is not billed).

Caps come from the settings (``WAVEQUEUE_DAILY_BUDGET``, ``WAVEQUEUE_TENANT_BUDGETS``)
and from ``BUDGETS_KEY`` (``wavequeue budget set``), which takes precedence: for a
tenant, its own cap at run time, else its own in the settings, else the run-time cap
for every tenant (``*``), else the settings' one.

A job that meets a spent cap is held (``held: budget`` on its record, in ``HELD_KEY``)
with no message, like a job in the fair line (``worker.fairness``); ``wake_held`` sends it
again when room appears (the sweeper each pass: a new UTC day, a raised cap, a
reservation given back; ``wavequeue budget set`` at once). A job with
``on_budget=fail`` ends ``failed`` (``budget_exceeded``) instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.constants import BUDGETS_KEY, HELD_KEY, RESERVED_KEY, SPEND_KEY
from worker.models import price_of
from worker.money import ANY_TENANT, dollars
from worker.settings import Settings
from worker.store import Budget, JobSnapshot, utc_day

log = logging.getLogger(__name__)

#: The error code of a job that asked to fail rather than wait for a budget.
BUDGET_EXCEEDED = "budget_exceeded"
#: The record's ``held`` reason while a cap has no room.
HELD_BUDGET = "budget"
#: A held job a wake sent is not sent again before this long (its message may wait in a
#: busy queue); after it, a wake that never arrived is made good by the next pass.
WAKE_GRACE = 60.0
#: How many held jobs one wake looks at, at most.
WAKE_BATCH = 1000
#: How long a worker trusts its reading of "is any cap set?" (run-time caps may appear).
CAPS_CACHE_SECONDS = 5.0

GLOBAL = "global"


def tenant_field(tenant: str) -> str:
    return f"tenant:{tenant}"


@dataclass(frozen=True)
class Cap:
    """One cap as it applies: micro-dollars (None: no cap) and where it comes from."""

    micros: int | None
    #: "runtime", "settings" or "" (no cap anywhere).
    source: str = ""


@dataclass(frozen=True)
class Usage:
    """What a scope (the whole account, or one tenant) used today, in micro-dollars."""

    billed: int = 0
    unconfirmed: int = 0
    reserved: int = 0

    @property
    def counted(self) -> int:
        """What the caps count: billed, possibly billed, and reserved by jobs in flight."""
        return self.billed + self.unconfirmed + self.reserved


@dataclass(frozen=True)
class ScopeBudget:
    """A cap and today's usage against it."""

    cap: Cap
    usage: Usage

    @property
    def remaining(self) -> int | None:
        """Micro-dollars left today (never below 0); None without a cap."""
        if self.cap.micros is None:
            return None
        return max(0, self.cap.micros - self.usage.counted)

    def fits(self, amount: int) -> bool:
        return self.cap.micros is None or self.usage.counted + amount <= self.cap.micros

    def to_json(self) -> dict[str, Any]:
        remaining = self.remaining
        return {
            "cap_micros": self.cap.micros,
            "cap_source": self.cap.source or None,
            "billed_micros": self.usage.billed,
            "unconfirmed_micros": self.usage.unconfirmed,
            "reserved_micros": self.usage.reserved,
            "remaining_micros": remaining,
        }


@dataclass(frozen=True)
class BudgetStatus:
    """Today's budgets for one tenant: the account's and the tenant's own."""

    day: str
    tenant: str
    account: ScopeBudget
    own: ScopeBudget

    @property
    def remaining(self) -> int | None:
        """What the tenant may still spend today: the smaller of the two (None: no cap)."""
        left = [r for r in (self.account.remaining, self.own.remaining) if r is not None]
        return min(left) if left else None

    def fits(self, amount: int) -> bool:
        return self.account.fits(amount) and self.own.fits(amount)

    def describe(self, amount: int) -> str:
        """Which cap a job of ``amount`` meets, in words (for its error or log line)."""
        for name, scope in ((f"tenant {self.tenant}'s", self.own), ("the account's", self.account)):
            if not scope.fits(amount) and scope.cap.micros is not None:
                usage = scope.usage
                return (
                    f"{name} daily budget of {dollars(scope.cap.micros)} ({self.day} UTC) has "
                    f"no room for this job's {dollars(amount)}: billed {dollars(usage.billed)}, "
                    f"unconfirmed {dollars(usage.unconfirmed)}, reserved by jobs in flight "
                    f"{dollars(usage.reserved)}"
                )
        return f"a daily budget had no room for this job's {dollars(amount)} ({self.day} UTC)"

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "tenant": self.tenant,
            "remaining_micros": self.remaining,
            "account": self.account.to_json(),
            "tenant_budget": self.own.to_json(),
        }


@dataclass(frozen=True)
class DaySpend:
    """One UTC day's spend (``SPEND_KEY``), whole-account and per tenant."""

    day: str
    total: Mapping[str, int]
    by_tenant: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


MEASURES = ("billed", "images", "jobs", "unconfirmed")


def parse_day(day: str, raw: Mapping[Any, Any]) -> DaySpend:
    total: dict[str, int] = {}
    by_tenant: dict[str, dict[str, int]] = {}
    for name, value in raw.items():
        measure, _, tenant = _text(name).partition("|")
        if measure not in MEASURES:
            continue
        if tenant:
            by_tenant.setdefault(tenant, {})[measure] = int(value)
        else:
            total[measure] = int(value)
    return DaySpend(day, total, by_tenant)


class Budgets:
    """Reads spend and caps, and changes the run-time caps. The caps' enforcement is the
    store's transition script (``Budget``); this mirrors its rules for reports."""

    def __init__(
        self, client: redis.Redis, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self._caps_checked_at = -CAPS_CACHE_SECONDS
        self._runtime_caps = False

    # for the runner ---------------------------------------------------------------

    def budget(self, tenant: str, amount: int, *, mode: str, hold_until: float) -> Budget:
        """What the store needs to check (``mode="check"``) or reserve (``"reserve"``)."""
        caps = self.settings.tenant_budgets_micros
        return Budget(
            mode=mode,
            amount=amount,
            caps=(
                _or_none(self.settings.daily_budget_micros),
                _or_none(caps.get(tenant)),
                _or_none(caps.get(ANY_TENANT)),
            ),
            hold_until=hold_until,
        )

    def may_bind(self) -> bool:
        """Whether any cap is set (in the settings, or at run time, as read at most
        ``CAPS_CACHE_SECONDS`` ago): without one, a submit skips asking first."""
        if self.settings.daily_budget_micros is not None or self.settings.tenant_budgets_micros:
            return True
        now = time.monotonic()
        if now - self._caps_checked_at >= CAPS_CACHE_SECONDS:
            self._runtime_caps = bool(self.client.exists(BUDGETS_KEY))
            self._caps_checked_at = now
        return self._runtime_caps

    # reading ----------------------------------------------------------------------

    def status(self, tenant: str, *, day: str | None = None) -> BudgetStatus:
        """Today's caps and usage for ``tenant`` and the whole account (one round trip)."""
        day = day or utc_day(self.clock())
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(BUDGETS_KEY, [GLOBAL, tenant_field(tenant), tenant_field(ANY_TENANT)])
        pipe.hmget(
            SPEND_KEY.format(day=day),
            ["billed", "unconfirmed", f"billed|{tenant}", f"unconfirmed|{tenant}"],
        )
        pipe.hmget(RESERVED_KEY, ["total", tenant])
        runtime, spent, reserved = pipe.execute()
        own_cap = _pick(runtime[1], self.settings.tenant_budgets_micros.get(tenant))
        if own_cap is None:
            own_cap = _pick(runtime[2], self.settings.tenant_budgets_micros.get(ANY_TENANT))
        return BudgetStatus(
            day=day,
            tenant=tenant,
            account=ScopeBudget(
                _pick(runtime[0], self.settings.daily_budget_micros) or Cap(None),
                Usage(_int(spent[0]), _int(spent[1]), _int(reserved[0])),
            ),
            own=ScopeBudget(
                own_cap or Cap(None), Usage(_int(spent[2]), _int(spent[3]), _int(reserved[1]))
            ),
        )

    def runtime_caps(self) -> dict[str, int | None]:
        """Caps set at run time: ``global`` and ``tenant:<name>`` -> micro-dollars or None."""
        raw: dict[Any, Any] = self.client.hgetall(BUDGETS_KEY)
        return {_text(k): None if _text(v) == "none" else int(_text(v)) for k, v in raw.items()}

    def spend(self, days: Sequence[str]) -> list[DaySpend]:
        """The spend of ``days`` (UTC dates), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(SPEND_KEY.format(day=day))
        return [parse_day(day, raw) for day, raw in zip(days, pipe.execute(), strict=True)]

    def reserved(self) -> dict[str, int]:
        """Micro-dollars reserved now: ``total`` and per tenant."""
        raw: dict[Any, Any] = self.client.hgetall(RESERVED_KEY)
        return {_text(k): int(v) for k, v in raw.items() if int(v)}

    def held_count(self) -> int:
        return int(self.client.zcard(HELD_KEY))

    # changing the run-time caps ------------------------------------------------------

    def set_cap(self, tenant: str | None, micros: int | None) -> None:
        """Cap ``tenant`` (None: the whole account; ``*``: every tenant without its own) at
        ``micros`` a day from now on, or lift its cap (``micros`` None), overriding the
        settings. Jobs held for it are woken by the caller (``wake_held``)."""
        value = "none" if micros is None else str(int(micros))
        self.client.hset(BUDGETS_KEY, GLOBAL if tenant is None else tenant_field(tenant), value)

    def clear_cap(self, tenant: str | None) -> None:
        """Forget the run-time cap: the settings' one applies again."""
        self.client.hdel(BUDGETS_KEY, GLOBAL if tenant is None else tenant_field(tenant))

    def due_again(self) -> None:
        """Every held job may be woken at once (a cap changed): ``wake_held`` looks at all."""
        held: list[tuple[Any, float]] = self.client.zrange(HELD_KEY, 0, -1, withscores=True)  # type: ignore[assignment]
        if held:
            self.client.zadd(HELD_KEY, {_text(job): 0 for job, _ in held}, xx=True)


def wake_held(
    budgets: Budgets,
    snapshots: Callable[[Sequence[str]], Sequence[JobSnapshot | None]],
    send: Callable[[JobSnapshot], None],
    *,
    limit: int = WAKE_BATCH,
) -> int:
    """Send again the held jobs (due for a look, oldest first, ``limit`` at most) that
    today's budgets now have room for; returns how many. The others stay held and are
    looked at again after ``WAKE_GRACE``; a job that no longer waits (it ended, or a copy
    claimed it) leaves the set. Room is shared as it is handed out, so one wake does not
    send many more jobs than can be submitted (a job sent that finds no room after all is
    simply held again)."""
    client = budgets.client
    now = budgets.clock()
    due: list[Any] = client.zrangebyscore(HELD_KEY, "-inf", now, 0, limit)
    job_ids = [_text(job) for job in due]
    if not job_ids:
        return 0
    client.zadd(HELD_KEY, dict.fromkeys(job_ids, now + WAKE_GRACE), xx=True)
    gone: list[str] = []
    statuses: dict[str, BudgetStatus] = {}
    taken: dict[str, int] = {}
    taken_total = 0
    woken = 0
    for job_id, snap in zip(job_ids, snapshots(job_ids), strict=True):
        if snap is None or not _still_held(snap):
            gone.append(job_id)
            continue
        tenant = snap.state.tenant
        if tenant not in statuses:
            statuses[tenant] = budgets.status(tenant)
        status = statuses[tenant]
        amount = price_of(snap.state.model, snap.state.images)
        room = _room_left(status, taken.get(tenant, 0), taken_total)
        if room is not None and amount > room:
            continue
        taken[tenant] = taken.get(tenant, 0) + amount
        taken_total += amount
        try:
            send(snap)
            woken += 1
        except Exception as exc:  # noqa: BLE001 - a wake is best effort: the next pass retries
            log.warning("could not wake held job %s (%s); the sweeper will", job_id, exc)
    if gone:
        client.zrem(HELD_KEY, *gone)
    if woken:
        log.info("woke %d job(s) held for a daily budget", woken)
    return woken


def _room_left(status: BudgetStatus, taken_by_tenant: int, taken_total: int) -> int | None:
    rooms = []
    if status.account.remaining is not None:
        rooms.append(status.account.remaining - taken_total)
    if status.own.remaining is not None:
        rooms.append(status.own.remaining - taken_by_tenant)
    return min(rooms) if rooms else None


def _still_held(snap: JobSnapshot) -> bool:
    state = snap.state
    return (
        not state.is_terminal
        and state.held == HELD_BUDGET
        and not snap.field("prediction_id")
        and not snap.field("submit_token")
    )


def budgets_from(
    settings: Settings,
    runtime: Mapping[str, str],
    spent: Mapping[str, str],
    reserved: Mapping[str, str],
) -> tuple[ScopeBudget, dict[str, ScopeBudget]]:
    """Today's budgets from the raw hashes (``BUDGETS_KEY``, ``SPEND_KEY``,
    ``RESERVED_KEY``), read once: the account's, and each tenant's that has a cap of its
    own or used anything today (the exporter's view; ``Budgets.status`` for one tenant)."""

    def usage(suffix: str) -> Usage:
        return Usage(
            _int(spent.get("billed" + suffix)),
            _int(spent.get("unconfirmed" + suffix)),
            _int(reserved.get(suffix.removeprefix("|") or "total")),
        )

    account = ScopeBudget(
        _pick(runtime.get(GLOBAL), settings.daily_budget_micros) or Cap(None), usage("")
    )
    names = {name for name in settings.tenant_budgets_micros if name != ANY_TENANT}
    names |= {f.removeprefix("tenant:") for f in runtime if f.startswith("tenant:")} - {ANY_TENANT}
    names |= {f.partition("|")[2] for f in spent if "|" in f}
    names |= {name for name, value in reserved.items() if name != "total" and _int(value)}
    tenants = {}
    for name in sorted(names):
        cap = _pick(runtime.get(tenant_field(name)), settings.tenant_budgets_micros.get(name))
        if cap is None:
            any_tenant = settings.tenant_budgets_micros.get(ANY_TENANT)
            cap = _pick(runtime.get(tenant_field(ANY_TENANT)), any_tenant) or Cap(None)
        tenants[name] = ScopeBudget(cap, usage("|" + name))
    return account, tenants


def _pick(runtime: Any, setting: int | None) -> Cap | None:
    """The Lua's rule: a run-time value wins ("none": no cap), else the setting's."""
    if runtime is not None:
        text = _text(runtime)
        return Cap(None, "runtime") if text == "none" else Cap(int(text), "runtime")
    if setting is not None:
        return Cap(setting, "settings")
    return None


def _or_none(micros: int | None) -> int:
    return -1 if micros is None else int(micros)


def _int(value: Any) -> int:
    return int(_text(value)) if value is not None else 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def last_days(now: float, days: int) -> list[str]:
    """The UTC dates of the last ``days`` days, today first."""
    return [utc_day(now - 86400 * back) for back in range(max(1, days))]


def tenants_in(spend: Iterable[DaySpend]) -> list[str]:
    return sorted({tenant for day in spend for tenant in day.by_tenant})
