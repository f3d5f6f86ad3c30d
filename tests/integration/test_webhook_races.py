"""A webhook racing a poll, and the unknown-outcome wait, staged step by step against
real Redis: the runner with a scripted WaveSpeed side (to place the webhook *during* a
poll's GET), the receiver's code with a real Celery app publishing to Redis.

What must hold whichever arrives first: the job ends once (one terminal event, one
``jobs_completed``), and its chain advances once (exactly one message for the next
step: from the run that ended it, or from the receiver, never both).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.clock import ManualClock
from tests.support.scripted import ScriptedClient, completed, processing
from tests.support.webhooks import completed_prediction
from worker.celery_config import make_app
from worker.constants import COUNTERS_KEY, JOB_EVENTS_PATTERN, QUEUE_NORMAL
from worker.errors import SubmitOutcomeUnknownError
from worker.models import JobRecord, JobStatus
from worker.ratelimit import AccountLimiter
from worker.runner import Deferred, Duplicate, Finished, JobRunner, Reschedule
from worker.settings import Settings
from worker.store import JobStore, counter_field
from worker.webhooks.receiver import Reply, Sender, WebhookReceiver
from worker.webhooks.signature import Verifier, sign
from worker.webhooks.urls import job_mac

MODEL = "flux-kontext-max/text-to-image"
EDIT = "flux-kontext-pro"
SECRET = "whsec_c2VjcmV0K3dpdGgvc2xhc2hlcz0="  # base64-like, as WaveSpeed's looks
URL_KEY = "url-key-for-tests"
IMAGE = {"image": "https://x.example/a.png"}


class Harness:
    def __init__(self, redis_url: str) -> None:
        self.clock = ManualClock()
        self.settings = Settings(
            redis_url=redis_url,
            webhook_url="https://hooks.example",
            webhook_url_key=URL_KEY,
            webhook_poll_max=300,
        )
        self.store = JobStore.from_url(redis_url, record_ttl=3600, clock=self.clock)
        self.limiter = AccountLimiter(self.store.client, per_minute=100_000, max_in_flight=1000)
        self.wavespeed = ScriptedClient()
        self.runner = JobRunner(self.settings, self.store, self.limiter, self.wavespeed)
        self.app = make_app(self.settings)
        self.receiver = WebhookReceiver(
            store=self.store,
            limiter=self.limiter,
            verifier=Verifier(SECRET.removeprefix("whsec_").encode(), clock=time.time),
            url_key=URL_KEY.encode(),
            sender=Sender(self.app, self.store),
            clock=self.clock,
        )
        self.events = self.store.client.pubsub()  # type: ignore[no-untyped-call]
        self.events.psubscribe(JOB_EVENTS_PATTERN)
        self.events.get_message(timeout=5)

    def create(self, model: str = MODEL, **fields: Any) -> str:
        now = self.clock()
        record = JobRecord(
            id=uuid.uuid4().hex,
            model=model,
            input={"prompt": "a race", **(IMAGE if model == EDIT else {})},
            status=JobStatus.QUEUED,
            created_at=now,
            deadline_at=now + 600,
        )
        job_id = self.store.create_job(record)[0]
        if fields:
            assert self.store.transition(job_id, updates=fields)
        return job_id

    def chain(self) -> tuple[str, str]:
        first = self.create(chain_id="c1", step=1)
        second = self.create(EDIT, chain_id="c1", step=2, awaiting_image="1")
        self.store.create_chain("c1", [first, second], metadata={})
        return first, second

    def webhook(self, job_id: str, data: dict[str, Any]) -> Reply:
        body = json.dumps(data).encode()
        webhook_id, stamp = uuid.uuid4().hex, str(int(time.time()))
        key = SECRET.removeprefix("whsec_").encode()
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v3," + sign(key, webhook_id, stamp, body),
        }
        return self.receiver.receive(job_id, job_mac(URL_KEY.encode(), job_id), headers, body)

    def queued_messages(self) -> list[str]:
        """The run_job messages waiting in the normal queue, as Flower shows them: the job
        id and which run it is (``worker.messages.run_label``)."""
        found: list[str] = []
        for raw in self.store.client.lrange(QUEUE_NORMAL, 0, -1):
            headers = json.loads(raw)["headers"]
            found.append(f"{headers.get('argsrepr')} {headers.get('kwargsrepr')}")
        return found

    def terminal_events(self, job_id: str) -> list[str]:
        marker = "end-of-events"
        self.store.client.publish(f"wq:events:job:{job_id}", marker)
        statuses: list[str] = []
        while True:
            message = self.events.get_message(timeout=10)
            assert message is not None
            if message["type"] != "pmessage":
                continue
            if message["data"] == marker:
                return statuses
            event = json.loads(message["data"])
            if event["job_id"] == job_id:
                statuses.append(event["status"])

    def counter(self, name: str, **labels: str) -> int:
        return int(self.store.client.hget(COUNTERS_KEY, counter_field(name, **labels)) or 0)


@pytest.fixture
def harness(redis_url: str) -> Iterator[Harness]:
    running = Harness(redis_url)
    yield running
    running.app.close()


def _submitted(harness: Harness, job_id: str, prediction_id: str = "p1") -> Deferred:
    """Submitted with webhooks on: the safety-net poll, 20 s ahead, is deferred."""
    harness.wavespeed.on_submit(processing(prediction_id))
    outcome = harness.runner.run(job_id, previous_output="https://x.example/in.png")
    assert isinstance(outcome, Deferred) and outcome.poll_seq == 1
    return outcome


def test_a_submit_passes_the_jobs_callback_url_and_polls_far_out(harness: Harness) -> None:
    job_id = harness.create()
    outcome = _submitted(harness, job_id)

    [url] = harness.wavespeed.webhooks
    assert url == f"https://hooks.example/wavespeed/{job_id}/{job_mac(URL_KEY.encode(), job_id)}"
    # No latency history: 4 x the first-poll default (5 s), not the default itself.
    wait = outcome.due_at - harness.clock()
    assert wait == pytest.approx(4 * harness.settings.first_poll_default)
    assert harness.store.prediction_owner("p1") == job_id


def test_a_webhook_during_the_polls_get_ends_the_job_once_and_advances_the_chain_once(
    harness: Harness,
) -> None:
    first, second = harness.chain()
    _submitted(harness, first)
    replies: list[Reply] = []
    harness.wavespeed.on_result(
        completed("p1"),
        during=lambda: replies.append(harness.webhook(first, completed_prediction("p1"))),
    )

    outcome = harness.runner.run(first, poll_seq=1)

    assert replies == [Reply(200, "completed")]
    # The poll lost: no chain callback from its run; the receiver sent step 2 once.
    assert isinstance(outcome, Duplicate)
    assert harness.queued_messages() == [f"{second} flux-kontext-pro submit"]
    assert harness.terminal_events(first) == ["completed"]
    assert harness.counter("jobs_completed", model=MODEL) == 1
    assert harness.counter("jobs_ended_by", path="webhook") == 1
    assert harness.counter("jobs_ended_by", path="poll") == 0
    # The job's own pending message (the safety-net poll) steps aside too.
    assert isinstance(harness.runner.run(first, poll_seq=1), Duplicate)
    assert harness.wavespeed.calls.count(("result", "p1")) == 1


def test_a_webhook_after_the_poll_ended_the_job_changes_nothing(harness: Harness) -> None:
    first, _second = harness.chain()
    _submitted(harness, first)
    harness.wavespeed.on_result(completed("p1"))

    outcome = harness.runner.run(first, poll_seq=1)
    reply = harness.webhook(first, completed_prediction("p1"))

    # The poll's run ends it and returns the output: Celery's chain sends step 2.
    assert isinstance(outcome, Finished) and outcome.ended_here
    assert reply == Reply(200, "ignored: job_ended")
    assert harness.queued_messages() == []
    assert harness.terminal_events(first) == ["completed"]
    assert harness.counter("jobs_completed", model=MODEL) == 1
    assert harness.counter("jobs_ended_by", path="poll") == 1
    assert harness.counter("webhooks_ignored", reason="job_ended") == 1


def test_a_webhook_for_another_prediction_of_the_job_changes_nothing(harness: Harness) -> None:
    job_id = harness.create()
    _submitted(harness, job_id, prediction_id="p2")
    before = harness.store.snapshot(job_id).raw

    reply = harness.webhook(job_id, completed_prediction("p1"))

    assert reply == Reply(200, "ignored: other_prediction")
    assert harness.store.snapshot(job_id).raw == before


def test_a_webhook_during_the_submit_post_is_deferred_for_a_retry(harness: Harness) -> None:
    job_id = harness.create()
    replies: list[Reply] = []
    harness.wavespeed.on_submit(
        processing("p1"),
        during=lambda: replies.append(harness.webhook(job_id, completed_prediction("p1"))),
    )
    harness.runner.run(job_id)

    # Not applied, and the webhook-id given back: the sender's retry applies it.
    assert replies == [Reply(503, "submit_in_flight")]
    assert harness.webhook(job_id, completed_prediction("p1")) == Reply(200, "completed")


def test_an_unknown_submit_waits_for_its_webhook_then_the_policy_applies(
    harness: Harness,
) -> None:
    job_id = harness.create()
    harness.wavespeed.on_submit(SubmitOutcomeUnknownError("read timeout", code="x"))

    waiting = harness.runner.run(job_id)

    # The window (20 s: as long as the first poll would wait) is a deferred run.
    assert isinstance(waiting, Deferred) and waiting.poll_seq == 0
    window = waiting.due_at - harness.clock()
    assert window == pytest.approx(4 * harness.settings.first_poll_default)
    snap = harness.store.snapshot(job_id)
    assert snap.field("outcome_unknown_at") and snap.field("submit_token")
    # Another copy of the message during the window does not POST.
    assert isinstance(harness.runner.run(job_id), Duplicate)
    harness.clock.advance(window + 0.1)
    ended = harness.runner.run(job_id)

    assert isinstance(ended, Finished)
    assert ended.state.status is JobStatus.FAILED
    assert ended.state.error is not None
    assert ended.state.error.code == "submit_outcome_unknown"
    assert "no webhook proved the prediction" in ended.state.error.message
    assert [call for call in harness.wavespeed.calls if call[0] == "submit"] == [("submit", MODEL)]


def test_an_unknown_submit_adopts_the_prediction_its_webhook_proves(harness: Harness) -> None:
    first, second = harness.chain()
    harness.wavespeed.on_submit(SubmitOutcomeUnknownError("dropped", code="x"))
    waiting = harness.runner.run(first, previous_output="https://x.example/in.png")
    assert isinstance(waiting, Deferred)

    reply = harness.webhook(first, completed_prediction("p9"))

    assert reply == Reply(200, "completed")
    record = harness.store.get(first)
    assert (record.status, record.prediction_id) == (JobStatus.COMPLETED, "p9")
    assert harness.store.prediction_owner("p9") == first
    assert harness.counter("orphans_adopted", model=MODEL) == 1
    assert harness.queued_messages() == [f"{second} flux-kontext-pro submit"]
    # The message that waited out the window finds the job ended by its webhook.
    harness.clock.advance(waiting.due_at - harness.clock() + 0.1)
    assert isinstance(harness.runner.run(first, poll_seq=0), Duplicate)
    assert [call[0] for call in harness.wavespeed.calls] == ["submit"]


def test_a_job_does_not_adopt_a_prediction_another_job_owns(harness: Harness) -> None:
    owner = harness.create()
    _submitted(harness, owner, prediction_id="p1")
    orphan = harness.create()
    harness.wavespeed.on_submit(SubmitOutcomeUnknownError("dropped", code="x"))
    harness.runner.run(orphan)
    before = harness.store.snapshot(orphan).raw

    reply = harness.webhook(orphan, completed_prediction("p1"))

    assert reply == Reply(200, "rejected: prediction_owned")
    assert harness.store.snapshot(orphan).raw == before
    assert harness.store.snapshot(owner).state.status is JobStatus.SUBMITTED


def test_a_retryable_remote_failure_is_left_to_the_poll(harness: Harness) -> None:
    job_id = harness.create()
    _submitted(harness, job_id)
    failed = completed_prediction("p1") | {"status": "failed", "code": 5003, "error": "busy"}

    reply = harness.webhook(job_id, failed)

    assert reply == Reply(200, "ignored: left_to_poll")
    assert harness.store.snapshot(job_id).state.status is JobStatus.SUBMITTED


def test_a_final_remote_failure_ends_the_job_by_its_webhook(harness: Harness) -> None:
    job_id = harness.create()
    _submitted(harness, job_id)
    failed = completed_prediction("p1") | {"status": "failed", "code": 1200, "error": "flagged"}

    reply = harness.webhook(job_id, failed)

    assert reply == Reply(200, "failed")
    record = harness.store.get(job_id)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == 1200
    assert harness.counter("jobs_ended_by", path="webhook") == 1


def test_without_webhooks_a_submit_passes_no_callback(redis_url: str) -> None:
    clock = ManualClock()
    store = JobStore.from_url(redis_url, record_ttl=3600, clock=clock)
    limiter = AccountLimiter(store.client, per_minute=100_000, max_in_flight=1000)
    wavespeed = ScriptedClient().on_submit(processing("p1"))
    runner = JobRunner(Settings(redis_url=redis_url), store, limiter, wavespeed)
    now = clock()
    record = JobRecord(
        id="plain", model=MODEL, input={"prompt": "x"}, status=JobStatus.QUEUED,
        created_at=now, deadline_at=now + 600,
    )  # fmt: skip
    store.create_job(record)

    outcome = runner.run("plain")

    assert isinstance(outcome, Reschedule)
    assert outcome.countdown == pytest.approx(Settings().first_poll_default)
    assert wavespeed.webhooks == [None]
    assert store.prediction_owner("p1") is None
