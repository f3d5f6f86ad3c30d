"""Callbacks to the backend through real worker processes, the emulator and a real HTTP
receiver: a target that is down for a while gets each final record once it is back,
exactly once, signed; copies of delivery messages change nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer import JobClient, TextToImage
from producer.cli import main
from tests.support.callback_receiver import CallbackReceiver
from tests.support.stack import WorkerStack, worker_stack
from worker.chains import send_callback_deliveries
from worker.settings import Settings
from worker.store import counter_field

SECRET = "whsec_" + base64.b64encode(b"wavequeue-test-callback-secret-32b").decode()
T2I = "flux-kontext-max/text-to-image"
#: Fast retries: 0.3 s, 0.6 s by countdown (<= the 1 s longest countdown), then 1.2 s and
#: 2 s, longer than a countdown may be: those wait in the outbox for the sweeper.
CALLBACK_SETTINGS = {
    "WAVEQUEUE_CALLBACK_SECRET": SECRET,
    "WAVEQUEUE_CALLBACK_RETRY_BASE_DELAY": "0.3",
    "WAVEQUEUE_CALLBACK_RETRY_MAX_DELAY": "2",
    "WAVEQUEUE_CALLBACK_TIMEOUT": "2",
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[WorkerStack]:
    with worker_stack(tmp_path, settings=CALLBACK_SETTINGS) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver(SECRET).running() as running:
        yield running


def _counter(stack: WorkerStack, name: str, **labels: str) -> int:
    value = stack.jobs.store.client.hget("wq:counters", counter_field(name, **labels))
    return int(value or 0)


def test_a_target_down_for_a_while_gets_each_final_record_once(
    stack: WorkerStack, receiver: CallbackReceiver
) -> None:
    receiver.down = True
    client = JobClient(Settings.from_env(stack.env))
    try:
        # One job fails (the emulator fails its prediction), the others complete.
        stack.emulator.configure(faults={"prediction_failed": {"count": 1, "code": 1403}})
        failing = client.text_to_image("fails", callback_url=receiver.url)
        assert client.wait(failing, timeout=60).status == "failed"
        jobs = [client.text_to_image(f"kite {n}", callback_url=receiver.url) for n in range(3)]
        chain_id = client.chain(
            TextToImage("a red bicycle"), ["make it blue"], callback_url=receiver.url
        )
        records = client.wait_all([failing, *jobs], timeout=60)
        assert [r.status for r in records] == ["failed", "completed", "completed", "completed"]
        assert client.wait_chain(chain_id, timeout=60).state == "completed"
        expected = {f"job_{job_id}" for job_id in [failing, *jobs]}
        chain = client.chain_status(chain_id)
        expected.add(f"chain_{chain_id}_completed_{chain.steps[-1].job_id}")

        # Down: every final record is refused again and again, by countdown retries and
        # then by the sweeper once the waits grow past what a countdown may be.
        receiver.wait_until(
            lambda: set(receiver.refused()) == expected and min(receiver.refused().values()) >= 4,
            timeout=120,
            what="four refused attempts per callback",
        )
        assert receiver.delivered() == {}
        down = client.get(jobs[0])
        assert down.callback_attempts >= 1 and down.callback_status == 503
        assert down.callback_delivered_at is None
        assert _counter(stack, "callback_attempts_failed", status="503") >= 4 * len(expected)
        assert _counter(stack, "sweeper_callbacks") >= 1  # the long waits went by the sweeper

        receiver.down = False
        receiver.wait_until(
            lambda: set(receiver.delivered()) == expected, timeout=60, what="every delivery"
        )
        # Copies of the delivery messages (a redelivery, a resend) after the delivery.
        members = [f"job:{job_id}" for job_id in [failing, *jobs]] + [f"chain:{chain_id}"]
        send_callback_deliveries(stack.jobs.app, members * 3)
        receiver.wait_until(
            lambda: _counter(stack, "callback_copies_ignored") >= 3 * len(members),
            timeout=60,
            what="the copies handled",
        )

        assert receiver.delivered() == dict.fromkeys(expected, 1)  # exactly once each
        assert all(r.signature_ok for r in receiver.all())
        assert all(r.path == "/hooks/wavequeue?token=t0k" for r in receiver.all())
        bodies = {r.message_id: r.body for r in receiver.all() if r.answered == 200}
        for record in client.get_many([failing, *jobs]):
            body = bodies[f"job_{record.id}"]
            assert body["type"] == f"job.{record.status.value}"
            assert body["data"]["id"] == record.id and body["data"]["outputs"] == record.outputs
            assert "callback_attempts" not in body["data"]
            assert record.callback_status == 200 and record.callback_delivered_at is not None
            assert record.callback_attempts == receiver.refused()[f"job_{record.id}"] + 1
        chain_body = bodies[f"chain_{chain_id}_completed_{chain.steps[-1].job_id}"]
        assert chain_body["type"] == "chain.completed"
        assert chain_body["data"]["chain_id"] == chain_id
        assert client.chain_status(chain_id).callback["callback_status"] == 200
        assert _counter(stack, "callbacks_delivered", kind="job") == 4
        assert _counter(stack, "callbacks_delivered", kind="chain") == 1
        assert stack.jobs.store.client.zcard("wq:callbacks") == 0
        shown = CliRunner().invoke(main, ["status", jobs[0]], env=stack.env)
        assert "callback http://127.0.0.1:" in shown.stdout
        assert "delivered (" in shown.stdout and "last status 200)" in shown.stdout
        assert SECRET not in stack.worker_logs()
        assert "token=t0k" not in stack.worker_logs()
    finally:
        client.close()
