"""Finding jobs without scanning them: pages of the list index the store's scripts keep.

The index (``JOBS_INDEX_KEY``) is one sorted set per (status, model, tenant); the
(model, tenant) pairs that have had a job are named in ``JOBS_REGISTRY_KEY``. Every
member is ``<time>:<job id>``, score 0, so a set sorts by text: by when the job entered
its status (``%014.3f`` seconds), then by id.
A job is in exactly one set; ``JobStore.transition`` moves it at every status change and
trims ended jobs with their records' TTL.

A page for a filter (statuses, models, tenants, a time from which) reads, from each set
that matches, the ``limit + 1`` newest members below the cursor (``ZREVRANGEBYLEX``, one
pipeline), merges them, keeps the newest ``limit`` and reads those records' states (one
more pipeline). Its cost is O(K x limit) where K is the number of matching sets (the
statuses wanted x the models and tenants that have had jobs), whatever the number of
jobs: never a scan of keys.
The cursor is the last member returned, so paging is exact even when many jobs share a
time (``submit_many`` gives a whole batch one ``created_at``). A job that changes status
while someone pages may show up again, or not at all, in that paging: it moved.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import redis

from worker.constants import JOBS_INDEX_KEY, JOBS_REGISTRY_KEY
from worker.errors import ValidationError
from worker.models import TERMINAL_STATUSES, JobState, JobStatus
from worker.store import JobStore

#: A page holds at most this many jobs.
MAX_PAGE = 500
DEFAULT_PAGE = 50
#: ``<time>:<job id>``: what the index holds and what a cursor is (no character a shell
#: would read: a cursor is pasted into commands). Six decimals: a member (and a cursor)
#: written before times were kept to the millisecond.
_MEMBER = re.compile(r"\d{10}\.\d{3}(?:\d{3})?:[0-9a-f]{1,64}")


def index_time(seconds: float) -> str:
    """A time as the index spells it (``%014.3f``: fixed width, so text order is time order)."""
    return f"{seconds:014.3f}"


@dataclass(frozen=True)
class Place:
    """One index set: the jobs of one status, model and tenant."""

    status: str
    model: str
    tenant: str

    @property
    def name(self) -> str:
        return f"{self.status}|{self.model}|{self.tenant}"

    @property
    def key(self) -> str:
        return JOBS_INDEX_KEY.format(place=self.name)

    @property
    def pair(self) -> str:
        """Its model and tenant, as the registry names them."""
        return f"{self.model}|{self.tenant}"


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing shows; an empty collection (or None) means "any"."""

    statuses: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    #: Only jobs that entered their status at or after this time (epoch seconds).
    since: float | None = None

    def takes(self, place: Place) -> bool:
        return (
            (not self.statuses or place.status in self.statuses)
            and (not self.models or place.model in self.models)
            and (not self.tenants or place.tenant in self.tenants)
        )

    def keeps(self, state: JobState) -> bool:
        """Whether a record read for a page still fits (it may have moved since)."""
        return (
            (not self.statuses or state.status.value in self.statuses)
            and (not self.models or state.model in self.models)
            and (not self.tenants or state.tenant in self.tenants)
        )


@dataclass(frozen=True)
class JobPage:
    """Jobs, newest status change first, and the cursor of the next page (None: the end)."""

    jobs: list[JobState]
    next_cursor: str | None


