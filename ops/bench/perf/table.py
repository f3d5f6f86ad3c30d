"""The one table: each goal's figure beside its floor measured in the same run.

Every row's first cell starts with a fixed name (``ROW_NAMES``); what follows in
parentheses says the scenario. ``Met`` compares the figure with the issue's goal
(quick runs use smaller numbers: their ``Met`` column says little).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ops.bench.perf.plan import MAIN_MODEL, SIDE_MODEL, Plan
from ops.bench.perf.results import (
    AsyncFloorRun,
    BenchResults,
    CeleryFloor,
    ChainRun,
    EnqueueRates,
    InFlight,
    WorkerRun,
)
from worker.cli import DEFAULT_CONCURRENCY

KIB = 1024
MIB = 1024 * 1024

ROW_NAMES = (
    "worker CPU per job, 0 s",
    "worker CPU per job, main",
    "Redis commands per job, 0 s",
    "Redis commands per job, main",
    "Redis commands sent by clients per job, 0 s",
    "jobs/s at 0 s latency",
    "makespan, main",
    "Redis bytes per in-flight job",
    "worker RSS in flight",
    "polls per job, main",
    "polls per job, long",
    "detection lag p50, main",
    "detection lag p50, long",
    "polls per job, webhooks",
    "detection lag p50, webhooks",
    "enqueue, submit loop",
    "enqueue, submit_many",
    "three-step chains, makespan",
    "scaling, 1 worker process",
    "scaling, 2 worker processes",
    "scaling, 4 worker processes",
)


@dataclass(frozen=True)
class Row:
    name: str
    scenario: str
    value: str
    floor: str
    goal: str
    met: bool | None

    def cells(self) -> list[str]:
        met = "—" if self.met is None else ("yes" if self.met else "**no**")
        return [f"{self.name} ({self.scenario})", self.value, self.floor, self.goal, met]


def _num(value: float, digits: int = 1) -> str:
    return "nan" if math.isnan(value) else f"{value:,.{digits}f}"


def _pct(share: float) -> str:
    return "nan" if math.isnan(share) else f"{share * 100:.1f}%"


def _ratio(value: float, floor: float) -> float:
    return value / floor if floor > 0 else math.nan


def _within(value: float, limit: float) -> bool | None:
    return None if math.isnan(value) else value <= limit


def _saturation(run: WorkerRun, first_poll: float) -> str:
    """Saturated: polls fell due (``first_poll`` after a submit) while submits waited."""
    span = run.figures.submit_span
    state = "saturated" if span > first_poll else "not saturated"
    return f"{state}: submits over {span:.1f} s, first poll {first_poll:.1f} s after a submit"


@dataclass(frozen=True)
class Measured:
    """Everything the rows need, checked present."""

    results: BenchResults
    plan: Plan
    zero: WorkerRun
    floor: CeleryFloor
    main: WorkerRun
    async_floor: AsyncFloorRun
    inflight: InFlight
    enqueue: EnqueueRates
    chains: ChainRun

    @classmethod
    def of(cls, results: BenchResults, plan: Plan) -> Measured:
        r = results
        if (
            not (
                r.zero and r.celery_floor and r.main and r.async_floor and r.inflight and r.enqueue
            )
            or not r.chains
        ):
            raise ValueError("a scenario is missing from the results")
        return cls(
            r, plan, r.zero, r.celery_floor, r.main, r.async_floor, r.inflight, r.enqueue, r.chains
        )

    @property
    def main_scenario(self) -> str:
        return f"{self.main.jobs:,} jobs at {self.plan.main_latency}"

    @property
    def long_scenario(self) -> str:
        return f"{self.inflight.in_flight:,} jobs at {self.plan.long_latency}"


def cost_rows(m: Measured) -> list[Row]:
    zero, floor, main = m.zero, m.floor, m.main
    shape = f"{floor.runs} runs, {floor.countdown:g} s countdown"
    return [
        Row(
            name="worker CPU per job, 0 s",
            scenario=f"{zero.jobs:,} jobs, {shape}",
            value=f"{_num(zero.cpu_ms_per_job)} ms",
            floor=f"raw Celery {_num(floor.cpu_ms_per_job)} ms",
            goal="≤ 6 ms",
            met=_within(zero.cpu_ms_per_job, 6),
        ),
        Row(
            name="worker CPU per job, main",
            scenario=m.main_scenario,
            value=f"{_num(main.cpu_ms_per_job)} ms",
            floor=f"async client {_num(m.async_floor.cpu_ms_per_job)} ms (its whole process)",
            goal="≤ 6 ms",
            met=_within(main.cpu_ms_per_job, 6),
        ),
        Row(
            name="Redis commands per job, 0 s",
            scenario=f"{zero.jobs:,} jobs, enqueue included",
            value=f"{_num(zero.commands_per_job)} "
            f"(enqueue {_num(m.enqueue.single.commands_per_job)}; "
            f"{_num(zero.script_calls_per_job)} script calls)",
            floor=f"raw Celery {_num(floor.commands_per_job)} "
            f"(send_task {_num(m.enqueue.raw_send_task.commands_per_job)})",
            goal="≤ 35",
            met=_within(zero.commands_per_job, 35),
        ),
        Row(
            name="Redis commands per job, main",
            scenario=f"{m.main_scenario}, enqueue included",
            value=f"{_num(main.commands_per_job)} ({_num(main.script_calls_per_job)} script calls)",
            floor="—",
            goal="≤ 35",
            met=_within(main.commands_per_job, 35),
        ),
        _sent_row(m),
    ]


def _sent_row(m: Measured) -> Row:
    sent = m.results.sent
    name = "Redis commands sent by clients per job, 0 s"
    floor = f"raw Celery {_num(m.floor.commands_per_job)} (no scripts: every command is sent)"
    if sent is None:
        return Row(name, "not measured", "n/a", floor, "≤ 35", None)
    return Row(
        name=name,
        scenario=f"{sent.jobs:,} jobs with MONITOR on, enqueue included; "
        "each command of a pipeline counts",
        value=f"{_num(sent.sent_per_job)} "
        f"(besides {_num(sent.run_by_scripts_per_job)} run inside scripts)",
        floor=floor,
        goal="≤ 35",
        met=_within(sent.sent_per_job, 35),
    )


def speed_rows(m: Measured) -> list[Row]:
    zero, floor, main, sdk = m.zero, m.floor, m.main, m.results.sdk
    share = _ratio(zero.jobs_per_second, floor.jobs_per_second)
    times = _ratio(main.makespan, m.async_floor.makespan)
    if sdk is None:
        sdk_text = f"blocking SDK {m.results.sdk_missing}"
    else:
        sdk_text = f"blocking SDK `Client.run()` x {sdk.slots} slots {_num(sdk.makespan)} s"
        if sdk.jobs != main.jobs:
            sdk_text += f" ({sdk.jobs:,} jobs)"
    return [
        Row(
            name="jobs/s at 0 s latency",
            scenario=f"{zero.jobs:,} jobs, first enqueue to last ack",
            value=f"{_num(zero.jobs_per_second)}/s ({_pct(share)} of floor)",
            floor=f"raw Celery {_num(floor.jobs_per_second)}/s",
            goal="≥ 90% of floor",
            met=None if math.isnan(share) else share >= 0.9,
        ),
        Row(
            name="makespan, main",
            scenario=f"{m.main_scenario}, {main.workers} x `wavequeue worker` "
            f"(threads pool, {DEFAULT_CONCURRENCY})",
            value=f"{_num(main.makespan)} s ({_num(times, 2)}x async)",
            floor=f"async client {_num(m.async_floor.makespan)} s; {sdk_text}",
            goal="≤ 1.3x async",
            met=_within(times, 1.3),
        ),
    ]


def memory_rows(m: Measured) -> list[Row]:
    inflight = m.inflight
    if inflight.submitted >= inflight.in_flight:
        held = "all submitted"
    else:
        held = f"{inflight.submitted:,} submitted, the rest queued"
    kib = inflight.redis_bytes_per_job / KIB
    rss = inflight.rss_at_peak_in_flight / MIB
    return [
        Row(
            name="Redis bytes per in-flight job",
            scenario=f"{m.long_scenario}, messages included, {held}",
            value=f"{_num(kib, 2)} KiB "
            f"(dataset {_num(inflight.redis_dataset_bytes_per_job / KIB, 2)} KiB)",
            floor="—",
            goal="≤ 1.5 KiB",
            met=_within(kib, 1.5),
        ),
        Row(
            name="worker RSS in flight",
            scenario=f"{m.long_scenario}, {held}; peak {_num(inflight.run.peak_rss / MIB, 0)} MiB",
            value=f"{_num(rss, 0)} MiB",
            floor="—",
            goal="< 300 MB at 10,000",
            met=_within(inflight.rss_at_peak_in_flight / 1e6, 300)
            if inflight.in_flight >= 10_000
            else None,
        ),
    ]


def poll_rows(m: Measured) -> list[Row]:
    rows: list[Row] = []
    runs: list[tuple[str, WorkerRun, AsyncFloorRun | None, str, str]] = [
        ("main", m.main, m.async_floor, m.main_scenario, MAIN_MODEL),
        ("long", m.inflight.run, None, m.long_scenario, SIDE_MODEL),
    ]
    for key, run, floor, scenario, _model in runs:
        figures = run.figures
        rows.append(
            Row(
                name=f"polls per job, {key}",
                scenario=f"{scenario}, p50 / p95",
                value=f"{_num(figures.polls_p50, 0)} / {_num(figures.polls_p95, 0)}",
                floor=f"async client {_num(floor.figures.polls_p50, 0)} / "
                f"{_num(floor.figures.polls_p95, 0)}"
                if floor
                else "—",
                goal="p50 1, p95 ≤ 3",
                met=figures.polls_p50 <= 1 and figures.polls_p95 <= 3,
            )
        )
    for key, run, floor, scenario, model in runs:
        figures = run.figures
        first_poll = m.results.first_poll_after.get(model, math.nan)
        rows.append(
            Row(
                name=f"detection lag p50, {key}",
                scenario=f"{scenario}; {_saturation(run, first_poll)}",
                value=f"{_pct(figures.lag_p50_share)} ({_num(figures.lag_p50_seconds, 2)} s)",
                floor=f"async client {_pct(floor.figures.lag_p50_share)} "
                f"({_num(floor.figures.lag_p50_seconds, 2)} s)"
                if floor
                else "—",
                goal="≤ 5% of latency",
                met=_within(figures.lag_p50_share, 0.05),
            )
        )
    return rows


def webhook_rows(m: Measured) -> list[Row]:
    """Webhook mode beside poll mode, on the main scenario's workload."""
    hooked = m.results.webhooks
    if hooked is None:
        raise ValueError("the webhooks scenario is missing from the results")
    run, main = hooked.run, m.main
    polls, main_polls = run.figures, main.figures
    scenario = f"{m.main_scenario}, webhook mode"
    return [
        Row(
            name="polls per job, webhooks",
            scenario=f"{scenario}, p50 / p95; safety-net poll {_num(hooked.first_poll_after)} s "
            f"after a submit; {_num(run.commands_per_job)} Redis commands/job "
            f"(poll mode {_num(main.commands_per_job)})",
            value=f"{_num(polls.polls_p50, 0)} / {_num(polls.polls_p95, 0)} "
            f"(mean {_num(polls.polls_mean, 2)})",
            floor=f"poll mode {_num(main_polls.polls_p50, 0)} / {_num(main_polls.polls_p95, 0)} "
            f"(mean {_num(main_polls.polls_mean, 2)})",
            goal="p50 0",
            met=polls.polls_p50 == 0,
        ),
        Row(
            name="detection lag p50, webhooks",
            scenario=f"{scenario}; {run.figures.completed:,} completed; receiver CPU "
            f"{_num(hooked.receiver_cpu_ms_per_job, 2)} ms/job, workers "
            f"{_num(run.cpu_ms_per_job)} ms/job (poll mode {_num(main.cpu_ms_per_job)})",
            value=f"{_pct(polls.lag_p50_share)} ({_num(polls.lag_p50_seconds, 3)} s)",
            floor=f"poll mode {_pct(main_polls.lag_p50_share)} "
            f"({_num(main_polls.lag_p50_seconds, 2)} s)",
            goal="< poll mode",
            met=None
            if math.isnan(polls.lag_p50_seconds)
            else polls.lag_p50_seconds < main_polls.lag_p50_seconds,
        ),
    ]


