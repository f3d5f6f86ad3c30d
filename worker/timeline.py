"""A job's timeline: what happened to it and when, kept small in its own record.

The store's transition script appends one token per event to the record's ``timeline``
field, ``<code><seconds since the job was created>`` (``S0.4``), space-separated: a
status change, a poll answered, an error retry, a wait for an in-flight slot. A job's
usual life is a few tokens (``s0.1 S0.4 p5.2 C5.2``), some twenty bytes. Past
``TIMELINE_LIMIT`` characters only the job's ending is still added, so a job that polls
for an hour cannot grow its record. The jobs page (``ops/jobs_page``) draws it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker.models import JobStatus

#: Status changes: the status entered.
TIMELINE_STATUS_CODES: Mapping[str, str] = {
    JobStatus.SUBMITTING.value: "s",
    JobStatus.SUBMITTED.value: "S",
    JobStatus.PROCESSING.value: "P",
    JobStatus.PERSISTING.value: "K",
    JobStatus.COMPLETED.value: "C",
    JobStatus.FAILED.value: "F",
    JobStatus.TIMED_OUT.value: "T",
    JobStatus.CANCELLED.value: "X",
}
#: Counters a write bumps on the record, each an event of its own.
TIMELINE_INCREMENT_CODES: Mapping[str, str] = {
    "polls": "p",
    "error_retries": "r",
    "inflight_waits": "w",
}
#: Characters after which only a job's ending is still added.
TIMELINE_LIMIT = 400

_WORDS = {
    **{code: status for status, code in TIMELINE_STATUS_CODES.items()},
    "p": "poll",
    "r": "error retry",
    "w": "waited for an in-flight slot",
}


def lua_codes(codes: Mapping[str, str]) -> str:
    """A mapping as a Lua table literal, baked into the store's script."""
    return "{" + ",".join(f"[{name!r}]={code!r}" for name, code in codes.items()) + "}"


@dataclass(frozen=True)
class TimelineEvent:
    #: Seconds after the job was created.
    at: float
    #: What happened: a status entered, "poll", "error retry" or "waited for an in-flight slot".
    what: str


def parse_timeline(text: str) -> list[TimelineEvent]:
    """The events of a record's ``timeline`` field (tokens it cannot read are skipped: a
    newer version may write more kinds)."""
    events = [TimelineEvent(0.0, JobStatus.QUEUED.value)]
    polls = 0
    for token in text.split():
        what = _WORDS.get(token[:1])
        try:
            at = float(token[1:])
        except ValueError:
            continue
        if what is None:
            continue
        if what == "poll":
            polls += 1
            what = f"poll {polls}"
        events.append(TimelineEvent(at, what))
    return events
