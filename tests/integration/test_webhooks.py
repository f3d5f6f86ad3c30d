"""WaveSpeed webhooks end to end: a real ``wavequeue webhooks`` process, real workers,
real Redis and the emulator sending signed callbacks over HTTP.

Shown here: with webhooks on, jobs complete with zero polls; with 30% of webhooks
dropped every job still completes (by its poll); forged, stale and replayed callbacks
change nothing; a submit whose answer is lost is recovered from its webhook with one
submission; a chain whose steps end some by webhook, some by poll (the webhook then
arriving second) advances exactly once per step.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from producer import JobClient, TextToImage
from tests.support.records import put_in_status
from tests.support.stack import SECRET_API_KEY, WorkerStack, worker_stack
from tests.support.webhooks import (
    Callbacks,
    WebhooksProcess,
    completed_prediction,
    emulator_secret,
    webhook_env,
)
from worker.celery_config import make_app
from worker.constants import COUNTERS_KEY, JOB_KEY, PREDICTION_OWNER_KEY
from worker.models import JobStatus
from worker.settings import Settings
from worker.store import Claim, counter_field

T2I = "flux-kontext-max/text-to-image"
EDIT = "flux-kontext-pro"

#: The safety-net poll a minute after submit (far beyond a 0.3 s prediction and its
#: webhook, however loaded the machine); a deferred poll, as any poll over 1 s here.
FAR_POLL = {
    "WAVEQUEUE_WEBHOOK_POLL_FACTOR": "1000",
    "WAVEQUEUE_WEBHOOK_POLL_MAX": "60",
}
#: The safety-net poll 2 s after submit: lost (or late) webhooks are caught quickly. Held
#: as a countdown message (polls up to 5 s are held here), which carries a chain's next
#: steps: a step its webhook ended must not send them again when that message comes.
NEAR_POLL = {
    "WAVEQUEUE_POLL_MAX_INTERVAL": "5",
    "WAVEQUEUE_WEBHOOK_POLL_FACTOR": "1000",
    "WAVEQUEUE_WEBHOOK_POLL_MAX": "2",
}


#: The receiver's body cap in these tests (a callback is a few hundred bytes).
MAX_BODY = 4096


@dataclass
class HookedStack:
    stack: WorkerStack
    receiver: WebhooksProcess
    callbacks: Callbacks

    def counter(self, name: str, **labels: str) -> int:
        value = self.stack.jobs.store.client.hget(COUNTERS_KEY, counter_field(name, **labels))
        return int(value or 0)


@contextlib.contextmanager
def hooked_stack(
    tmp_path: Path, settings: dict[str, str], *, latency: str = "fixed:0.3", **worker_env: str
) -> Iterator[HookedStack]:
    """The worker stack with webhooks on: the receiver first (its URL is the workers'
    ``WAVEQUEUE_WEBHOOK_URL``), then one worker."""
    shared = webhook_env()
    with worker_stack(tmp_path, latency=latency, settings=settings, workers=0) as stack:
        receiver_env = {**stack.env, **shared, "WAVEQUEUE_WEBHOOK_MAX_BODY": str(MAX_BODY)}
        receiver = WebhooksProcess(receiver_env, tmp_path / "webhooks.log").start()
        try:
            stack.env.update(shared, WAVEQUEUE_WEBHOOK_URL=receiver.base_url, **worker_env)
            stack.start_worker()
            secret = emulator_secret(stack.env["WAVESPEED_BASE_URL"], SECRET_API_KEY)
            callbacks = Callbacks(receiver.base_url, shared["WAVEQUEUE_WEBHOOK_URL_KEY"], secret)
            yield HookedStack(stack, receiver, callbacks)
        finally:
            receiver.stop()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookedStack]:
    with hooked_stack(tmp_path_factory.mktemp("webhooks"), FAR_POLL) as running:
        yield running


def _predictions_by_input(stack: WorkerStack) -> dict[str, int]:
    return dict(stack.emulator.stats()["predictions"]["per_input"])


def test_with_webhooks_jobs_complete_with_zero_polls(hooked: HookedStack) -> None:
    stack = hooked.stack
    stack.emulator.reset()
    ended_by_webhook = hooked.counter("jobs_ended_by", path="webhook")

    job_ids = [stack.jobs.enqueue(T2I, prompt=f"hooked {i}") for i in range(8)]
    records = stack.jobs.wait(job_ids, timeout=60)

    assert [r.status for r in records] == [JobStatus.COMPLETED] * 8
    stats = stack.emulator.stats()
    assert stats["polls"]["total"] == 0
    assert sorted(_predictions_by_input(stack).values()) == [1] * 8
    assert stats["webhooks"]["delivered"] == 8
    assert hooked.counter("jobs_ended_by", path="webhook") - ended_by_webhook == 8
    predictions = {p["id"]: p for p in stack.emulator.predictions()}
    for record in records:
        # The per-job URL: the receiver's base, the job id, its MAC.
        webhook = predictions[record.prediction_id or ""]["webhook"]
        assert webhook["url"] == hooked.callbacks.url(record.id)
        assert record.polls == 0 and record.outputs


def test_forged_stale_and_replayed_callbacks_change_nothing(hooked: HookedStack) -> None:
    store = hooked.stack.jobs.store
    callbacks = hooked.callbacks
    later = time.time() + 600  # no message is due for these hand-made jobs
    job_a = hooked.stack.jobs.create(T2I, prompt="forgery target")
    put_in_status(
        store, job_a, JobStatus.SUBMITTED,
        prediction_id="pred-a", poll_seq=1, next_run_at=later,
    )  # fmt: skip
    assert store.transition(
        job_a,
        updates={},
        claim=Claim(PREDICTION_OWNER_KEY.format(prediction_id="pred-a"), job_a, 600),
    )
    # B's submit outcome is unknown: it would adopt a prediction a webhook proves.
    job_b = hooked.stack.jobs.create(T2I, prompt="replay target")
    put_in_status(
        store, job_b, JobStatus.SUBMITTING,
        submit_token="t", outcome_unknown_at=time.time(), submit_lease_until=later,
        next_run_at=later,
    )  # fmt: skip

    def raw(job_id: str) -> dict[str, str]:
        fields: dict[str, str] = store.client.hgetall(JOB_KEY.format(job_id=job_id))  # type: ignore[assignment]
        return fields

    before_a, before_b = raw(job_a), raw(job_b)
    data = completed_prediction("pred-a")
    url_a = callbacks.url(job_a)
    now = int(time.time())

    forged = callbacks.signed(data, secret="whsec_not-the-account-secret")
    stale = callbacks.signed(data, timestamp=now - 301)
    early = callbacks.signed(data, timestamp=now + 301)
    headers, body = callbacks.signed(data)
    unsigned = {k: v for k, v in headers.items() if k != "webhook-signature"}
    tampered_body = body.replace(b"out.png", b"evil.png")
    guessed_url = url_a[:-32] + "0" * 32
    attempts = [
        (url_a, *forged, "bad_signature"),
        (url_a, *stale, "stale"),
        (url_a, *early, "stale"),
        (url_a, unsigned, body, "missing_headers"),
        (url_a, headers, tampered_body, "bad_signature"),
        (guessed_url, headers, body, "bad_url"),
    ]
    for url, attempt_headers, attempt_body, reason in attempts:
        rejected_before = hooked.counter("webhooks_rejected", reason=reason)
        answer = callbacks.post(url, attempt_headers, attempt_body)
        assert answer.status_code == 401, (reason, answer.text)
        assert hooked.counter("webhooks_rejected", reason=reason) == rejected_before + 1
    assert raw(job_a) == before_a

    # The genuine delivery completes A; the same delivery again, to A or to B, is a
    # duplicate (one webhook-id, applied once, whatever URL it is replayed to).
    assert callbacks.post(url_a, headers, body).json() == {"outcome": "completed"}
    completed_a = raw(job_a)
    assert completed_a["status"] == "completed"
    for url in (url_a, callbacks.url(job_b)):
        answer = callbacks.post(url, headers, body)
        assert (answer.status_code, answer.json()) == (200, {"outcome": "duplicate"})
    # Another genuine delivery of A's prediction, sent to B's URL: B does not adopt a
    # prediction that A owns.
    assert callbacks.post(callbacks.url(job_b), *callbacks.signed(data)).json() == {
        "outcome": "rejected: prediction_owned"
    }
    assert raw(job_a) == completed_a
    assert raw(job_b) == before_b
    assert hooked.counter("jobs_completed", model=T2I) >= 1


def test_a_body_over_the_cap_is_refused_with_413(hooked: HookedStack) -> None:
    callbacks = hooked.callbacks
    job_id = hooked.stack.jobs.create(T2I, prompt="big body")
    data = completed_prediction("pred-big", url="https://cdn.example/" + "x" * MAX_BODY)
    headers, body = callbacks.signed(data)
    refused = hooked.counter("webhooks_rejected", reason="too_large")

    declared = callbacks.post(callbacks.url(job_id), headers, body)
    # Sent on the same session: the 413 closed the first connection (its body was never
    # read), and said so, so this one is not sent on a dead pooled connection.
    chunked = callbacks.session.post(
        callbacks.url(job_id),
        headers=headers,
        data=(body[i : i + 1000] for i in range(0, len(body), 1000)),
        timeout=10,
    )

    assert (declared.status_code, chunked.status_code) == (413, 413)
    assert declared.headers["Connection"] == "close"
    assert hooked.counter("webhooks_rejected", reason="too_large") == refused + 2
    assert hooked.stack.jobs.store.get(job_id).status is JobStatus.QUEUED


def test_a_lost_submit_answer_is_recovered_from_its_webhook(hooked: HookedStack) -> None:
    stack = hooked.stack
    stack.emulator.reset()
    stack.emulator.configure(
        faults={"submit_drop_after_create": {"count": 1, "prompt_contains": "orphan"}}
    )
    adopted = hooked.counter("orphans_adopted", model=T2I)
    unknown_failures = hooked.counter("jobs_failed", model=T2I, code="submit_outcome_unknown")

    job_id = stack.jobs.enqueue(T2I, prompt="an orphan")
    [record] = stack.jobs.wait([job_id], timeout=60)

    assert record.status is JobStatus.COMPLETED
    [prediction] = stack.emulator.predictions()
    # The POST created the prediction and its answer was lost: the worker never saw the id.
    assert prediction["submit_answer"] == "submit_drop_after_create"
    assert record.prediction_id == prediction["id"]
    submissions = stack.emulator.stats()["submissions"]
    assert (submissions["total"], list(submissions["per_input"].values())) == (1, [1])
    assert hooked.counter("orphans_adopted", model=T2I) == adopted + 1
    assert hooked.counter("jobs_failed", model=T2I, code="submit_outcome_unknown") == (
        unknown_failures
    )


def test_with_30_percent_of_webhooks_dropped_every_job_completes(tmp_path: Path) -> None:
    with hooked_stack(tmp_path, NEAR_POLL) as hooked:
        stack = hooked.stack
        stack.emulator.configure(seed=11, faults={"webhook_drop": 0.3})

        job_ids = [stack.jobs.enqueue(T2I, prompt=f"maybe lost {i}") for i in range(20)]
        records = stack.jobs.wait(job_ids, timeout=120)

        assert [r.status for r in records] == [JobStatus.COMPLETED] * 20
        assert sorted(_predictions_by_input(stack).values()) == [1] * 20
        dropped = {
            p["id"]
            for p in stack.emulator.predictions()
            if any(entry.get("dropped") for entry in p["webhook"]["deliveries"])
        }
        assert dropped, "the fault never fired: the test would prove nothing"
        for record in records:
            if record.prediction_id in dropped:
                assert record.polls >= 1  # only its poll could have told it
        assert hooked.counter("jobs_ended_by", path="poll") >= len(dropped)
        assert hooked.counter("jobs_ended_by", path="webhook") == 20 - hooked.counter(
            "jobs_ended_by", path="poll"
        )


class RunMonitor:
    """Every run_job message a worker receives, from Celery's task events."""

    def __init__(self, redis_url: str) -> None:
        self.app = make_app(Settings(redis_url=redis_url))
        self.received: list[dict[str, Any]] = []
        self._ready = threading.Event()
        threading.Thread(target=self._listen, daemon=True).start()
        assert self._ready.wait(10)

    def _listen(self) -> None:
        with self.app.connection() as connection:
            receiver = self.app.events.Receiver(
                connection, handlers={"task-received": self.received.append}
            )
            self._ready.set()
            with contextlib.suppress(Exception):  # ends with the stack's Redis
                receiver.capture(limit=None, timeout=None, wakeup=True)

    def chained_runs(self, job_id: str) -> int:
        """Messages that started ``job_id`` (Flower's args is the job id, its kwargs end in
        ``submit``: every later run carries its poll number). For a chain step after the
        first, in a run without faults (no submit is retried), each is a chain advance to
        it."""
        return sum(
            1
            for event in list(self.received)
            if event.get("args") == job_id and str(event.get("kwargs", "")).endswith(" submit")
        )


