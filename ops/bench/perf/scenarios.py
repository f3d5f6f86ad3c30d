"""The scenarios of one run, in order; each fills its part of ``BenchResults``.

1. enqueue rates (own Redis, nothing consuming): ``submit`` loop, ``submit_many``,
   raw ``send_task``;
2. 0 s latency: wavequeue, then the raw Celery floor of the same shape, then a smaller
   run with MONITOR on (commands clients send, apart from those scripts run);
3. warm-up: a latency history for each model, so polls follow it as in production;
   while the long model's warm-up finishes, the async floors and the blocking SDK
   (they talk to the emulator only);
4. the main scenario (fresh workers), then 300 chains on the same workers, then the
   main scenario's workload in webhook mode (``wavequeue webhooks`` running, fresh
   workers asking the emulator for callbacks);
5. jobs held in flight at a long latency (Redis bytes per job, worker RSS);
6. the main scenario again at 2 and 4 worker processes.
"""

from __future__ import annotations

import base64
import io
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from ops.bench.perf.figures import floor_figures
from ops.bench.perf.floor_config import FLOOR_QUEUE, FLOOR_TASK, floor_job_kwargs, make_floor_app
from ops.bench.perf.harness import Stack
from ops.bench.perf.plan import EDIT_MODEL, MAIN_MODEL, SIDE_MODEL, Plan
from ops.bench.perf.results import (
    AsyncFloorRun,
    BenchResults,
    ChainRun,
    EnqueueRates,
    InFlight,
    Rate,
    SdkRun,
    SentCommandsRun,
    WebhookRun,
)
from ops.bench.perf.sdk_baseline import sdk_available
from ops.bench.perf.sent_commands import SentCommands, sent_between
from producer import JobClient, PreparedJob, TextToImage
from worker.cli import DEFAULT_CONCURRENCY
from worker.constants import QUEUES
from worker.schedule import LatencyProfile, poll_delay
from worker.settings import Settings

CHAIN_EDITS = ("make it blue", "add falling snow")


def text_jobs(client: JobClient, model: str, count: int, tag: str) -> list[PreparedJob]:
    """Checked requests, ready to enqueue (checking stays out of the timed part)."""
    return [
        client.prepare({"kind": "text-to-image", "model": model, "prompt": f"bench {tag} {i}"})
        for i in range(count)
    ]


def tiny_png_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 160)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def timed_rate(stack: Stack, label: str, jobs: int, enqueue: Callable[[], object]) -> Rate:
    probe = stack.enqueue_probe
    before = probe.snapshot()
    started = time.perf_counter()
    enqueue()
    elapsed = time.perf_counter() - started
    commands = stack.record_breakdown(label, before, probe.snapshot(), jobs)
    probe.flush()
    return Rate(jobs / elapsed, commands)


# 1 ---------------------------------------------------------------------------------


def enqueue_rates(stack: Stack, plan: Plan) -> EnqueueRates:
    stack.say(f"enqueue rates: {plan.enqueue_jobs} jobs each, one process")
    probe = stack.enqueue_probe
    with JobClient(stack.enqueue_settings) as client:
        prepared = text_jobs(client, MAIN_MODEL, plan.enqueue_jobs, "enqueue")
        client.submit(prepared[0])  # builds the Celery app and opens the connections
        probe.flush()
        single = timed_rate(
            stack, "enqueue, submit", len(prepared), lambda: [client.submit(p) for p in prepared]
        )
        batched = timed_rate(
            stack, "enqueue, submit_many", len(prepared), lambda: client.submit_many(prepared)
        )
    app = make_floor_app(stack.enqueue_settings)
    try:
        kwargs = floor_job_kwargs(2, 1.0)
        app.send_task(FLOOR_TASK, kwargs=kwargs, queue=FLOOR_QUEUE)
        probe.flush()

        def send_all() -> None:
            for _ in range(plan.enqueue_jobs):
                app.send_task(FLOOR_TASK, kwargs=kwargs, queue=FLOOR_QUEUE)

        raw = timed_rate(stack, "enqueue, raw send_task", plan.enqueue_jobs, send_all)
    finally:
        app.close()
    return EnqueueRates(single, batched, raw)


# 2 ---------------------------------------------------------------------------------


