"""The invariants, one function each, judged from ``RunFacts`` (and, for the key, from
Redis and the files themselves). Each returns ``Violation``s naming the job (or
message, or file), the invariant, and the evidence: record fields, emulator
records, log lines. An empty list means the invariant held.
"""

from __future__ import annotations

import io
import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from PIL import Image

from tests.chaos.facts import JobFacts, RunFacts
from tests.chaos.faults import PoisonMessage
from tests.chaos.monitor import TERMINAL, FaultEvent, ProgressMonitor
from tests.chaos.secrets_scan import Hit
from tests.support.emulator import input_key
from worker.models import MODEL_PREFIX

#: Remote task codes after which the worker submits a new prediction by design.
TRANSIENT_TASK_CODES = range(5000, 6000)
#: Faults that leave the submit's outcome unknown to the worker without creating anything.
AMBIGUOUS_NO_CREATE = ("submit_500", "submit_502", "submit_drop_before_create")
#: Faults after which the worker may (and must, to finish) submit again: "not created".
SAFE_REFUSALS = ("submit_503", "submit_429")
#: Faults that can lose a submit answer the emulator did deliver: the worker dies, or
#: cannot store the prediction id, between the answer and the store. (A connection cut
#: before the answer, by a kill or the gate, the emulator records as ``client_left``.)
INTERRUPTIONS = ("worker_kill", "redis_restart", "redis_down", "emulator_down")
#: Seconds between a delivered answer and the worker storing the id, on a busy machine.
STORE_SLACK = 2.0


@dataclass(frozen=True)
class Violation:
    invariant: str
    subject: str
    evidence: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.subject}: {self.evidence}"


# --- every job and chain ends terminal -----------------------------------------------------


def every_job_ends_terminal(facts: RunFacts) -> list[Violation]:
    """Completed, failed with a reason, or timed out; none stuck, none missing. A chain
    step after a failed step never runs: it must still be queued and never submitted."""
    found: list[Violation] = []
    for item in facts.items:
        steps = [facts.jobs[job_id] for job_id in item.job_ids]
        stopped_at = next((s.step for s in steps if s.status in ("failed", "timed_out")), None)
        for job in steps:
            if stopped_at is not None and job.step > stopped_at:
                found += _never_ran(facts, job, stopped_at)
            else:
                found += _terminal_with_reason(job)
    return found


def _terminal_with_reason(job: JobFacts) -> list[Violation]:
    if not job.raw:
        return [Violation("terminal", _who(job), "record missing (lost)")]
    if job.record is None:
        return [Violation("terminal", _who(job), f"record cannot be read: {job.decode_error}")]
    if job.status not in TERMINAL:
        return [Violation("terminal", _who(job), f"stuck in {job.status}: {_bookkeeping(job)}")]
    error = job.record.error
    if job.status != "completed" and (error is None or not error.message):
        return [Violation("terminal", _who(job), f"{job.status} without a reason")]
    return []


def _never_ran(facts: RunFacts, job: JobFacts, stopped_at: int) -> list[Violation]:
    found = []
    if job.status != "queued" and job.status not in TERMINAL:
        found.append(
            Violation("terminal", _who(job), f"runs ({job.status}) after step {stopped_at} failed")
        )
    if facts.predictions_by_tag.get(job.tag):
        found.append(
            Violation("terminal", _who(job), f"submitted although step {stopped_at} failed")
        )
    return found


def is_lost(violation: Violation) -> bool:
    return violation.invariant == "terminal" and (
        "missing" in violation.evidence or "stuck" in violation.evidence
    )


# --- submitted once ---------------------------------------------------------------------


