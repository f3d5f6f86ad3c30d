"""Everything the checks judge, read once at the end of a run.

From Redis: every job's record (raw hash and decoded), every chain, the broker's
messages, and records written by producer calls that raised. From the emulator:
every prediction (input as received, submit faults, answer) and its stats. From
disk: every worker log. The checks read only this, so each one stays a pure
function of what the run left behind.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from tests.chaos.broker import BrokerMessage, read_messages
from tests.chaos.monitor import FaultEvent
from tests.chaos.workload import Enqueued, Kind, ProducerCall, tag_of
from worker.constants import JOB_KEY, REQUEST_KEY
from worker.models import JobRecord
from worker.settings import Settings
from worker.store import decode_record

#: Where a Celery log record starts (``[2026-01-31 12:00:00,123: INFO/MainProcess] ...``).
RECORD_START = re.compile(r"^(?=\[\d{4}-\d\d-\d\d )", re.MULTILINE)


@dataclass
class JobFacts:
    job_id: str
    tag: str
    item: Enqueued
    step: int
    raw: dict[str, str]
    record: JobRecord | None
    decode_error: str | None = None
    #: True for a record written by a producer call that then raised.
    orphan: bool = False

    @property
    def status(self) -> str:
        if not self.raw:
            return "missing"
        return self.raw.get("status", "") or "?"

    @property
    def error_code(self) -> str:
        return str(self.record.error.code) if self.record and self.record.error else ""


@dataclass
class RunFacts:
    scenario: str
    settings: Settings
    items: list[Enqueued]
    jobs: dict[str, JobFacts]
    predictions: list[dict[str, Any]]
    emulator_stats: dict[str, Any]
    producer_calls: list[ProducerCall]
    logs: list[tuple[Path, str]]
    events: list[FaultEvent]
    messages: list[BrokerMessage]
    predictions_by_tag: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: (Redis keys, files) searched for the API key; set by the key check.
    key_searched: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for prediction in self.predictions:
            tag = tag_of(str(prediction.get("input", {}).get("prompt", "")))
            if tag:
                grouped[tag].append(prediction)
        for found in grouped.values():
            found.sort(key=lambda p: str(p["created_at"]))
        self.predictions_by_tag = dict(grouped)

    @property
    def policy(self) -> str:
        return self.settings.ambiguous_submit_policy

    def by_tag(self) -> dict[str, JobFacts]:
        return {job.tag: job for job in self.jobs.values()}

    def log_records(self, text: str) -> list[str]:
        """Log records (a line starting ``[<date>`` plus its continuation lines, e.g. a
        traceback) that contain ``text``, each as ``file: first line``."""
        found = []
        for path, log in self.logs:
            for record in RECORD_START.split(log):
                if text in record:
                    found.append(f"{path.name}: {record.strip().splitlines()[0]}")
        return found

    def log_lines(self, text: str) -> list[str]:
        return [
            f"{path.name}: {line}"
            for path, log in self.logs
            for line in log.splitlines()
            if text in line
        ]


def read_jobs(client: redis.Redis, items: list[Enqueued]) -> dict[str, JobFacts]:
    wanted = [(item, step, job_id) for item in items for step, job_id in enumerate(item.job_ids, 1)]
    pipe = client.pipeline(transaction=False)
    for _, _, job_id in wanted:
        pipe.hgetall(JOB_KEY.format(job_id=job_id))
        pipe.get(REQUEST_KEY.format(job_id=job_id))
    replies = pipe.execute()
    jobs: dict[str, JobFacts] = {}
    for (item, step, job_id), raw, request in zip(wanted, replies[::2], replies[1::2], strict=True):
        jobs[job_id] = _job_facts(item, step, job_id, raw, request)
    return jobs


def _job_facts(
    item: Enqueued, step: int, job_id: str, raw: dict[str, str], request: str | None
) -> JobFacts:
    record, error = None, None
    if raw:
        try:
            record = decode_record(raw, request, job_id)
        except (ValidationError, ValueError) as exc:
            error = str(exc).splitlines()[0]
    return JobFacts(job_id, item.tag(step), item, step, raw, record, error)


def find_orphans(client: redis.Redis, calls: list[ProducerCall], known: set[str]) -> list[Enqueued]:
    """Records written by producer calls that raised (found by their ``chaos_ref``)."""
    failed_refs = {call.ref for call in calls if call.error}
    if not failed_refs:
        return []
    found: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for key in client.scan_iter(match=JOB_KEY.format(job_id="*"), count=1000):
        job_id = key.split(":", 2)[2]
        if job_id in known or job_id.endswith(":request"):
            continue
        step = client.hget(key, "step")
        request = client.get(REQUEST_KEY.format(job_id=job_id))
        metadata = json.loads(request).get("metadata") if request else None
        ref = _ref_of(json.dumps(metadata) if metadata else None)
        if ref in failed_refs:
            found[ref].append((int(step or 1), job_id))
    orphans = []
    for ref, steps in found.items():
        steps.sort()
        kind: Kind = "chain" if ref.startswith("c") else "text-to-image"
        orphans.append(Enqueued(ref, kind, "?", [job_id for _, job_id in steps], None, 0.0))
    return orphans


def _ref_of(metadata: str | None) -> str | None:
    try:
        value = json.loads(metadata or "{}")
    except ValueError:
        return None
    ref = value.get("chaos_ref") if isinstance(value, dict) else None
    return str(ref) if ref else None


def collect(
    *,
    scenario: str,
    client: redis.Redis,
    settings: Settings,
    items: list[Enqueued],
    calls: list[ProducerCall],
    predictions: list[dict[str, Any]],
    emulator_stats: dict[str, Any],
    logs: list[tuple[Path, str]],
    events: list[FaultEvent],
) -> RunFacts:
    known = {job_id for item in items for job_id in item.job_ids}
    orphans = find_orphans(client, calls, known)
    jobs = read_jobs(client, items + orphans)
    for orphan in orphans:
        for job_id in orphan.job_ids:
            jobs[job_id].orphan = True
    return RunFacts(
        scenario=scenario,
        settings=settings,
        items=items + orphans,
        jobs=jobs,
        predictions=predictions,
        emulator_stats=emulator_stats,
        producer_calls=calls,
        logs=logs,
        events=events,
        messages=read_messages(client),
    )
