"""The stack one benchmark run starts, and the measured run every scenario shares.

Two private ``redis-server``s on free ports (one for the jobs, one where enqueue
rates are measured with nothing else connected), the emulator, a ``JobClient``,
and fleets of ``wavequeue worker`` processes. A measured run enqueues with
``JobClient.submit`` while the workers are already up and idle, waits until no
message is left in Redis (every run acknowledged) and every record has ended,
and reads the workers' CPU and Redis's command counts at both ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.bench.perf.figures import record_figures
from ops.bench.perf.floor_config import FLOOR_QUEUE, FLOOR_TASK, floor_job_kwargs, make_floor_app
from ops.bench.perf.processes import (
    CELERY,
    WAVEQUEUE,
    Emulator,
    Fleet,
    WebhookReceiver,
    run_json_child,
)
from ops.bench.perf.redis_probe import CommandSnapshot, RedisProbe
from ops.bench.perf.results import CeleryFloor, WorkerRun
from ops.localstack.redis_server import RedisServer
from producer import JobClient, PreparedJob
from worker.cli import DEFAULT_CONCURRENCY, DEFAULT_POOL
from worker.constants import QUEUES
from worker.settings import Settings

API_KEY = "bench-key"
#: The key of the MAC in callback URLs, shared by the receiver and webhook-mode workers.
WEBHOOK_URL_KEY = "bench-webhook-url-key"
#: Generated images shrunk (sizes stay multiples of 16): the emulator shares the CPU.
IMAGE_SCALE = 0.05
#: Worker settings every scenario uses, and why: the shared limiter and the in-flight
#: cap stand for the WaveSpeed account, which the emulator does not limit here; the
#: emulator's outputs (127.0.0.1) are the input images of chain edits.
WORKER_ENV = {
    "WAVEQUEUE_RATE_LIMIT_PER_MINUTE": "1000000",
    "WAVEQUEUE_MAX_IN_FLIGHT": "100000",
    "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1",
}

#: Commands that run a script (whose own commands Redis counts as well).
SCRIPT_CALLS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Started:
    """The state at a measured run's start."""

    at: float
    commands: CommandSnapshot
    cpu: float


@dataclass(frozen=True)
class Drained:
    at: float
    commands: CommandSnapshot
    cpu: float
    peak_rss: int