def submitted_once(facts: RunFacts) -> list[Violation]:
    """Each extra prediction for a job's input needs a reason the worker could see:

    - both policies: the earlier prediction failed with a 5xxx task code (the service
      broke, not the request; a new prediction is the documented answer);
    - ``resubmit`` only: the earlier prediction's answer never reached the worker
      (the emulator recorded ``submit_answer`` other than ``delivered``, or the gate
      in front of it cut the connections within ``STORE_SLACK`` of its creation), or an
      interruption (worker SIGKILL, Redis outage) fell between its creation and the
      worker storing its id.

    Under ``fail``, a job also may not see two ambiguous submits (a re-send after a
    500/502/dropped connection/lost answer is exactly what the policy forbids).
    """
    found: list[Violation] = []
    interruptions = [e for e in facts.events if e.kind in INTERRUPTIONS]
    per_input_faults = facts.emulator_stats["submissions"].get("faults_per_input", {})
    read_timeout = facts.settings.read_timeout
    for job in facts.jobs.values():
        predictions = facts.predictions_by_tag.get(job.tag, [])
        for earlier, later in itertools.pairwise(predictions):
            reason = _why_again(facts.policy, earlier, interruptions, read_timeout)
            if reason is None:
                found.append(
                    Violation(
                        "submitted once",
                        _who(job),
                        f"prediction {later['id']} created after {earlier['id']} "
                        f"({_describe_prediction(earlier)}) with no reason to submit again",
                    )
                )
        if facts.policy == "fail":
            keys = {p["input_key"] for p in predictions} | {_input_key(job)}
            faults = Counter[str]()
            for key in keys:
                faults.update(per_input_faults.get(key, {}))
            ambiguous = sum(faults[k] for k in AMBIGUOUS_NO_CREATE) + sum(
                1 for p in predictions if p.get("submit_answer", "delivered") != "delivered"
            )
            if ambiguous > 1:
                found.append(
                    Violation(
                        "submitted once",
                        _who(job),
                        f"re-sent after an ambiguous submit under policy fail: {dict(faults)}, "
                        f"answers {[p.get('submit_answer') for p in predictions]}",
                    )
                )
    return found


def second_prediction_reasons(facts: RunFacts) -> Counter[str]:
    """Why each extra prediction happened ("unjustified" when nothing explains it)."""
    interruptions = [e for e in facts.events if e.kind in INTERRUPTIONS]
    reasons = Counter[str]()
    for job in facts.jobs.values():
        predictions = facts.predictions_by_tag.get(job.tag, [])
        for earlier, _ in itertools.pairwise(predictions):
            reason = _why_again(facts.policy, earlier, interruptions, facts.settings.read_timeout)
            reasons[(reason or "unjustified").split(" by ")[0]] += 1
    return reasons


def _why_again(
    policy: str, earlier: dict[str, Any], interruptions: list[FaultEvent], read_timeout: float
) -> str | None:
    if earlier["status"] == "failed" and earlier.get("code") in TRANSIENT_TASK_CODES:
        return "remote failure"
    if policy != "resubmit":
        return None
    if earlier.get("submit_answer", "delivered") != "delivered":
        return "answer lost"
    created = _epoch(earlier["created_at"])
    for event in interruptions:
        end = event.end or event.start
        if event.kind == "worker_kill":
            hit = created <= event.start <= created + STORE_SLACK
        elif event.kind == "emulator_down":
            # The gate resets every connection at once: an answer the emulator had
            # written (``delivered`` to it) but the gate had not passed on never reached
            # the worker. The event's start is taken as the gate is told, so a
            # prediction the emulator created a moment later can still be cut.
            hit = abs(event.start - created) <= STORE_SLACK
        else:  # Redis gone while the POST was out: its answer could not be stored
            hit = event.start - read_timeout <= created <= end + STORE_SLACK
        if hit:
            return f"interrupted by {event.label}"
    return None


def _describe_prediction(prediction: dict[str, Any]) -> str:
    return (
        f"status {prediction['status']}, code {prediction.get('code')}, "
        f"submit faults {prediction.get('submit_faults')}, "
        f"answer {prediction.get('submit_answer')}, created {prediction['created_at']}"
    )


def _input_key(job: JobFacts) -> str:
    """The emulator's key for the body the worker sends (the record's input)."""
    if job.record is None:
        return ""
    model = job.record.model.removeprefix(MODEL_PREFIX)
    return input_key(MODEL_PREFIX + model, job.record.input)


def double_submitted_jobs(violations: Iterable[Violation]) -> set[str]:
    return {v.subject for v in violations if v.invariant == "submitted once"}


# --- outputs and chains -----------------------------------------------------------------