def zero_latency(stack: Stack, plan: Plan, results: BenchResults) -> None:
    stack.emulator.configure(model_latency={SIDE_MODEL: "fixed:0"})
    fleet = stack.fleet(1)
    stack.say(f"0 s latency: {plan.zero_jobs} jobs")
    prepared = text_jobs(stack.client, SIDE_MODEL, plan.zero_jobs, "zero")
    results.zero = stack.run_jobs("0 s latency", prepared, SIDE_MODEL, fleet)
    # The floor's shape: one run to submit plus the polls wavequeue made, each poll
    # after the countdown wavequeue used (a model with no latency history: the first
    # poll default; nothing at 0 s is ever still running when polled).
    runs = 1 + round(results.zero.figures.polls_mean)
    countdown = stack.worker_settings().first_poll_default
    stack.say(f"raw Celery floor: {plan.zero_jobs} jobs of {runs} runs, {countdown:g} s apart")
    results.celery_floor = stack.run_celery_floor(plan.zero_jobs, runs, countdown)
    commands_sent(stack, plan, results)


def commands_sent(stack: Stack, plan: Plan, results: BenchResults) -> None:
    """The 0 s workload again, on a smaller scale, with MONITOR counting what clients send
    (each command of a pipeline counts) apart from what scripts run inside Redis."""
    fleet = stack.fleet(1)
    stack.say(f"commands sent: {plan.monitor_jobs} jobs at 0 s with MONITOR on")
    prepared = text_jobs(stack.client, SIDE_MODEL, plan.monitor_jobs, "monitor")
    with SentCommands(stack.probe.url) as monitor:
        monitor.catch_up()
        own_before = Counter(stack.probe.own)
        before = monitor.snapshot()
        job_ids = stack.submit_all(prepared)
        stack.wait_drained(
            QUEUES, fleet, stack.jobs_ended(job_ids), timeout=600 + plan.monitor_jobs
        )
        monitor.catch_up()
        sent, by_scripts = sent_between(
            before, monitor.snapshot(), Counter(stack.probe.own) - own_before
        )
    jobs = len(job_ids)
    stack.command_breakdowns["commands sent by clients, 0 s"] = {
        name: round(count / jobs, 2) for name, count in sent.most_common()
    }
    results.sent = SentCommandsRun(jobs, sum(sent.values()) / jobs, by_scripts / jobs)


# 3 ---------------------------------------------------------------------------------


def set_latencies(stack: Stack, plan: Plan) -> None:
    stack.emulator.configure(
        model_latency={
            MAIN_MODEL: plan.main_latency,
            EDIT_MODEL: plan.main_latency,
            SIDE_MODEL: plan.long_latency,
        }
    )


def warm_up(stack: Stack, plan: Plan) -> tuple[list[str], dict[str, list[float]]]:
    """Start every model's warm-up; wait for the main and edit models' (the long model's
    finishes while the floors run). Returns the long warm-up's jobs and the samples."""
    set_latencies(stack, plan)
    stack.fleet(1)
    stack.say(f"warm-up: {plan.warmup_jobs} jobs per model")
    client = stack.client
    long_ids = stack.submit_all(text_jobs(client, SIDE_MODEL, plan.warmup_jobs, "warm-long"))
    image = tiny_png_uri()
    edits = [
        client.prepare({"kind": "edit", "image": image, "prompt": f"bench warm edit {i}"})
        for i in range(plan.warmup_jobs)
    ]
    short_ids = stack.submit_all(text_jobs(client, MAIN_MODEL, plan.warmup_jobs, "warm"))
    short_ids += stack.submit_all(edits)
    wait_ended(stack, short_ids, timeout=300)
    samples = {
        model: latency_samples(stack, short_ids, model) for model in (MAIN_MODEL, EDIT_MODEL)
    }
    return long_ids, samples


def latency_samples(stack: Stack, job_ids: Sequence[str], model: str) -> list[float]:
    """The latencies the emulator drew for these jobs' predictions of ``model``."""
    predictions = stack.emulator.predictions(model)
    return [
        float(predictions[state.prediction_id]["latency_seconds"])
        for state in stack.client.store.get_states(job_ids)
        if state is not None and state.prediction_id in predictions
    ]


def first_poll_after(stack: Stack, samples: Sequence[float]) -> float:
    """When the workers first poll a job of a model with this history."""
    settings = stack.worker_settings()
    return poll_delay(
        0.0,
        profile=LatencyProfile.of(samples),
        first_poll_default=settings.first_poll_default,
        min_interval=settings.poll_min_interval,
        max_interval=settings.poll_max_interval,
        backoff=settings.poll_backoff,
        time_left=math.inf,
    )


def wait_ended(stack: Stack, job_ids: Sequence[str], timeout: float) -> None:
    ended = stack.jobs_ended(job_ids)
    deadline = time.monotonic() + timeout
    while not ended():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(job_ids)} jobs not ended in {timeout:.0f}s")
        time.sleep(0.5)


