"""The emulator's webhook faults (drop, delay, duplicate) and the re-sign knob."""

from __future__ import annotations

import queue
import time
from datetime import datetime

import pytest

from emulator import webhooks as webhook_delivery
from tests.emulator.conftest import T2I_MAX, WebhookReceiver
from tests.support.emulator import EmulatorHandle


def _submit(emulator: EmulatorHandle, receiver: WebhookReceiver, prompt: str) -> str:
    answer = emulator.submit(T2I_MAX, {"prompt": prompt}, webhook=receiver.url).json()
    prediction_id: str = answer["data"]["id"]
    return prediction_id


def _wait_for_webhooks(emulator: EmulatorHandle, outcome: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while emulator.stats()["webhooks"][outcome] < count:
        assert time.monotonic() < deadline, emulator.stats()["webhooks"]
        time.sleep(0.02)


def test_a_dropped_webhook_is_never_sent(
    emulator: EmulatorHandle, webhook_receiver: WebhookReceiver
) -> None:
    emulator.configure(faults={"webhook_drop": {"prompt_contains": "lost"}})
    lost = _submit(emulator, webhook_receiver, "a lost one")
    kept = _submit(emulator, webhook_receiver, "a kept one")

    # The kept one's delivery comes; the lost one's drop is recorded, and nothing follows.
    assert webhook_receiver.next().json["id"] == kept
    _wait_for_webhooks(emulator, "dropped", 1)
    [entry] = emulator.prediction(lost)["webhook"]["deliveries"]
    assert entry["dropped"] is True
    assert emulator.stats()["webhooks"] == {
        "delivered": 1,
        "failed": 0,
        "dropped": 1,
        "duplicated": 0,
    }
    with pytest.raises(queue.Empty):
        webhook_receiver.next(timeout=0.5)


def test_a_delayed_webhook_comes_late(
    emulator: EmulatorHandle, webhook_receiver: WebhookReceiver
) -> None:
    emulator.configure(faults={"webhook_delay": {"delay": 1.5}})
    prediction_id = _submit(emulator, webhook_receiver, "a slow messenger")

    delivery = webhook_receiver.next()
    arrived = time.time()

    completed = emulator.prediction(prediction_id)["completed_at"]
    ended = datetime.fromisoformat(completed.replace("Z", "+00:00")).timestamp()
    assert arrived - ended >= 1.5
    assert delivery.json["id"] == prediction_id


def test_a_duplicated_webhook_comes_twice_with_one_id(
    emulator: EmulatorHandle, webhook_receiver: WebhookReceiver
) -> None:
    emulator.configure(faults={"webhook_duplicate": 1})
    prediction_id = _submit(emulator, webhook_receiver, "say it twice")

    first, second = webhook_receiver.next(), webhook_receiver.next()

    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert first.json["id"] == prediction_id
    _wait_for_webhooks(emulator, "duplicated", 1)


@pytest.mark.parametrize("resign", [True, False])
def test_retries_are_re_signed_or_repeat_the_first_attempt(
    emulator: EmulatorHandle,
    webhook_receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
    resign: bool,
) -> None:
    # Attempts 0.6 s then 1.2 s apart: the third is in another second than the first.
    monkeypatch.setattr(webhook_delivery, "RETRY_BACKOFF_SECONDS", 0.6)
    emulator.configure(webhook_resign_retries=resign)
    webhook_receiver.status = 500
    _submit(emulator, webhook_receiver, "retry me")

    attempts = [webhook_receiver.next() for _ in range(3)]

    stamps = [attempt.headers["webhook-timestamp"] for attempt in attempts]
    signatures = {attempt.headers["webhook-signature"] for attempt in attempts}
    if resign:
        assert stamps[0] != stamps[2]
        assert len(signatures) >= 2
    else:
        assert len(set(stamps)) == 1
        assert len(signatures) == 1
    assert emulator.config()["webhook_resign_retries"] is resign