def outputs_fetchable(facts: RunFacts, threads: int = 8) -> list[Violation]:
    """Every output URL of every completed job answers 200 with a decodable image."""
    wanted = [
        (job, url)
        for job in facts.jobs.values()
        if job.record is not None and job.status == "completed"
        for url in job.record.outputs or ["<no outputs>"]
    ]
    with ThreadPoolExecutor(threads) as pool:
        problems = list(pool.map(lambda pair: _fetch_problem(pair[1]), wanted))
    return [
        Violation("outputs fetchable", _who(job), f"{url}: {problem}")
        for (job, url), problem in zip(wanted, problems, strict=True)
        if problem
    ]


def _fetch_problem(url: str) -> str | None:
    if not url.startswith("http"):
        return "completed with no output URL"
    try:
        response = requests.get(url, timeout=15)
    except requests.RequestException as exc:
        return f"GET failed: {type(exc).__name__}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    try:
        Image.open(io.BytesIO(response.content)).verify()
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the finding
        return f"not an image ({type(exc).__name__})"
    return None


def chain_inputs_are_previous_outputs(facts: RunFacts) -> list[Violation]:
    """Every submitted chain step's input image (as the emulator received it) is the
    first output of the step before."""
    found = []
    for item in facts.items:
        if item.kind != "chain":
            continue
        steps = [facts.jobs[job_id] for job_id in item.job_ids]
        for previous, step in itertools.pairwise(steps):
            expected = (
                previous.record.outputs[0] if previous.record and previous.record.outputs else None
            )
            for prediction in facts.predictions_by_tag.get(step.tag, []):
                received = prediction["input"].get("image")
                if received != expected:
                    found.append(
                        Violation(
                            "chain input",
                            _who(step),
                            f"prediction {prediction['id']} got image {received!r}; "
                            f"step {previous.step} output is {expected!r}",
                        )
                    )
    return found


# --- the API key ------------------------------------------------------------------------


def key_nowhere(hits: list[Hit]) -> list[Violation]:
    return [Violation("API key", hit.where, f"...{hit.excerpt}...") for hit in hits]


# --- scenario-specific ------------------------------------------------------------------


def warm_stop_hands_back(facts: RunFacts) -> list[Violation]:
    """A warm-stopped worker's held messages are back in the queue when it exits."""
    found = []
    for event in facts.events:
        if event.kind != "warm_stop":
            continue
        worker = event.detail.get("worker", "?")
        if event.detail.get("exit_code") != 0:
            found.append(
                Violation("warm stop", worker, f"exit code {event.detail.get('exit_code')}")
            )
        for job_id, where in (event.detail.get("stranded") or {}).items():
            found.append(
                Violation(
                    "warm stop",
                    f"job {job_id}",
                    f"held by {worker}; right after it exited: {where} (not back in a queue)",
                )
            )
    return found


def poison_acked_once(facts: RunFacts) -> list[Violation]:
    """Each poison message is gone from the broker (queues and ``unacked``), was
    received at most once, and left exactly one log record naming it (the job id; for
    an unknown task name, that name), plus at most one from the sweeper setting a bad
    record aside; the sweeper never fails a pass over it."""
    found = []
    for event in facts.events:
        if event.kind != "poison":
            continue
        for poison in event.detail.get("poison", []):
            found += _poison_violations(facts, poison)
        # A pass while Redis is away fails and is retried: that is not the poison's doing.
        outages = _redis_outages(facts, slack=2.0)
        failed_passes = [
            record
            for record in facts.log_records("sweeper pass failed")
            if not any(start <= _logged_at(record) <= end for start, end in outages)
        ]
        if failed_passes:
            found.append(
                Violation(
                    "poison",
                    "sweeper",
                    f"{len(failed_passes)} failed sweeper pass(es), first: {failed_passes[0]}",
                )
            )
    return found


