"""One table per scenario: the counts, the recovery times, every fault, every violation.

``summarize`` turns facts and violations into a ``Summary`` (numbers only);
``render`` lays it out as text. The pytest plugin in ``conftest.py`` prints every
rendered table at the end of the session, whether the scenario passed or not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tests.chaos.checks import (
    Violation,
    double_submitted_jobs,
    is_lost,
    second_prediction_reasons,
)
from tests.chaos.facts import RunFacts
from tests.chaos.monitor import TERMINAL, FaultEvent, ProgressMonitor

#: Rendered tables of this session, in the order the scenarios ran.
TABLES: list[str] = []
#: Violations listed in the table; all of them go to this file in the run dir.
SHOWN = 40
VIOLATIONS_FILE = "violations.txt"


#: Events that are not an outage: no recovery to measure.
NOT_OUTAGES = frozenset({"poison", "injector_error"})
#: Faults the Redis recovery rule applies to.
RULE_KINDS = frozenset({"redis_restart", "redis_down"})


@dataclass(frozen=True)
class FaultLine:
    kind: str
    label: str
    at: float
    lasted: float
    first_move: float | None
    all_done: float | None
    note: str = ""


@dataclass
class Summary:
    scenario: str
    title: str
    policy: str
    visibility_timeout: float
    jobs: int = 0
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    timed_out: int = 0
    not_run: int = 0
    lost: int = 0
    double_submitted: int = 0
    #: Jobs in flight at a Redis fault that did not move within the rule's 30 s.
    stalled: int | None = None
    orphans: int = 0
    producer_errors: Counter[str] = field(default_factory=Counter)
    slowest_producer_call: float = 0.0
    predictions: int = 0
    submissions: int = 0
    faults_served: dict[str, int] = field(default_factory=dict)
    #: What the checks looked at, so an empty violation list is not an empty check.
    checked: str = ""
    second_predictions: Counter[str] = field(default_factory=Counter)
    fault_lines: list[FaultLine] = field(default_factory=list)
    seconds: float = 0.0
    violations: list[Violation] = field(default_factory=list)
    run_dir: str = ""


def summarize(
    facts: RunFacts,
    monitor: ProgressMonitor,
    violations: list[Violation],
    *,
    title: str,
    started: float,
    workload_started: float,
    finished: float,
    run_dir: str,
) -> Summary:
    summary = Summary(
        facts.scenario,
        title,
        facts.policy,
        facts.settings.visibility_timeout,
        seconds=finished - started,
        violations=violations,
        run_dir=run_dir,
    )
    for item in facts.items:
        stopped = False
        for job_id in item.job_ids:
            job = facts.jobs[job_id]
            summary.jobs += 1
            summary.orphans += job.orphan
            if stopped:
                summary.not_run += 1
            elif job.status == "completed":
                summary.completed += 1
            elif job.status == "failed":
                summary.failed[job.error_code or "?"] += 1
            elif job.status == "timed_out":
                summary.timed_out += 1
            stopped = stopped or job.status in ("failed", "timed_out")
    summary.lost = len({v.subject for v in violations if is_lost(v)})
    summary.double_submitted = len(double_submitted_jobs(violations))
    if any(event.kind in RULE_KINDS for event in facts.events):
        summary.stalled = len({v.subject for v in violations if v.invariant.startswith("moves")})
    for call in facts.producer_calls:
        summary.slowest_producer_call = max(summary.slowest_producer_call, call.seconds)
        if call.error:
            summary.producer_errors[call.error.split(":", 1)[0]] += 1
    summary.predictions = int(facts.emulator_stats["predictions"]["created"])
    summary.submissions = int(facts.emulator_stats["submissions"]["total"])
    summary.faults_served = dict(facts.emulator_stats.get("faults", {}))
    summary.checked = _checked(facts)
    summary.second_predictions = second_prediction_reasons(facts)
    summary.fault_lines = [
        _fault_line(facts, monitor, event, workload_started) for event in facts.events
    ]
    return summary


def _checked(facts: RunFacts) -> str:
    outputs = sum(
        len(job.record.outputs)
        for job in facts.jobs.values()
        if job.record is not None and job.status == "completed"
    )
    links = sum(
        len(facts.predictions_by_tag.get(job.tag, []))
        for job in facts.jobs.values()
        if job.item.kind == "chain" and job.step > 1
    )
    matched = sum(len(found) for found in facts.predictions_by_tag.values())
    keys, files = facts.key_searched
    return (
        f"{outputs} outputs fetched, {links} chain links, {matched} predictions matched "
        f"to jobs, key searched in {keys} Redis keys and {files} files"
    )


def _fault_line(
    facts: RunFacts, monitor: ProgressMonitor, event: FaultEvent, started: float
) -> FaultLine:
    end = event.end or event.start
    first = monitor.first_move_after(event.live_at_end, end)
    done_at: list[float] = []
    unfinished = False
    for job_id in event.live_at_end:
        job = facts.jobs.get(job_id)
        if job is None or job.record is None or job.status not in TERMINAL:
            # A queued later chain step whose chain failed never runs: not unfinished.
            unfinished = unfinished or job is None or job.status != "queued" or job.step == 1
            continue
        done_at.append(job.record.completed_at or end)
    all_done = None if unfinished or not done_at else max(done_at) - end
    return FaultLine(
        event.kind,
        event.label,
        event.start - started,
        end - event.start,
        None if first is None else first - end,
        all_done,
        _mid_post_note(facts, event),
    )


def _mid_post_note(facts: RunFacts, event: FaultEvent) -> str:
    """For a kill aimed at a submit in flight: what became of that job, and what the
    emulator saw of its POST (the evidence that the kill landed mid-POST)."""
    job = facts.jobs.get(str(event.detail.get("mid_post_job")))
    if job is None:
        return ""
    answers = [p.get("submit_answer") for p in facts.predictions_by_tag.get(job.tag, [])]
    ended = job.status + (f" [{job.error_code}]" if job.error_code else "")
    return f"{job.tag} ended {ended}; its predictions' answers: {answers or 'none created'}"


def render(summary: Summary) -> str:
    failed = ", ".join(f"{code} {n}" for code, n in summary.failed.most_common()) or "-"
    producer = (
        ", ".join(f"{kind} {n}" for kind, n in summary.producer_errors.most_common()) or "none"
    )
    rows = [
        ("jobs", str(summary.jobs)),
        ("completed", str(summary.completed)),
        ("failed", f"{sum(summary.failed.values())}  ({failed})"),
        ("timed out", str(summary.timed_out)),
        ("not run", f"{summary.not_run}  (chain steps after a failed step)"),
        ("lost", _flag(summary.lost)),
        ("double-submitted", _flag(summary.double_submitted)),
        ("recovery", _recovery(summary)),
        *(
            [("stalled > 30s", f"{summary.stalled}  (in flight at a Redis fault; rule: 0)")]
            if summary.stalled is not None
            else []
        ),
        ("emulator", f"{summary.submissions} submit POSTs, {summary.predictions} predictions"),
        ("second predictions", _reasons(summary.second_predictions)),
        ("faults served", _served(summary.faults_served)),
        (
            "producer",
            f"errors: {producer}; slowest call {summary.slowest_producer_call:.1f}s; "
            f"orphan records {summary.orphans}",
        ),
        ("checked", summary.checked),
        ("duration", f"{summary.seconds:.0f}s"),
        ("run dir", summary.run_dir),
    ]
    width = max(len(name) for name, _ in rows)
    head = (
        f"== chaos: {summary.title} [{summary.scenario}] "
        f"(policy {summary.policy}, visibility timeout {summary.visibility_timeout:g}s) =="
    )
    lines = [head, *(f"{name.ljust(width)}  {value}" for name, value in rows)]
    if summary.fault_lines:
        lines.append("faults (t: s after the first enqueue; recovery from the fault's end):")
        lines += [f"  {_fault_row(line)}" for line in summary.fault_lines]
    verdict = "violations" if summary.violations else "violations: none"
    lines.append(verdict + (f" ({len(summary.violations)}):" if summary.violations else ""))
    grouped = group(summary.violations)
    lines += [f"  {line}" for line in grouped[:SHOWN]]
    if len(grouped) > SHOWN:
        lines.append(f"  ... and {len(grouped) - SHOWN} more: {VIOLATIONS_FILE} in the run dir")
    return "\n".join(lines)


def group(violations: list[Violation]) -> list[str]:
    """One line per (invariant, evidence): the same failure on 18 jobs is one finding."""
    subjects: dict[tuple[str, str], list[str]] = {}
    for violation in violations:
        subjects.setdefault((violation.invariant, violation.evidence), []).append(violation.subject)
    lines = []
    for (invariant, evidence), who in subjects.items():
        names = ", ".join(who[:4]) + (f" and {len(who) - 4} more" if len(who) > 4 else "")
        lines.append(f"[{invariant}] {names}: {evidence}")
    return lines


def _flag(count: int) -> str:
    return str(count) if count == 0 else f"{count}  <-- must be 0"


def _reasons(reasons: Counter[str]) -> str:
    if not reasons:
        return "none"
    return f"{sum(reasons.values())}: " + ", ".join(
        f"{why} {n}" for why, n in reasons.most_common()
    )


def _served(served: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(served.items())) or "none"


def _recovery(summary: Summary) -> str:
    timed = [line for line in summary.fault_lines if line.kind not in NOT_OUTAGES]
    firsts = [line.first_move for line in timed if line.first_move is not None]
    dones = [line.all_done for line in timed if line.all_done is not None]
    if not timed:
        return "-"
    first = f"{max(firsts):.1f}s" if firsts else "-"
    done = f"{max(dones):.1f}s" if dones else "-"
    never = sum(1 for line in timed if line.all_done is None)
    tail = f"; {never} fault(s) with jobs never done" if never else ""
    return f"worst over {len(timed)} fault(s): first job moving {first}, all done {done}{tail}"


def _fault_row(line: FaultLine) -> str:
    first = "-" if line.first_move is None else f"{line.first_move:.1f}s"
    done = "never" if line.all_done is None else f"{line.all_done:.1f}s"
    note = f"\n      -> {line.note}" if line.note else ""
    return (
        f"t={line.at:6.1f}  {line.label}  (lasted {line.lasted:.1f}s)  "
        f"first move +{first}, all done +{done}{note}"
    )
