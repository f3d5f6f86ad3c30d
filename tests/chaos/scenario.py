"""Run one scenario: start the stack, enqueue the workload while the faults happen,
wait until everything settled, collect the facts, judge every invariant, report.

A scenario is data (``Scenario``); ``run_scenario`` is the one procedure all of them
share, so a scenario file only says what to break and when.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.chaos import checks
from tests.chaos.checks import Violation
from tests.chaos.facts import RunFacts, collect
from tests.chaos.faults import Fault, FaultContext, run_all
from tests.chaos.monitor import ProgressMonitor, Timeline
from tests.chaos.report import TABLES, VIOLATIONS_FILE, Summary, render, summarize
from tests.chaos.secrets_scan import file_blobs, redis_blobs, search
from tests.chaos.stack import ChaosStack, StackConfig
from tests.chaos.workload import Enqueuer, WorkloadSpec, plan
from worker.celery_config import make_app
from worker.constants import JOB_KEY

#: Slack on the producer's documented bound (WAVEQUEUE_REDIS_RETRY_WINDOW plus one
#: connect timeout against a Redis that stays down): an enqueue is several commands,
#: and this machine is shared.
PRODUCER_SLACK = 10.0
#: The project rule: after a Redis restart, jobs in flight move again within 30 s.
REDIS_RECOVERY_RULE = 30.0


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    workload: WorkloadSpec
    stack: StackConfig
    faults: tuple[Fault, ...] = ()
    #: ``POST /_emulator/config`` faults, on for the whole run.
    emulator_faults: Mapping[str, Any] = field(default_factory=dict)
    #: Apply the Redis recovery rule to these fault kinds.
    rule_for: tuple[str, ...] = ()


@dataclass
class Outcome:
    summary: Summary
    table: str
    facts: RunFacts

    @property
    def violations(self) -> list[Violation]:
        return self.summary.violations


def run_scenario(scenario: Scenario, run_dir: Path) -> Outcome:
    started = time.time()
    stack = ChaosStack(run_dir, scenario.stack).start()
    ctx: FaultContext | None = None
    monitor: ProgressMonitor | None = None
    try:
        if scenario.emulator_faults:
            stack.control.configure(faults=dict(scenario.emulator_faults))
        items = plan(scenario.workload)
        spacing = scenario.workload.enqueue_over / max(1, len(items))
        enqueuer = Enqueuer(stack.producer, items, spacing, scenario.workload.deadline)
        monitor = ProgressMonitor(
            stack.redis_client(decode_responses=True), enqueuer.job_ids, Timeline()
        ).start()
        control = make_app(stack.producer.settings)
        ctx = FaultContext(stack, monitor, enqueuer, control, random.Random(scenario.stack.seed))
        workload_started = time.time()
        enqueuer.start()
        injectors = run_all(list(scenario.faults), ctx)
        settle_by = _settle_timeout(scenario, stack)
        enqueuer.join(settle_by)
        for thread in injectors:
            thread.join(settle_by)
        _settle(stack, enqueuer, settle_by)
        monitor.stop()
        monitor.sample_quietly()  # the last moves, after the monitor's final tick
        facts = _facts(scenario, stack, enqueuer, monitor)
        _keep_evidence(run_dir, facts)
        violations = _judge(scenario, stack, facts, monitor)
    finally:
        if ctx is not None:
            ctx.stop.set()
        if monitor is not None:
            monitor.stop()
        stack.stop()
    summary = summarize(
        facts,
        monitor,
        violations,
        title=scenario.title,
        started=started,
        workload_started=workload_started,
        finished=time.time(),
        run_dir=str(run_dir),
    )
    table = render(summary)
    (run_dir / "report.txt").write_text(table + "\n")
    (run_dir / VIOLATIONS_FILE).write_text("".join(f"{v}\n" for v in violations))
    TABLES.append(table)
    return Outcome(summary, table, facts)


def _settle_timeout(scenario: Scenario, stack: ChaosStack) -> float:
    """Long enough for the last chain step to reach its deadline (3 x the per-step
    deadline) and for a sweeper pass to time it out, after the last enqueue."""
    settings = stack.worker_settings
    sweep = max(1.0, min(30.0, settings.visibility_timeout / 10))
    return scenario.workload.enqueue_over + 3 * scenario.workload.deadline + 2 * sweep + 60


def _settle(stack: ChaosStack, enqueuer: Enqueuer, timeout: float) -> None:
    """Wait until every job ended (a chain: completed, or stopped at a failed step), or
    until every job still going is long past its deadline: the sweeper should have
    timed it out by then, so waiting longer would only hide that it is stuck."""
    settings = stack.worker_settings
    overdue_after = 2 * max(1.0, min(30.0, settings.visibility_timeout / 10)) + 10
    give_up = time.monotonic() + timeout
    client = stack.producer.store.client
    while time.monotonic() < give_up:
        with contextlib.suppress(redis.RedisError):  # Redis may be down: look again
            pending = [_pending_deadline(client, item.job_ids) for item in enqueuer.enqueued]
            deadlines = [d for d in pending if d is not None]
            if not deadlines or max(deadlines) + overdue_after < time.time():
                return
        time.sleep(1.0)


def _pending_deadline(client: Any, job_ids: list[str]) -> float | None:
    """None when this item ended; else the deadline of its first unfinished job."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(JOB_KEY.format(job_id=job_id), ["status", "deadline_at"])
    for status, deadline in pipe.execute():
        if status in ("failed", "timed_out"):
            return None
        if status != "completed":
            return float(deadline or 0)
    return None


