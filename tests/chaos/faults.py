"""Fault injectors: each runs in its own thread and hurts the stack at planned moments.

Every injector records what it did as a ``FaultEvent`` (through the monitor, which
notes the jobs in flight at the start and the jobs still live at the end), so the
report can say how long recovery took and the checks can ask "was this second
submission caused by an interruption?". Actions that change the set of processes
(kills, warm stops, Redis restarts) take one lock, so two injectors in the mixed
scenario never trip over each other.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import kombu.exceptions
import redis
from celery import Celery

from tests.chaos.broker import read_messages
from tests.chaos.monitor import TERMINAL, FaultEvent, ProgressMonitor
from tests.chaos.stack import ChaosStack
from tests.chaos.workload import Enqueued, Enqueuer
from tests.support.worker_process import WorkerProcess
from worker.constants import (
    DEADLINES_KEY,
    DUE_POLLS_KEY,
    JOB_KEY,
    NEXT_RUN_KEY,
    QUEUE_NORMAL,
    REQUEST_KEY,
    RUN_JOB_TASK,
)
from worker.fairness import LINE_INDEX_KEY
from worker.models import JobRecord, JobStatus
from worker.store import JobStore, Request, encode_state

#: A task name an older release could have used (Celery's default: module + function).
LEGACY_TASK_NAME = "worker.tasks.run_job"


@dataclass
class FaultContext:
    stack: ChaosStack
    monitor: ProgressMonitor
    enqueuer: Enqueuer
    control: Celery
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def sleep_until(self, offset: float) -> bool:
        """Sleep until ``offset`` s after the scenario began; False if told to stop."""
        return not self.stop.wait(max(0.0, self.started + offset - time.monotonic()))

    def begin(self, kind: str, label: str, **detail: Any) -> FaultEvent:
        return self.monitor.begin(kind, label, **detail)

    def end(self, event: FaultEvent, **detail: Any) -> None:
        self.monitor.end(event, **detail)


class Fault(Protocol):
    def run(self, ctx: FaultContext) -> None: ...


# --- workers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillWorkers:
    """SIGKILL a worker at each moment in ``at`` (s after start) and start a new one.

    With ``mid_submit``, each kill first waits (up to ``aim_for`` s) for a job whose
    submit POST is in flight (status ``submitting``; the emulator's ``submit_slow``
    keeps that window open) and kills the worker running it, found by Celery's
    remote control: a kill between the POST and storing the prediction id.
    """

    at: tuple[float, ...]
    mid_submit: bool = True
    aim_for: float = 8.0

    def run(self, ctx: FaultContext) -> None:
        for offset in self.at:
            if not ctx.sleep_until(offset):
                return
            with ctx.lock:  # aim inside the lock: another fault may hold it for seconds
                target, job_id = self._pick(ctx)
                name = target.log_path.stem
                event = ctx.begin(
                    "worker_kill",
                    f"SIGKILL {name}" + (f" mid-POST of {job_id}" if job_id else ""),
                    worker=name,
                    mid_post_job=job_id,
                )
                ctx.stack.kill(target)
                ctx.stack.start_workers(1)
                ctx.end(event)

    def _pick(self, ctx: FaultContext) -> tuple[WorkerProcess, str | None]:
        if self.mid_submit:
            give_up = time.monotonic() + self.aim_for
            while time.monotonic() < give_up and not ctx.stop.is_set():
                found = _worker_running_a_submit(ctx)
                if found is not None:
                    return found
                time.sleep(0.05)
        return ctx.rng.choice(ctx.stack.live_workers()), None


def _worker_running_a_submit(ctx: FaultContext) -> tuple[WorkerProcess, str] | None:
    statuses = ctx.monitor.statuses()
    live = [job_id for job_id, status in statuses.items() if status not in TERMINAL]
    client = ctx.stack.producer.store.client
    pipe = client.pipeline(transaction=False)
    for job_id in live:
        pipe.hget(JOB_KEY.format(job_id=job_id), "status")
    try:
        now = pipe.execute()
    except redis.RedisError:
        return None  # Redis is restarting: look again
    submitting = {j for j, s in zip(live, now, strict=True) if s == "submitting"}
    if not submitting:
        return None
    by_host = {ctx.stack.hostname(w): w for w in ctx.stack.live_workers()}
    (active,) = _inspect(ctx, list(by_host), ("active",), timeout=1.0)
    for host, tasks in active.items():
        for task in tasks:
            job_id = str((task.get("kwargs") or {}).get("job_id"))
            if job_id in submitting and host in by_host:
                return by_host[host], job_id
    return None


@dataclass(frozen=True)
class WarmStops:
    """SIGTERM a worker that holds countdown messages, at each moment in ``at``.

    Its held jobs are read through remote control just before (scheduled + reserved +
    active). Right after it exits, every one of them still live must be back in play:
    carried by a message waiting in a queue list, or by one another worker took
    *after* the SIGTERM (kombu's ``unacked_index`` gives the delivery time). A job
    carried only by an ``unacked`` entry delivered before the SIGTERM was not handed
    back, and would wait for the visibility timeout. The check waits up to
    ``settle`` s for that (a message popped by another worker's BRPOP is briefly in
    neither place) and stores the result on the event (``detail["stranded"]``).
    """

    at: tuple[float, ...]
    exit_timeout: float = 60.0
    settle: float = 3.0

    def run(self, ctx: FaultContext) -> None:
        for offset in self.at:
            if not ctx.sleep_until(offset):
                return
            with ctx.lock:
                self._warm_stop_one(ctx)

    def _warm_stop_one(self, ctx: FaultContext) -> None:
        running = ctx.stack.live_workers()
        holding = _held_jobs(ctx, running)
        target = max(running, key=lambda w: len(holding.get(ctx.stack.hostname(w), set())))
        held = holding.get(ctx.stack.hostname(target), set())
        event = ctx.begin("warm_stop", f"SIGTERM {target.log_path.stem} holding {len(held)} job(s)")
        assert target.process is not None
        sigterm_at = time.time()
        ctx.stack.terminate(target)
        exit_code = target.process.wait(self.exit_timeout)
        exited_after = time.time() - sigterm_at
        give_up = time.monotonic() + self.settle
        while (stranded := _stranded(ctx, held, sigterm_at)) and time.monotonic() < give_up:
            time.sleep(0.2)
        ctx.stack.start_workers(1)
        ctx.end(
            event,
            worker=target.log_path.stem,
            held=sorted(held),
            exit_code=exit_code,
            exited_after=round(exited_after, 1),
            stranded=stranded,
        )


def _held_jobs(ctx: FaultContext, workers: list[WorkerProcess]) -> dict[str, set[str]]:
    """Job ids whose messages each worker holds (countdowns, prefetched, running)."""
    hosts = [ctx.stack.hostname(w) for w in workers]
    held: dict[str, set[str]] = {host: set() for host in hosts}
    for reply in _inspect(ctx, hosts, ("scheduled", "reserved", "active"), timeout=2.0):
        for host, entries in reply.items():
            for entry in entries:
                request = entry.get("request", entry)  # scheduled wraps the request
                job_id = (request.get("kwargs") or {}).get("job_id")
                if job_id:
                    held.setdefault(host, set()).add(job_id)
    return held


def _inspect(
    ctx: FaultContext, hosts: list[str], methods: tuple[str, ...], *, timeout: float
) -> list[dict[str, Any]]:
    """Celery remote control replies, on a fresh broker connection each attempt: after
    a Redis restart a pooled connection is dead and the first use fails."""
    for attempt in range(3):
        try:
            with ctx.control.connection_for_write() as connection:
                inspect = ctx.control.control.inspect(
                    destination=hosts, timeout=timeout, connection=connection
                )
                return [getattr(inspect, method)() or {} for method in methods]
        except (OSError, redis.RedisError, kombu.exceptions.OperationalError):
            if attempt == 2:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _stranded(ctx: FaultContext, held: set[str], since: float) -> dict[str, str]:
    """Held jobs, still live, whose message is not back in play -> where it is."""
    client = ctx.stack.redis_client(decode_responses=True)
    try:
        messages = read_messages(client)
        ordered = sorted(held)
        pipe = client.pipeline(transaction=False)
        for job_id in ordered:
            pipe.hget(JOB_KEY.format(job_id=job_id), "status")
            # A job may wait with no message by design: its next poll deferred (sent by a
            # dispatcher when due), or its submit waiting in the fair line for a slot.
            pipe.zscore(DUE_POLLS_KEY, job_id)
            pipe.hexists(LINE_INDEX_KEY, job_id)
        replies = pipe.execute()
        statuses = dict(zip(ordered, replies[0::3], strict=True))
        waiting_by_design = {
            job_id
            for job_id, due, in_line in zip(ordered, replies[1::3], replies[2::3], strict=True)
            if due is not None or in_line
        }
    finally:
        client.close()
    stranded: dict[str, str] = {}
    for job_id in ordered:
        if statuses[job_id] in TERMINAL or job_id in waiting_by_design:
            continue
        carriers = [m for m in messages if job_id in m.job_ids]
        if not any(m.waiting or (m.delivered_at or 0) >= since for m in carriers):
            places = ", ".join(
                f"{m.where} delivered {since - (m.delivered_at or 0):.1f}s before the SIGTERM"
                for m in carriers
            )
            stranded[job_id] = f"status {statuses[job_id]}; {places or 'no message anywhere'}"
    return stranded


# --- Redis --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartRedis:
    """Stop redis-server cleanly (AOF flushed) and start it again on the same port,
    ``down_for`` seconds later: 0 is a restart, 10 is "unreachable for 10 s"."""

    at: float
    down_for: float = 0.0

    def run(self, ctx: FaultContext) -> None:
        if not ctx.sleep_until(self.at):
            return
        with ctx.lock:
            kind = "redis_restart" if self.down_for == 0 else "redis_down"
            label = "Redis restart" if self.down_for == 0 else f"Redis down {self.down_for:g}s"
            event = ctx.begin(kind, label)
            ctx.stack.stop_redis()
            time.sleep(self.down_for)
            ctx.stack.start_redis()
            ctx.end(event)


# --- the emulator -------------------------------------------------------------------------


@dataclass(frozen=True)
class EmulatorOutage:
    """Close the gate in front of the emulator for ``seconds``: connections refused,
    open ones reset; the emulator keeps its predictions meanwhile."""

    at: float
    seconds: float = 30.0

    def run(self, ctx: FaultContext) -> None:
        if not ctx.sleep_until(self.at):
            return
        event = ctx.begin("emulator_down", f"emulator unreachable {self.seconds:g}s")
        ctx.stack.gate.down()
        ctx.stop.wait(self.seconds)
        ctx.stack.gate.up()
        ctx.end(event)


# --- poison -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoisonMessage:
    kind: str
    task_id: str
    #: The text its one log record must contain (the job id; for an unknown task name,
    #: that name, since a discarded message has no job that runs).
    marker: str


@dataclass(frozen=True)
class Poison:
    """Three messages a worker cannot run, sent at ``at``:

    - ``unknown job``: ``run_job`` for a job id that has no record;
    - ``corrupted record``: a record whose status this version does not know (what a
      rolling deploy that adds a status produces), indexed like any job, with a
      deadline already past, so both a run and the sweeper meet it;
    - ``old task name``: a message under the name an older release used, for a real
      job written the way the producer writes one; the job itself must still finish
      (the sweeper re-sends it under the current name once its queue is empty).
    """

    at: float

    def run(self, ctx: FaultContext) -> None:
        if not ctx.sleep_until(self.at):
            return
        event = ctx.begin("poison", "poison messages")
        store = ctx.stack.producer.store
        unknown = f"poison-unknown-{uuid.uuid4().hex[:8]}"
        corrupted = self._corrupted_record(store)
        orphan = self._real_job(ctx, store)
        sent = [
            self._send(ctx.control, "unknown job", RUN_JOB_TASK, unknown, marker=unknown),
            self._send(ctx.control, "corrupted record", RUN_JOB_TASK, corrupted, marker=corrupted),
            self._send(
                ctx.control, "old task name", LEGACY_TASK_NAME, orphan, marker=LEGACY_TASK_NAME
            ),
        ]
        ctx.end(event, poison=sent, legacy_job=orphan)

    @staticmethod
    def _send(app: Celery, kind: str, task: str, job_id: str, *, marker: str) -> PoisonMessage:
        task_id = str(uuid.uuid4())
        app.send_task(task, kwargs={"job_id": job_id}, queue=QUEUE_NORMAL, task_id=task_id)
        return PoisonMessage(kind, task_id, marker)

    @staticmethod
    def _corrupted_record(store: JobStore) -> str:
        job_id = f"poison-corrupt-{uuid.uuid4().hex[:8]}"
        now = time.time()
        record = JobRecord(
            id=job_id,
            model="flux-kontext-max/text-to-image",
            input={"prompt": "a record from a newer release"},
            status=JobStatus.QUEUED,
            created_at=now - 120,
            deadline_at=now - 60,
        )
        fields = {**encode_state(record), "status": "paused"}
        pipe = store.client.pipeline(transaction=True)
        pipe.hset(JOB_KEY.format(job_id=job_id), mapping=dict(fields.items()))
        pipe.set(REQUEST_KEY.format(job_id=job_id), Request(record.input, {}).to_json())
        pipe.zadd(DEADLINES_KEY, {job_id: record.deadline_at})
        pipe.zadd(NEXT_RUN_KEY, {job_id: record.created_at})
        pipe.execute()
        return job_id

    @staticmethod
    def _real_job(ctx: FaultContext, store: JobStore) -> str:
        """A queued job written like the producer writes one (record, then message)."""
        now = time.time()
        deadline = float(ctx.stack.settings_env.get("WAVEQUEUE_JOB_DEADLINE", "120"))
        record = JobRecord(
            id=uuid.uuid4().hex,
            model="flux-kontext-max/text-to-image",
            input={"prompt": "[j9000] sent under an old task name", "seed": 9000},
            status=JobStatus.QUEUED,
            created_at=now,
            deadline_at=now + deadline,
            metadata={"chaos_ref": "j9000"},
        )
        job_id, _ = store.create_job(record)
        ctx.enqueuer.adopt(Enqueued("j9000", "text-to-image", "normal", [job_id], None, now))
        return job_id


def describe_poison(event: FaultEvent) -> list[PoisonMessage]:
    return list(event.detail.get("poison", []))


def run_all(faults: list[Fault], ctx: FaultContext) -> list[threading.Thread]:
    threads = []
    for index, fault in enumerate(faults):
        thread = threading.Thread(
            target=_guarded(fault, ctx), name=f"chaos-fault-{index}", daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads


def _guarded(fault: Fault, ctx: FaultContext) -> Callable[[], None]:
    def run() -> None:
        try:
            fault.run(ctx)
        except Exception as exc:  # noqa: BLE001 - a broken injector is reported, never silent
            detail = f"{type(fault).__name__}: {type(exc).__name__}: {exc}"
            ctx.monitor.begin("injector_error", detail)

    return run