class Stack:
    def __init__(self, *, worker_env: dict[str, str], log_dir: Path, data_dir: Path, say: Say):
        self.say = say
        self.log_dir = log_dir
        self.data_dir = data_dir
        self.extra_env = worker_env
        self._exit = contextlib.ExitStack()
        self._fleet: Fleet | None = None
        self._fleet_key: tuple[int, tuple[tuple[str, str], ...]] | None = None
        self._generation = 0
        self._receiver: WebhookReceiver | None = None
        #: Commands per job by name, per measured window: evidence for the table's totals.
        self.command_breakdowns: dict[str, dict[str, float]] = {}

    # lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            jobs_redis = RedisServer(data_dir=self.data_dir / "redis-jobs").start()
            self._exit.callback(jobs_redis.stop)
            enqueue_redis = RedisServer(data_dir=self.data_dir / "redis-enqueue").start()
            self._exit.callback(enqueue_redis.stop)
            self.emulator = Emulator(API_KEY, self.log_dir / "emulator.log", IMAGE_SCALE).start()
            self._exit.callback(self.emulator.stop)
            self.probe = RedisProbe(jobs_redis.url)
            self._exit.callback(self.probe.close)
            self.enqueue_probe = RedisProbe(enqueue_redis.url)
            self._exit.callback(self.enqueue_probe.close)
            self.settings = Settings(redis_url=jobs_redis.url, allow_private_image_urls=True)
            self.client = JobClient(self.settings)
            self._exit.callback(self.client.close)
            self.enqueue_settings = Settings(redis_url=enqueue_redis.url)
            self._exit.callback(self.stop_fleet)
        except BaseException:
            self._exit.close()
            raise
        self.say(
            f"stack: redis {jobs_redis.url} (enqueue rates: {enqueue_redis.url}), "
            f"emulator {self.emulator.base_url}"
        )
        return self

    def __exit__(self, *_: object) -> None:
        self._exit.close()

    # workers ----------------------------------------------------------------------

    def worker_env(self, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
        return {
            "REDIS_URL": self.settings.redis_url,
            "WAVESPEED_BASE_URL": self.emulator.base_url,
            "WAVESPEED_API_KEY": API_KEY,
            **WORKER_ENV,
            **self.extra_env,
            **dict(extra),
        }

    def worker_settings(self) -> Settings:
        """The settings the workers run with (their poll schedule, for the async floor)."""
        return Settings.from_env(self.worker_env())

    def fleet(
        self, count: int, extra: Sequence[tuple[str, str]] = (), *, fresh: bool = False
    ) -> Fleet:
        """``count`` running ``wavequeue worker`` processes; the running fleet when it
        matches (its processes keep their latency profiles cached for 30 s)."""
        key = (count, tuple(extra))
        if self._fleet is not None and self._fleet_key == key and not fresh:
            return self._fleet
        self.stop_fleet()
        self._generation += 1
        argv = [WAVEQUEUE, "worker", "--hostname", f"bench{self._generation}-{{index}}@%h"]
        self.say(f"starting {count} wavequeue worker process(es)")
        fleet = Fleet(
            f"worker{self._generation}", argv, self.worker_env(extra), count, self.log_dir
        )
        self._fleet, self._fleet_key = fleet.start(), key
        return fleet

    def webhook_env(self) -> tuple[tuple[str, str], ...]:
        """Worker settings of webhook mode: the receiver (started on first use) is where
        the emulator calls back."""
        if self._receiver is None:
            env = {**self.worker_env(), "WAVEQUEUE_WEBHOOK_URL_KEY": WEBHOOK_URL_KEY}
            self._receiver = WebhookReceiver(env, self.log_dir / "webhooks.log").start()
            self._exit.callback(self._receiver.stop)
            self.say(f"webhook receiver {self._receiver.base_url}")
        return (
            ("WAVEQUEUE_WEBHOOK_URL", self._receiver.base_url),
            ("WAVEQUEUE_WEBHOOK_URL_KEY", WEBHOOK_URL_KEY),
        )

    def receiver_cpu_seconds(self) -> float:
        return self._receiver.cpu_seconds() if self._receiver is not None else 0.0

    def stop_fleet(self) -> None:
        if self._fleet is not None:
            self._fleet.stop()
            self._fleet = self._fleet_key = None

    # measured runs ----------------------------------------------------------------

    def begin(self, fleet: Fleet) -> Started:
        return Started(time.time(), self.probe.snapshot(), fleet.cpu_seconds())

    def wait_drained(
        self,
        queues: Sequence[str],
        fleet: Fleet,
        ended: Callable[[], bool],
        *,
        timeout: float,
    ) -> Drained:
        """Until no message is left in ``queues`` nor unacknowledged, and ``ended()``."""
        deadline = time.monotonic() + timeout
        peak_rss, next_rss = 0, 0.0
        while True:
            now = time.monotonic()
            if now >= next_rss:
                peak_rss, next_rss = max(peak_rss, fleet.rss_bytes()), now + 1.0
            if self.probe.messages_left(queues) == 0:
                drained = Drained(time.time(), self.probe.snapshot(), fleet.cpu_seconds(), peak_rss)
                if ended():
                    return drained
            if now > deadline:
                raise TimeoutError(f"messages still in Redis after {timeout:.0f}s")
            time.sleep(0.1)

    def jobs_ended(self, job_ids: Sequence[str]) -> Callable[[], bool]:
        def ended() -> bool:
            states = self.client.store.get_states(job_ids)
            self.probe.own["hgetall"] += len(job_ids)  # the harness's reads, left out
            return all(state is not None and state.is_terminal for state in states)

        return ended

    def submit_all(self, prepared: Sequence[PreparedJob]) -> list[str]:
        return [self.client.submit(job) for job in prepared]

    def record_breakdown(
        self, label: str, before: CommandSnapshot, after: CommandSnapshot, jobs: int
    ) -> float:
        """Commands per job in a window; the breakdown by name is kept under ``label``."""
        by_name = RedisProbe.breakdown(before, after)
        self.command_breakdowns[label] = {
            name: round(count / jobs, 2) for name, count in by_name.most_common()
        }
        return sum(by_name.values()) / jobs

    def script_calls(self, label: str) -> float:
        return sum(self.command_breakdowns[label].get(name, 0.0) for name in SCRIPT_CALLS)

    def finish_run(
        self,
        label: str,
        job_ids: Sequence[str],
        model: str,
        fleet: Fleet,
        *,
        start: Started,
        timeout: float,
    ) -> WorkerRun:
        drained = self.wait_drained(QUEUES, fleet, self.jobs_ended(job_ids), timeout=timeout)
        states = self.client.store.get_states(job_ids)
        ended_at = [state.completed_at for state in states if state and state.completed_at]
        jobs = len(job_ids)
        return WorkerRun(
            jobs=jobs,
            workers=fleet.count,
            makespan=max(ended_at) - start.at,
            drained=drained.at - start.at,
            cpu_ms_per_job=(drained.cpu - start.cpu) * 1000 / jobs,
            commands_per_job=self.record_breakdown(label, start.commands, drained.commands, jobs),
            script_calls_per_job=self.script_calls(label),
            peak_rss=drained.peak_rss,
            figures=record_figures(states, self.emulator.predictions(model)),
        )

    def run_jobs(
        self, label: str, prepared: Sequence[PreparedJob], model: str, fleet: Fleet
    ) -> WorkerRun:
        start = self.begin(fleet)
        job_ids = self.submit_all(prepared)
        return self.finish_run(
            label, job_ids, model, fleet, start=start, timeout=600 + len(prepared)
        )

    # floors -----------------------------------------------------------------------

    def run_celery_floor(self, jobs: int, runs: int, countdown: float) -> CeleryFloor:
        """``jobs`` trivial tasks of ``runs`` executions on a plain Celery app, with the
        pool and concurrency ``wavequeue worker`` uses."""
        argv = [
            CELERY, "-A", "ops.bench.perf.floor_app", "worker",
            f"--pool={DEFAULT_POOL}", f"--concurrency={DEFAULT_CONCURRENCY}",
            f"--queues={FLOOR_QUEUE}", "--loglevel=INFO", "--hostname=floor{index}@%h",
        ]  # fmt: skip
        self.stop_fleet()
        self.say("starting the raw Celery floor's worker")
        fleet = Fleet(
            "floor", argv, {"REDIS_URL": self.settings.redis_url}, 1, self.log_dir
        ).start()
        app = make_floor_app(self.settings)
        try:
            start = self.begin(fleet)
            for _ in range(jobs):
                app.send_task(
                    FLOOR_TASK, kwargs=floor_job_kwargs(runs, countdown), queue=FLOOR_QUEUE
                )
            drained = self.wait_drained(
                [FLOOR_QUEUE], fleet, lambda: True, timeout=600 + jobs * runs
            )
        finally:
            fleet.stop()
            app.close()
        return CeleryFloor(
            jobs=jobs,
            runs=runs,
            countdown=countdown,
            drained=drained.at - start.at,
            cpu_ms_per_job=(drained.cpu - start.cpu) * 1000 / jobs,
            commands_per_job=self.record_breakdown(
                "raw Celery floor", start.commands, drained.commands, jobs
            ),
        )

    def run_async_floor(
        self, jobs: list[list[dict[str, Any]]], profiles: dict[str, list[float]]
    ) -> dict[str, Any]:
        settings = self.worker_settings()
        plan = {
            "base_url": self.emulator.base_url,
            "api_key": API_KEY,
            "jobs": jobs,
            "profiles": profiles,
            "schedule": {
                "first_poll_default": settings.first_poll_default,
                "min_interval": settings.poll_min_interval,
                "max_interval": settings.poll_max_interval,
                "backoff": settings.poll_backoff,
            },
        }
        return run_json_child("ops.bench.perf.async_floor", plan, timeout=1800)

    def run_sdk(self, model: str, jobs: int, slots: int) -> dict[str, Any]:
        plan = {
            "base_url": self.emulator.base_url,
            "api_key": API_KEY,
            "model": model,
            "jobs": jobs,
            "slots": slots,
            "prompt": "bench sdk",
        }
        return run_json_child("ops.bench.perf.sdk_baseline", plan, timeout=3600)