def floors(
    stack: Stack, plan: Plan, samples: dict[str, list[float]], results: BenchResults
) -> None:
    stack.say(f"async floor: {plan.main_jobs} jobs, then {plan.chains} chains")
    main_jobs = [
        [{"model": MAIN_MODEL, "body": {"prompt": f"bench async {i}"}}]
        for i in range(plan.main_jobs)
    ]
    stack.emulator.reseed()
    outcome = stack.run_async_floor(main_jobs, samples)
    results.async_floor = async_run(stack, outcome, plan.main_jobs)
    chains = [
        [{"model": MAIN_MODEL, "body": {"prompt": f"bench async chain {i}"}}]
        + [{"model": EDIT_MODEL, "body": {"prompt": edit}} for edit in CHAIN_EDITS]
        for i in range(plan.chains)
    ]
    stack.emulator.reseed()
    chain_outcome = stack.run_async_floor(chains, samples)
    chain_floor_makespan = last_detection(chain_outcome) - chain_outcome["started"]
    results.chains = ChainRun(plan.chains, 0, float("nan"), chain_floor_makespan)
    if not sdk_available():
        results.sdk_missing = "n/a (the wavespeed SDK is not installed)"
        return
    slots = DEFAULT_CONCURRENCY * plan.scaling[0]
    stack.say(f"blocking SDK: {plan.sdk_jobs} jobs, Client.run() in {slots} slots")
    stack.emulator.reseed()
    sdk = stack.run_sdk(MAIN_MODEL, plan.sdk_jobs, slots)
    results.sdk = SdkRun(
        jobs=plan.sdk_jobs,
        slots=slots,
        makespan=sdk["makespan"],
        completed=sdk["completed"],
        cpu_ms_per_job=sdk["cpu_seconds"] * 1000 / plan.sdk_jobs,
    )


def last_detection(outcome: dict[str, Any]) -> float:
    return max(float(step["detected_at"]) for job in outcome["jobs"] for step in job)


def async_run(stack: Stack, outcome: dict[str, Any], jobs: int) -> AsyncFloorRun:
    steps = [step for job in outcome["jobs"] for step in job]
    return AsyncFloorRun(
        jobs=jobs,
        makespan=last_detection(outcome) - outcome["started"],
        cpu_ms_per_job=outcome["cpu_seconds"] * 1000 / jobs,
        figures=floor_figures(steps, stack.emulator.predictions(MAIN_MODEL)),
    )


# 4 ---------------------------------------------------------------------------------


def main_scenario(stack: Stack, plan: Plan, workers: int, results: BenchResults) -> None:
    fleet = stack.fleet(workers, fresh=True)
    stack.say(f"main: {plan.main_jobs} jobs at {plan.main_latency}, {workers} worker process(es)")
    prepared = text_jobs(stack.client, MAIN_MODEL, plan.main_jobs, f"main{workers}")
    stack.emulator.reseed()
    run = stack.run_jobs(f"main, {workers} worker(s)", prepared, MAIN_MODEL, fleet)
    results.scaling[workers] = run
    if workers == plan.scaling[0]:
        results.main = run


def chains(stack: Stack, plan: Plan, results: BenchResults) -> None:
    fleet = stack.fleet(plan.scaling[0])
    stack.say(f"chains: {plan.chains} chains of 3 steps")
    client = stack.client
    stack.emulator.reseed()
    started = time.time()
    chain_ids = [
        client.chain(TextToImage(f"bench chain {i}", model=MAIN_MODEL), list(CHAIN_EDITS))
        for i in range(plan.chains)
    ]

    def ended() -> bool:
        return all(client.chain_status(chain_id).state.is_terminal for chain_id in chain_ids)

    stack.wait_drained(QUEUES, fleet, ended, timeout=900 + plan.chains * 3)
    statuses = [client.chain_status(chain_id) for chain_id in chain_ids]
    steps = client.store.get_states([step.job_id for s in statuses for step in s.steps])
    last = max(state.completed_at for state in steps if state and state.completed_at)
    floor = results.chains.floor_makespan if results.chains else float("nan")
    results.chains = ChainRun(
        chains=plan.chains,
        completed=sum(s.state.value == "completed" for s in statuses),
        makespan=last - started,
        floor_makespan=floor,
    )