def enqueue_rows(m: Measured) -> list[Row]:
    single, batched, raw = m.enqueue.single, m.enqueue.batched, m.enqueue.raw_send_task
    jobs = m.plan.enqueue_jobs
    return [
        Row(
            name="enqueue, submit loop",
            scenario=f"{jobs:,} x `JobClient.submit`, one process",
            value=f"{_num(single.jobs_per_second, 0)}/s",
            floor=f"raw Celery `send_task` {_num(raw.jobs_per_second, 0)}/s",
            goal="≥ 1,500/s",
            met=single.jobs_per_second >= 1500,
        ),
        Row(
            name="enqueue, submit_many",
            scenario=f"{jobs:,} jobs in one `JobClient.submit_many`, one process",
            value=f"{_num(batched.jobs_per_second, 0)}/s "
            f"({_num(batched.commands_per_job)} commands/job)",
            floor="—",
            goal="≥ 5,000/s",
            met=batched.jobs_per_second >= 5000,
        ),
    ]


def chain_and_scaling_rows(m: Measured) -> list[Row]:
    chains = m.chains
    rows = [
        Row(
            name="three-step chains, makespan",
            scenario=f"{chains.chains:,} chains at {m.plan.main_latency} per step, "
            f"{chains.completed:,} completed",
            value=f"{_num(chains.makespan)} s "
            f"({_num(_ratio(chains.makespan, chains.floor_makespan), 2)}x async)",
            floor=f"async client {_num(chains.floor_makespan)} s",
            goal="—",
            met=None,
        )
    ]
    for count in (1, 2, 4):
        run = m.results.scaling.get(count)
        name = f"scaling, {count} worker process" + ("" if count == 1 else "es")
        if run is None:
            rows.append(Row(name, "not run", "n/a", "—", "—", None))
            continue
        times = _ratio(run.makespan, m.async_floor.makespan)
        rows.append(
            Row(
                name=name,
                scenario=f"{run.jobs:,} jobs at {m.plan.main_latency}",
                value=f"{_num(run.makespan)} s ({_num(times, 2)}x async), "
                f"{_num(run.cpu_ms_per_job)} ms CPU/job, "
                f"lag p50 {_pct(run.figures.lag_p50_share)}",
                floor=f"async client {_num(m.async_floor.makespan)} s",
                goal="≤ 1.3x async",
                met=_within(times, 1.3),
            )
        )
    return rows


def build_rows(results: BenchResults, plan: Plan) -> list[Row]:
    m = Measured.of(results, plan)
    return (
        cost_rows(m)
        + speed_rows(m)
        + memory_rows(m)
        + poll_rows(m)
        + webhook_rows(m)
        + enqueue_rows(m)
        + chain_and_scaling_rows(m)
    )


def markdown(rows: list[Row]) -> str:
    header = ["figure (scenario)", "wavequeue", "floor / baseline, same run", "goal", "met"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)
