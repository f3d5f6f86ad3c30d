"""The mixed workload: text-to-image and edit jobs, 3-step chains, two priorities,
enqueued through the producer API at a steady pace while faults happen.

Every prompt carries a unique tag (``[j0042]`` for a single job, ``[c0007s2]`` for
step 2 of chain 7), so whatever the emulator recorded (predictions, inputs) maps
back to the job that caused it without trusting the worker's own bookkeeping.
Each job's metadata carries the same reference, so a record written by a producer
call that then raised (an outage in the middle of an enqueue) is found too.
"""

from __future__ import annotations

import base64
import io
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from producer import JobClient, TextToImage, WavequeueError

Kind = Literal["text-to-image", "edit", "chain"]
TAG = re.compile(r"\[(j\d{4}|c\d{4}s\d)\]")
CHAIN_STEPS = 3
SEEDS = 1 << 30
EDIT_PROMPTS = ("make it a watercolour", "add falling snow", "turn it to dusk", "make it blue")


def tag_of(prompt: str) -> str | None:
    """The workload tag in a prompt (``j0042``, ``c0007s2``), or None."""
    found = TAG.search(prompt)
    return found.group(1) if found else None


def small_png_data_uri(seed: int) -> str:
    """A 64x48 PNG as a data URI: the edit jobs' input (the emulator fetches nothing)."""
    colour = random.Random(seed).choices(range(256), k=3)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (colour[0], colour[1], colour[2])).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass(frozen=True)
class WorkloadSpec:
    singles: int
    chains: int
    #: Seconds over which the enqueues are spread, so faults meet jobs at every stage.
    enqueue_over: float
    deadline: float
    edit_share: float = 0.4
    high_share: float = 0.3
    seed: int = 11

    @property
    def jobs(self) -> int:
        return self.singles + CHAIN_STEPS * self.chains


@dataclass(frozen=True)
class Planned:
    ref: str
    kind: Kind
    priority: str
    seed: int


@dataclass
class Enqueued:
    """One producer call that returned: its job ids (a chain's in step order)."""

    ref: str
    kind: Kind
    priority: str
    job_ids: list[str]
    chain_id: str | None
    at: float

    def tag(self, step: int = 1) -> str:
        return f"{self.ref}s{step}" if self.kind == "chain" else self.ref


@dataclass(frozen=True)
class ProducerCall:
    """How one producer call went: how long it took, and what it raised."""

    ref: str
    started: float
    seconds: float
    error: str | None
    #: True when what it raised is a ``WavequeueError`` (the producer's documented base).
    wavequeue_error: bool = False


def plan(spec: WorkloadSpec) -> list[Planned]:
    rng = random.Random(spec.seed)
    items: list[Planned] = []
    for index in range(spec.singles):
        kind: Kind = "edit" if rng.random() < spec.edit_share else "text-to-image"
        items.append(Planned(f"j{index:04d}", kind, _priority(rng, spec), rng.randrange(1 << 30)))
    for index in range(spec.chains):
        items.append(
            Planned(f"c{index:04d}", "chain", _priority(rng, spec), rng.randrange(1 << 30))
        )
    rng.shuffle(items)
    return items


def _priority(rng: random.Random, spec: WorkloadSpec) -> str:
    return "high" if rng.random() < spec.high_share else "normal"


def enqueue_one(client: JobClient, item: Planned, deadline: float) -> tuple[list[str], str | None]:
    """Enqueue one planned item; returns (job ids, chain id)."""
    options = {
        "priority": item.priority,
        "deadline": deadline,
        "metadata": {"chaos_ref": item.ref},
    }
    rng = random.Random(item.seed)
    if item.kind == "text-to-image":
        if rng.random() < 0.25:  # two outputs: every one of them must be fetchable
            job_id = client.text_to_image(
                f"[{item.ref}] a lighthouse at dusk",
                model="flux-kontext-pro/text-to-image",
                num_images=2,
                seed=item.seed,
                **options,  # type: ignore[arg-type]
            )
        else:
            job_id = client.text_to_image(
                f"[{item.ref}] a red bicycle in a courtyard",
                seed=item.seed,
                aspect_ratio=rng.choice(["1:1", "16:9", "3:4"]),
                **options,  # type: ignore[arg-type]
            )
        return [job_id], None
    if item.kind == "edit":
        job_id = client.edit(
            small_png_data_uri(item.seed),
            f"[{item.ref}] {rng.choice(EDIT_PROMPTS)}",
            **options,  # type: ignore[arg-type]
        )
        return [job_id], None
    chain_id = client.chain(
        TextToImage(f"[{item.ref}s1] a harbour at noon", seed=item.seed),
        [f"[{item.ref}s{step}] {rng.choice(EDIT_PROMPTS)}" for step in range(2, CHAIN_STEPS + 1)],
        **options,  # type: ignore[arg-type]
    )
    steps = client.store.get_chain(chain_id).step_job_ids
    return list(steps), chain_id


@dataclass
class Enqueuer:
    """Enqueues a plan from its own thread, one item every ``spacing`` seconds, timing
    every producer call. A call that raises is recorded, never retried (a retry would
    be a second job with the same input, which the checks would rightly flag)."""

    client: JobClient
    items: list[Planned]
    spacing: float
    deadline: float
    enqueued: list[Enqueued] = field(default_factory=list)
    calls: list[ProducerCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    #: Set by a fault that wants to know a call is in progress at a given moment.
    in_call_since: float | None = None

    def start(self) -> Enqueuer:
        self.thread = threading.Thread(target=self._run, name="chaos-enqueuer", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        begin = time.monotonic()
        for index, item in enumerate(self.items):
            pause = begin + index * self.spacing - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            started = time.time()
            self.in_call_since = started
            try:
                job_ids, chain_id = enqueue_one(self.client, item, self.deadline)
            except Exception as exc:  # noqa: BLE001 - whatever it raises is what we measure
                seconds = time.time() - started
                clear = isinstance(exc, WavequeueError)
                self._record(ProducerCall(item.ref, started, seconds, _describe(exc), clear))
            else:
                finished = time.time()
                with self.lock:
                    self.enqueued.append(
                        Enqueued(item.ref, item.kind, item.priority, job_ids, chain_id, finished)
                    )
                self._record(ProducerCall(item.ref, started, finished - started, None))
            finally:
                self.in_call_since = None

    def adopt(self, item: Enqueued) -> None:
        """Count a job enqueued some other way (a fault's) as part of the workload."""
        with self.lock:
            self.enqueued.append(item)

    def _record(self, call: ProducerCall) -> None:
        with self.lock:
            self.calls.append(call)

    def job_ids(self) -> list[str]:
        with self.lock:
            return [job_id for item in self.enqueued for job_id in item.job_ids]

    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def join(self, timeout: float) -> bool:
        assert self.thread is not None
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
