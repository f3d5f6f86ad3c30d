"""What each scenario measured; ``table`` turns these into the one table."""

from __future__ import annotations

from dataclasses import dataclass, field

from ops.bench.perf.figures import JobFigures


@dataclass(frozen=True)
class WorkerRun:
    """Jobs enqueued with ``JobClient`` and run by ``wavequeue worker`` processes."""

    jobs: int
    workers: int
    #: First enqueue to the last record completed.
    makespan: float
    #: First enqueue to no message left in Redis (every run acknowledged).
    drained: float
    cpu_ms_per_job: float
    #: Every client's commands but the harness's, enqueue included; like Redis's own
    #: counts (INFO commandstats), a script's call and the commands it runs each count.
    commands_per_job: float
    #: Of those, script calls (EVALSHA, EVAL, FCALL).
    script_calls_per_job: float
    peak_rss: int
    figures: JobFigures

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.drained


@dataclass(frozen=True)
class SentCommandsRun:
    """Commands clients sent (MONITOR), apart from those scripts ran, per job."""

    jobs: int
    sent_per_job: float
    run_by_scripts_per_job: float


@dataclass(frozen=True)
class CeleryFloor:
    """A trivial self-retrying task: ``runs`` executions, ``countdown`` apart."""

    jobs: int
    runs: int
    countdown: float
    drained: float
    cpu_ms_per_job: float
    commands_per_job: float

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.drained


@dataclass(frozen=True)
class AsyncFloorRun:
    jobs: int
    makespan: float
    cpu_ms_per_job: float
    figures: JobFigures


@dataclass(frozen=True)
class SdkRun:
    jobs: int
    slots: int
    makespan: float
    completed: int
    cpu_ms_per_job: float


@dataclass(frozen=True)
class Rate:
    jobs_per_second: float
    commands_per_job: float


@dataclass(frozen=True)
class EnqueueRates:
    single: Rate
    batched: Rate
    raw_send_task: Rate


@dataclass(frozen=True)
class InFlight:
    run: WorkerRun
    #: Jobs enqueued and not ended when memory was read (all of them, unless noted).
    in_flight: int
    #: Of those, predictions created (the job waits on a held countdown).
    submitted: int
    #: ``used_memory`` grown per job; and its dataset part (client buffers left out).
    redis_bytes_per_job: float
    redis_dataset_bytes_per_job: float
    rss_at_peak_in_flight: int


@dataclass(frozen=True)
class ChainRun:
    chains: int
    completed: int
    makespan: float
    floor_makespan: float


@dataclass(frozen=True)
class WebhookRun:
    """The main scenario's workload again, with webhooks on."""

    run: WorkerRun
    #: CPU the receiver spent per job (beside the workers' own, in ``run``).
    receiver_cpu_ms_per_job: float
    #: When the safety-net poll comes after a submit, for this model's history.
    first_poll_after: float


@dataclass
class BenchResults:
    enqueue: EnqueueRates | None = None
    zero: WorkerRun | None = None
    celery_floor: CeleryFloor | None = None
    sent: SentCommandsRun | None = None
    main: WorkerRun | None = None
    async_floor: AsyncFloorRun | None = None
    sdk: SdkRun | None = None
    sdk_missing: str = ""
    chains: ChainRun | None = None
    inflight: InFlight | None = None
    scaling: dict[int, WorkerRun] = field(default_factory=dict)
    webhooks: WebhookRun | None = None
    #: Per model: seconds from a submit to its first poll, on the workers' schedule
    #: for the latency history the warm-up gave them.
    first_poll_after: dict[str, float] = field(default_factory=dict)