def webhooks(
    stack: Stack, plan: Plan, samples: dict[str, list[float]], results: BenchResults
) -> None:
    """The main scenario's workload again with webhooks on: the same jobs, the same
    latency draws (the emulator reseeded), as many worker processes, the emulator calling
    ``wavequeue webhooks`` when each prediction ends. Polls per job and detection lag go
    beside poll mode's."""
    extra = stack.webhook_env()
    fleet = stack.fleet(plan.scaling[0], extra, fresh=True)
    stack.say(f"webhooks: {plan.main_jobs} jobs at {plan.main_latency}, webhook mode")
    prepared = text_jobs(stack.client, MAIN_MODEL, plan.main_jobs, "webhooks")
    stack.emulator.reseed()
    cpu_before = stack.receiver_cpu_seconds()
    run = stack.run_jobs("main, webhooks", prepared, MAIN_MODEL, fleet)
    receiver_ms = (stack.receiver_cpu_seconds() - cpu_before) * 1000 / plan.main_jobs
    results.webhooks = WebhookRun(
        run=run,
        receiver_cpu_ms_per_job=receiver_ms,
        first_poll_after=webhook_first_poll(stack.worker_settings(), samples[MAIN_MODEL]),
    )


def webhook_first_poll(settings: Settings, samples: Sequence[float]) -> float:
    """When webhook-mode workers poll a job of a model with this history (the runner's
    ``_webhook_wait``, deadline aside)."""
    profile = LatencyProfile.of(samples)
    typical = profile.targets[0] if profile is not None else settings.first_poll_default
    wait = max(settings.webhook_poll_factor * typical, settings.poll_min_interval)
    return min(wait, settings.webhook_poll_max)


# 5 ---------------------------------------------------------------------------------


def in_flight(stack: Stack, plan: Plan, results: BenchResults) -> None:
    jobs = plan.inflight_jobs
    # Every job holds a countdown message in its worker: the default cap (5,000 per
    # worker) would keep the rest queued, so a plan of more raises it.
    default_cap = Settings().eta_task_limit
    extra = (("WAVEQUEUE_ETA_TASK_LIMIT", str(jobs + 1000)),) if jobs > default_cap else ()
    fleet = stack.fleet(plan.scaling[0], extra)
    stack.say(f"in flight: {jobs} jobs at {plan.long_latency}")
    prepared = text_jobs(stack.client, SIDE_MODEL, jobs, "inflight")
    # Nothing else is in flight: the emulator forgets what earlier scenarios left, so
    # the stats read every second below stay small.
    stack.emulator.reset()
    set_latencies(stack, plan)
    base = stack.emulator.stats()["predictions"]
    memory_before, dataset_before = stack.probe.used_memory()
    start = stack.begin(fleet)
    job_ids = stack.submit_all(prepared)
    # All jobs are in flight (none can end before the long latency): read memory when
    # every prediction exists, or when the first ends, or when creation stalls.
    created, last_change, last_created = 0, time.monotonic(), -1
    while True:
        predictions = stack.emulator.stats()["predictions"]
        created = predictions["created"] - base["created"]
        ended = (
            predictions["completed"] + predictions["failed"] - base["completed"] - base["failed"]
        )
        if created != last_created:
            last_created, last_change = created, time.monotonic()
        if created >= jobs or ended > 0 or time.monotonic() - last_change > 30:
            break
        time.sleep(1.0)
    memory, dataset = stack.probe.used_memory()
    rss = fleet.rss_bytes()
    run = stack.finish_run("in flight", job_ids, SIDE_MODEL, fleet, start=start, timeout=900 + jobs)
    results.inflight = InFlight(
        run=run,
        in_flight=jobs,
        submitted=created,
        redis_bytes_per_job=(memory - memory_before) / jobs,
        redis_dataset_bytes_per_job=(dataset - dataset_before) / jobs,
        rss_at_peak_in_flight=rss,
    )
    stack.stop_fleet()


def run_all(stack: Stack, plan: Plan) -> BenchResults:
    results = BenchResults()
    results.enqueue = enqueue_rates(stack, plan)
    zero_latency(stack, plan, results)
    long_warmup, samples = warm_up(stack, plan)
    floors(stack, plan, samples, results)
    wait_ended(stack, long_warmup, timeout=900)
    samples[SIDE_MODEL] = latency_samples(stack, long_warmup, SIDE_MODEL)
    results.first_poll_after = {model: first_poll_after(stack, s) for model, s in samples.items()}
    stack.say(
        "latency history: "
        + ", ".join(f"{model} p50 {statistics.median(s):.2f}s" for model, s in samples.items())
    )
    main_scenario(stack, plan, plan.scaling[0], results)
    chains(stack, plan, results)
    webhooks(stack, plan, samples, results)
    in_flight(stack, plan, results)
    for workers in plan.scaling[1:]:
        main_scenario(stack, plan, workers, results)
    stack.stop_fleet()
    return results