def _facts(
    scenario: Scenario, stack: ChaosStack, enqueuer: Enqueuer, monitor: ProgressMonitor
) -> RunFacts:
    return collect(
        scenario=scenario.name,
        client=stack.producer.store.client,
        settings=stack.worker_settings,
        items=list(enqueuer.enqueued),
        calls=list(enqueuer.calls),
        predictions=stack.control.predictions(),
        emulator_stats=stack.control.stats(),
        logs=list(stack.worker_logs()),
        events=list(monitor.timeline.events),
    )


def _keep_evidence(run_dir: Path, facts: RunFacts) -> None:
    """What the emulator recorded and when each fault happened, for a post-mortem."""
    (run_dir / "emulator-predictions.json").write_text(json.dumps(facts.predictions, indent=1))
    (run_dir / "emulator-stats.json").write_text(json.dumps(facts.emulator_stats, indent=1))
    events = [
        {
            "kind": event.kind,
            "label": event.label,
            "start": event.start,
            "end": event.end,
            "detail": {k: v for k, v in event.detail.items() if k != "poison"},
            "in_flight_at_start": event.in_flight_at_start,
        }
        for event in facts.events
    ]
    (run_dir / "faults.json").write_text(json.dumps(events, indent=1, default=str))


def _judge(
    scenario: Scenario, stack: ChaosStack, facts: RunFacts, monitor: ProgressMonitor
) -> list[Violation]:
    aof = sorted((stack.redis.data_dir / "appendonlydir").glob("*"))
    logs = [worker.log_path for worker in stack.workers]
    blobs = [*redis_blobs(stack.redis.url), *file_blobs([*aof, *logs])]
    hits = search(blobs, stack.api_key)
    facts.key_searched = (
        sum(1 for where, _ in blobs if where.endswith("key name")),
        len(aof) + len(logs),
    )
    found = [
        *checks.every_job_ends_terminal(facts),
        *checks.submitted_once(facts),
        *checks.outputs_fetchable(facts),
        *checks.chain_inputs_are_previous_outputs(facts),
        *checks.key_nowhere(hits),
        *checks.warm_stop_hands_back(facts),
        *checks.poison_acked_once(facts),
        *checks.producer_bounded(
            facts,
            facts.settings.redis_retry_window
            + facts.settings.redis_connect_timeout
            + PRODUCER_SLACK,
        ),
        *checks.producer_reconnects(facts),
        *checks.workers_survive(stack.exits_on_their_own()),
        *_injector_errors(facts),
    ]
    if scenario.rule_for:
        found += checks.moves_again_within(facts, monitor, REDIS_RECOVERY_RULE, scenario.rule_for)
    return found


def _injector_errors(facts: RunFacts) -> list[Violation]:
    return [
        Violation("harness", "fault injector", event.label)
        for event in facts.events
        if event.kind == "injector_error"
    ]