def _poison_violations(facts: RunFacts, poison: PoisonMessage) -> list[Violation]:
    found = []
    subject = f"poison ({poison.kind})"
    still = [m.where for m in facts.messages if m.task_id == poison.task_id]
    if still:
        found.append(Violation("poison", subject, f"still in the broker: {still}"))
    received = facts.log_records(f"[{poison.task_id}] received")
    if len(received) > 1:
        found.append(Violation("poison", subject, f"received {len(received)} times"))
    records = facts.log_records(poison.marker)
    # The sweeper may meet the same bad record once (and set it aside); every other
    # record is about the message, and there must be exactly one.
    by_sweeper = [r for r in records if "sweeper" in r]
    about_message = [r for r in records if "sweeper" not in r]
    if len(about_message) != 1 or len(by_sweeper) > 1:
        shown = "; ".join(line[:220] for line in (records or facts.log_records(poison.task_id))[:3])
        found.append(
            Violation(
                "poison",
                subject,
                f"{len(about_message)} log records about the message and {len(by_sweeper)} "
                f"from the sweeper name {poison.marker}" + (f": {shown}" if shown else ""),
            )
        )
    return found


def producer_bounded(facts: RunFacts, max_block: float) -> list[Violation]:
    """During an outage a producer call raises a clear error (a ``WavequeueError``,
    the producer's documented base) or returns, within ``max_block`` seconds."""
    found = []
    for call in facts.producer_calls:
        if call.seconds > max_block:
            found.append(
                Violation("producer", call.ref, f"blocked {call.seconds:.1f}s > {max_block:g}s")
            )
        if call.error and not call.wavequeue_error:
            found.append(Violation("producer", call.ref, f"unclear error: {call.error[:240]}"))
    return found


def producer_reconnects(facts: RunFacts, slack: float = 2.0) -> list[Violation]:
    """A producer call fails only while Redis is away: once it is back, the producer's
    next call works without anyone rebuilding the client."""
    outages = _redis_outages(facts, slack)
    return [
        Violation("producer", call.ref, f"failed while Redis was up: {call.error[:200]}")
        for call in facts.producer_calls
        if call.error
        and not any(
            call.started <= end and start <= call.started + call.seconds for start, end in outages
        )
    ]


def moves_again_within(
    facts: RunFacts, monitor: ProgressMonitor, seconds: float, kinds: tuple[str, ...]
) -> list[Violation]:
    """Jobs in flight when the fault began move again within ``seconds`` of its end
    (the project rule for a Redis restart: 30 s with shipped defaults)."""
    found = []
    slack = monitor.interval  # the monitor sees a move at most this late
    for event in facts.events:
        if event.kind not in kinds or event.end is None:
            continue
        for job_id in sorted(set(event.in_flight_at_start) & event.live_at_end):
            moved = monitor.trace(job_id).first_move_after(event.end)
            late = None if moved is None else moved - event.end
            if late is None or late > seconds + slack:
                job = facts.jobs.get(job_id)
                when = "never" if late is None else f"{late:.0f}s after"
                found.append(
                    Violation(
                        f"moves within {seconds:g}s",
                        _who(job) if job else job_id,
                        f"in flight at {event.label}; moved again {when}; "
                        f"ended {job.status if job else '?'}"
                        + (f" [{job.error_code}]" if job and job.error_code else ""),
                    )
                )
    return found


def workers_survive(exits: list[tuple[str, int | None]]) -> list[Violation]:
    """No worker process ends by itself (the harness's own kills and stops excluded)."""
    return [
        Violation("worker alive", name, f"exited on its own with code {code}")
        for name, code in exits
    ]


# --- helpers ----------------------------------------------------------------------------


def _who(job: JobFacts) -> str:
    orphan = " (orphan of a failed producer call)" if job.orphan else ""
    return f"job {job.job_id} [{job.tag}]{orphan}"


def _bookkeeping(job: JobFacts) -> str:
    keys = ("prediction_id", "poll_seq", "polls", "attempts", "error_retries", "submit_token")
    return ", ".join(f"{k}={job.raw.get(k, '')!r}" for k in keys)


def _redis_outages(facts: RunFacts, slack: float) -> list[tuple[float, float]]:
    return [
        (event.start - slack, (event.end or event.start) + slack)
        for event in facts.events
        if event.kind in ("redis_restart", "redis_down")
    ]


def _logged_at(record: str) -> float:
    """When a ``file: [2026-01-31 12:00:00,123: LEVEL/...] ...`` record was logged."""
    stamp = record.split("[", 1)[1].split(": ", 1)[0]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


Check = Callable[[RunFacts], list[Violation]]