def as_set(value: str | Iterable[str] | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(str(item) for item in value)


def check_filter(
    *,
    status: str | Iterable[str] | None,
    model: str | Iterable[str] | None,
    tenant: str | Iterable[str] | None,
    since: float | None,
    limit: int,
    cursor: str | None,
) -> JobFilter:
    """A ``JobFilter`` from a caller's values; ``ValidationError`` naming every bad one."""
    problems: dict[str, str] = {}
    statuses = as_set(status)
    unknown = sorted(statuses - {s.value for s in JobStatus})
    if unknown:
        known = ", ".join(s.value for s in JobStatus)
        problems["status"] = f"unknown {', '.join(unknown)} (one of {known})"
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        problems["limit"] = f"must be an integer from 1 to {MAX_PAGE}"
    if cursor is not None and not _MEMBER.fullmatch(cursor):
        problems["cursor"] = "not a cursor from an earlier page"
    if problems:
        raise ValidationError(problems)
    return JobFilter(statuses, as_set(model), as_set(tenant), since)


def places(
    client: redis.Redis, wanted: JobFilter, pairs: Collection[str] | None = None
) -> list[Place]:
    """The index sets that match: every status wanted, for each registered model and
    tenant that match (one SMEMBERS of a small set, unless the caller read it)."""
    if pairs is None:
        pairs = client.smembers(JOBS_REGISTRY_KEY)  # type: ignore[assignment]
        assert pairs is not None
    statuses = sorted(wanted.statuses) if wanted.statuses else [s.value for s in JobStatus]
    found = []
    for pair in pairs:
        model, sep, tenant = _text(pair).rpartition("|")
        if sep:
            found += [Place(status, model, tenant) for status in statuses]
    return sorted((p for p in found if wanted.takes(p)), key=lambda p: p.name)


def list_jobs(
    store: JobStore, wanted: JobFilter, *, limit: int = DEFAULT_PAGE, cursor: str | None = None
) -> JobPage:
    """One page of jobs that match ``wanted``, after ``cursor`` (see the module's text)."""
    matching = places(store.client, wanted)
    low = "[" + index_time(wanted.since) if wanted.since is not None else "-"
    jobs: list[JobState] = []
    while len(jobs) < limit:
        high = "(" + cursor if cursor is not None else "+"
        pipe = store.client.pipeline(transaction=False)
        for place in matching:
            pipe.zrevrangebylex(place.key, high, low, 0, limit + 1)
        found: list[tuple[str, Place]] = []
        seen: dict[str, bool] = {}
        for place, members in zip(matching, pipe.execute(), strict=True):
            found.extend((str(member), place) for member in members)
            seen[place.pair] = seen.get(place.pair, False) or bool(members)
        if cursor is None and wanted.since is None:
            # A pair none of whose sets has anything may be gone: the registry forgets it if
            # so (the store checks every status, atomically).
            store.prune_index([], [pair for pair, any_found in seen.items() if not any_found])
        found.sort(key=lambda pair: pair[0], reverse=True)
        page = found[: limit - len(jobs)]
        if not page:
            return JobPage(jobs, None)
        ids = [member.rpartition(":")[2] for member, _ in page]
        gone: list[tuple[str, str]] = []
        for (member, place), state in zip(page, store.get_states(ids), strict=True):
            if state is None:
                gone.append((place.key, member))  # expired while live: drop its entry
            elif wanted.keeps(state):
                jobs.append(state)
        store.prune_index(gone)
        cursor = page[-1][0]
        if len(found) <= len(page):
            return JobPage(jobs, None)
    return JobPage(jobs, cursor)


@dataclass(frozen=True)
class IndexFigures:
    """What the index tells at a glance (the exporter and the jobs page show these)."""

    #: When the job waiting longest entered ``queued`` (epoch seconds), if any waits.
    oldest_queued_at: float | None
    #: Jobs that ended in the window, by terminal status (trimmed with the record TTL,
    #: so a window longer than that counts only what is still kept).
    ended: dict[str, int]


def index_figures(client: redis.Redis, now: float, window: float = 3600.0) -> IndexFigures:
    """Oldest waiting job and jobs ended in the last ``window`` seconds: one SMEMBERS, then
    one command per matching index set (a queued and four ended sets per model and tenant
    that have had jobs), in one pipeline. As many commands for ten jobs as for millions."""
    pairs = [_text(pair) for pair in client.smembers(JOBS_REGISTRY_KEY)]
    queued = places(client, JobFilter(statuses=frozenset({JobStatus.QUEUED.value})), pairs)
    terminal = frozenset(s.value for s in TERMINAL_STATUSES)
    ended = places(client, JobFilter(statuses=terminal), pairs)
    pipe = client.pipeline(transaction=False)
    for place in queued:
        pipe.zrangebylex(place.key, "-", "+", 0, 1)
    start = "[" + index_time(now - window)
    for place in ended:
        pipe.zlexcount(place.key, start, "+")
    replies = pipe.execute()
    firsts = [_text(r[0]) for r in replies[: len(queued)] if r]
    counts = {status.value: 0 for status in TERMINAL_STATUSES}
    for place, count in zip(ended, replies[len(queued) :], strict=True):
        counts[place.status] += int(count)
    oldest = float(min(firsts).partition(":")[0]) if firsts else None
    return IndexFigures(oldest_queued_at=oldest, ended=counts)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