def test_a_chain_advances_once_per_step_whether_webhook_or_poll_ends_it(tmp_path: Path) -> None:
    """Steps whose webhook is late end by their poll (the webhook then finds them ended);
    the others end by their webhook, before their poll (whose message carries the chain
    too). Either way each step is submitted once and each next step sent once."""
    with hooked_stack(tmp_path, NEAR_POLL, WAVEQUEUE_TASK_EVENTS="1") as hooked:
        stack = hooked.stack
        monitor = RunMonitor(stack.redis.url)
        # Later than the 2 s safety-net poll: those steps end by poll, the webhook second.
        stack.emulator.configure(faults={"webhook_delay": {"delay": 4, "prompt_contains": "late"}})
        settings = Settings(redis_url=stack.redis.url, allow_private_image_urls=True)
        with JobClient(settings) as client:
            edits = [
                ["late edit one", "plain edit one"],  # step 2 ends by poll
                ["plain edit two", "plain edit three"],
                ["plain edit four", "late edit two"],  # step 3 ends by poll
            ]
            chain_ids = [
                client.chain(TextToImage(f"chain {i} start"), steps)
                for i, steps in enumerate(edits)
            ]
            statuses = [client.wait_chain(chain_id, timeout=120) for chain_id in chain_ids]
        assert [s.state.value for s in statuses] == ["completed"] * 3
        late_steps = 2
        deadline = time.monotonic() + 30
        while hooked.counter("webhooks_ignored", reason="job_ended") < late_steps:
            assert time.monotonic() < deadline, "the late webhooks never arrived"
            time.sleep(0.1)

        steps = [step for status in statuses for step in status.steps]
        assert sorted(_predictions_by_input(stack).values()) == [1] * len(steps)
        by_poll = hooked.counter("jobs_ended_by", path="poll")
        by_webhook = hooked.counter("jobs_ended_by", path="webhook")
        # The late steps by poll (others too, should a webhook be slower than 2 s).
        assert by_poll >= late_steps and by_webhook >= 1
        assert by_poll + by_webhook == len(steps)
        assert hooked.counter("jobs_completed", model=EDIT) + hooked.counter(
            "jobs_completed", model=T2I
        ) == len(steps)
        for status in statuses:
            for step in status.steps[1:]:
                assert monitor.chained_runs(step.job_id) == 1, step
        monitor.app.close()


def test_a_webhook_hands_a_job_that_keeps_its_outputs_to_a_worker(tmp_path: Path) -> None:
    """The receiver does not copy (it answers within milliseconds): a job that keeps its
    outputs goes ``persisting`` on its webhook and a worker copies them, with no poll."""
    kept_dir = tmp_path / "kept"
    settings = {**FAR_POLL, "WAVEQUEUE_KEEP_OUTPUTS": "1", "WAVEQUEUE_OUTPUTS_DIR": str(kept_dir)}
    with hooked_stack(tmp_path, settings) as running:
        stack = running.stack
        job_ids = [stack.jobs.enqueue(T2I, prompt=f"kept by webhook {i}") for i in range(3)]
        records = stack.jobs.wait(job_ids, timeout=60)
        assert [r.status for r in records] == [JobStatus.COMPLETED] * 3
        assert stack.emulator.stats()["polls"]["total"] == 0
        for record in records:
            (location,) = record.stored_outputs
            kept = (kept_dir / record.id / "output1.png").read_bytes()
            assert location.endswith(f"/{record.id}/output1.png")
            assert kept == requests.get(record.outputs[0], timeout=10).content
        assert sorted(_predictions_by_input(stack).values()) == [1] * 3
