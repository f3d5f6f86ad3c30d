"""Every fault kind, its targeting (models, prompt_contains) and count, and the limits."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from tests.emulator.conftest import EDIT_PRO, T2I_MAX, T2I_PRO, data_uri, png_bytes
from tests.support.emulator import EmulatorHandle, running_emulator


def _submit_id(emulator: EmulatorHandle, prompt: str = "x", model: str = T2I_MAX) -> str:
    response = emulator.submit(model, {"prompt": prompt})
    assert response.status_code == 200, response.text
    prediction_id: str = response.json()["data"]["id"]
    return prediction_id


def _poll(emulator: EmulatorHandle, prediction_id: str) -> requests.Response:
    return requests.get(
        emulator.url(f"/api/v3/predictions/{prediction_id}/result"),
        headers=emulator.auth_headers,
        timeout=10,
    )


# --- submit faults ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_submit_server_errors_create_nothing(emulator: EmulatorHandle, status: int) -> None:
    kind = f"submit_{status}"
    emulator.configure(faults={kind: {"count": 1}})

    faulted = emulator.submit(T2I_MAX, {"prompt": "x"})
    after = emulator.submit(T2I_MAX, {"prompt": "x"})

    assert faulted.status_code == status
    assert faulted.json()["code"] == status
    assert kind in faulted.json()["message"]
    assert after.status_code == 200  # count 1: only the first one
    stats = emulator.stats()
    assert stats["faults"] == {kind: 1}
    assert stats["submissions"]["total"] == 2
    assert stats["predictions"]["created"] == 1


def test_submit_429_carries_retry_after_and_creates_nothing(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_429": {"retry_after": 7, "count": 1}})

    response = emulator.submit(T2I_MAX, {"prompt": "x"})

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["code"] == 429
    stats = emulator.stats()
    assert stats["http_429"] == 1
    assert stats["predictions"]["created"] == 0


def test_drop_before_create_closes_the_connection_and_creates_nothing(
    emulator: EmulatorHandle,
) -> None:
    emulator.configure(faults={"submit_drop_before_create": {"count": 1}})

    with pytest.raises(requests.ConnectionError):
        emulator.submit(T2I_MAX, {"prompt": "dropped"})

    stats = emulator.stats()
    assert stats["submissions"]["total"] == 1  # the request was read ...
    assert stats["predictions"]["created"] == 0  # ... but nothing was created
    assert emulator.predictions() == []


def test_drop_after_create_closes_the_connection_but_the_prediction_runs(
    emulator: EmulatorHandle,
) -> None:
    emulator.configure(faults={"submit_drop_after_create": {"count": 1}})

    with pytest.raises(requests.ConnectionError):
        emulator.submit(T2I_MAX, {"prompt": "dropped late"})

    [prediction] = emulator.predictions()
    assert prediction["input"] == {"prompt": "dropped late"}
    assert emulator.wait_for(prediction["id"])["status"] == "completed"
    assert emulator.stats()["faults"] == {"submit_drop_after_create": 1}


def test_submit_slow_delays_the_answer(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_slow": {"delay": 0.4}})

    started = time.monotonic()
    response = emulator.submit(T2I_MAX, {"prompt": "x"})

    assert time.monotonic() - started >= 0.4
    assert response.status_code == 200


def test_submit_malformed_creates_the_prediction_but_answers_broken_json(
    emulator: EmulatorHandle,
) -> None:
    emulator.configure(faults={"submit_malformed": {"count": 1}})

    response = emulator.submit(T2I_MAX, {"prompt": "x"})

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert emulator.stats()["predictions"]["created"] == 1


def test_submit_echo_auth_quotes_the_authorization_header(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_echo_auth": {"count": 1}})

    response = emulator.submit(T2I_MAX, {"prompt": "x"})

    assert response.status_code == 400
    assert "Bearer test-key" in response.json()["message"]
    assert emulator.stats()["predictions"]["created"] == 0


def test_submit_401_answers_as_for_a_revoked_key(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_401": {"count": 1}})

    revoked, after = (
        emulator.submit(T2I_MAX, {"prompt": "x"}),
        emulator.submit(T2I_MAX, {"prompt": "x"}),
    )

    assert revoked.status_code == 401
    assert revoked.json()["message"] == "Invalid API key"
    assert after.status_code == 200
    assert emulator.stats()["auth_failures"] == 1
    assert emulator.stats()["predictions"]["created"] == 1


# --- result faults ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_result_server_errors(emulator: EmulatorHandle, status: int) -> None:
    prediction_id = _submit_id(emulator)
    emulator.configure(faults={f"result_{status}": {"count": 1}})

    faulted, after = _poll(emulator, prediction_id), _poll(emulator, prediction_id)

    assert faulted.status_code == status
    assert faulted.json()["code"] == status
    assert after.status_code == 200
    assert emulator.prediction(prediction_id)["polls"] == 2


def test_result_429_carries_retry_after(emulator: EmulatorHandle) -> None:
    prediction_id = _submit_id(emulator)
    emulator.configure(faults={"result_429": {"retry_after": 3, "count": 1}})

    response = _poll(emulator, prediction_id)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert emulator.stats()["http_429"] == 1


def test_result_drop_closes_the_connection(emulator: EmulatorHandle) -> None:
    prediction_id = _submit_id(emulator)
    emulator.configure(faults={"result_drop": {"count": 1}})

    with pytest.raises(requests.ConnectionError):
        _poll(emulator, prediction_id)
    assert _poll(emulator, prediction_id).status_code == 200


def test_result_slow_delays_the_answer(emulator: EmulatorHandle) -> None:
    prediction_id = _submit_id(emulator)
    emulator.configure(faults={"result_slow": {"delay": 0.3, "count": 1}})

    started = time.monotonic()
    response = _poll(emulator, prediction_id)

    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200


def test_result_malformed_answers_broken_json(emulator: EmulatorHandle) -> None:
    prediction_id = _submit_id(emulator)
    emulator.configure(faults={"result_malformed": {"count": 1}})

    response = _poll(emulator, prediction_id)

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert _poll(emulator, prediction_id).json()["code"] == 200


# --- how predictions end ------------------------------------------------------------------


def test_prediction_failed_ends_failed_with_the_given_code(emulator: EmulatorHandle) -> None:
    emulator.configure(
        faults={"prediction_failed": {"code": 1200, "message": "Flagged by moderation"}}
    )

    data = emulator.wait_for(_submit_id(emulator))

    assert data["status"] == "failed"
    assert data["code"] == 1200
    assert data["error"] == "Flagged by moderation"
    assert data["outputs"] == []


def test_prediction_failed_defaults_to_1403(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"prediction_failed": {}})

    data = emulator.wait_for(_submit_id(emulator))

    assert (data["status"], data["code"], data["error"]) == ("failed", 1403, "Task failed")


def test_nsfw_marks_every_output(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"nsfw": {"count": 1}})

    response = emulator.submit(T2I_PRO, {"prompt": "x", "num_images": 2})
    flagged = emulator.wait_for(response.json()["data"]["id"])
    clean = emulator.wait_for(_submit_id(emulator))

    assert flagged["status"] == "completed"
    assert flagged["has_nsfw_contents"] == [True, True]
    assert clean["has_nsfw_contents"] == [False]


# --- targeting, count, probability --------------------------------------------------------


def test_models_filter_limits_a_fault_to_those_models(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_503": {"models": [EDIT_PRO]}})
    image = data_uri(png_bytes())

    assert emulator.submit(T2I_MAX, {"prompt": "x"}).status_code == 200
    assert emulator.submit(EDIT_PRO, {"prompt": "x", "image": image}).status_code == 503
    # The full model path works too.
    emulator.configure(faults={"submit_503": {"models": [f"wavespeed-ai/{T2I_MAX}"]}})
    assert emulator.submit(T2I_MAX, {"prompt": "x"}).status_code == 503


def test_prompt_contains_fails_only_the_matching_step_of_a_chain(
    emulator: EmulatorHandle,
) -> None:
    emulator.configure(faults={"prediction_failed": {"prompt_contains": "step 2", "code": 1405}})
    image = emulator.submit(T2I_MAX, {"prompt": "base", "enable_sync_mode": True}).json()["data"][
        "outputs"
    ][0]

    step1 = emulator.submit(EDIT_PRO, {"prompt": "step 1: add a cat", "image": image})
    first = emulator.wait_for(step1.json()["data"]["id"])
    step2 = emulator.submit(EDIT_PRO, {"prompt": "step 2: add a dog", "image": first["outputs"][0]})
    second = emulator.wait_for(step2.json()["data"]["id"])

    assert first["status"] == "completed"
    assert (second["status"], second["code"]) == ("failed", 1405)


def test_count_caps_how_often_a_fault_fires(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_502": {"count": 2}})

    statuses = [emulator.submit(T2I_MAX, {"prompt": f"{i}"}).status_code for i in range(4)]

    assert statuses == [502, 502, 200, 200]
    assert emulator.config()["fault_counts_remaining"] == {"submit_502": 0}
    # Posting the fault again re-arms it.
    emulator.configure(faults={"submit_502": {"count": 2}})
    assert emulator.submit(T2I_MAX, {"prompt": "again"}).status_code == 502


def test_targeting_mismatches_do_not_use_up_the_count(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_500": {"count": 1, "prompt_contains": "boom"}})

    assert emulator.submit(T2I_MAX, {"prompt": "calm"}).status_code == 200
    assert emulator.submit(T2I_MAX, {"prompt": "boom"}).status_code == 500
    assert emulator.submit(T2I_MAX, {"prompt": "boom"}).status_code == 200


def test_probability_draws_are_reproducible_with_a_seed() -> None:
    def statuses() -> list[int]:
        faults = {"submit_503": {"probability": 0.5}}
        with running_emulator(seed=1234, faults=faults) as emulator:
            return [emulator.submit(T2I_MAX, {"prompt": f"{i}"}).status_code for i in range(20)]

    first, second = statuses(), statuses()

    assert first == second
    assert set(first) == {200, 503}


def test_faults_given_at_startup_apply() -> None:
    with running_emulator(faults={"submit_500": {"count": 1}}) as faulty:
        assert faulty.submit(T2I_MAX, {"prompt": "x"}).status_code == 500
        assert faulty.submit(T2I_MAX, {"prompt": "x"}).status_code == 200


# --- account limits -----------------------------------------------------------------------


def _submit_as(emulator: EmulatorHandle, key: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        emulator.url(f"/api/v3/wavespeed-ai/{T2I_PRO}"),
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_rate_limit_is_images_per_minute_per_key() -> None:
    with running_emulator(api_key=None, rate_limit_per_minute=3) as emulator:
        first = _submit_as(emulator, "alice", {"prompt": "a", "num_images": 2})
        second = _submit_as(emulator, "alice", {"prompt": "b"})
        over = _submit_as(emulator, "alice", {"prompt": "c"})
        other_key = _submit_as(emulator, "bob", {"prompt": "d", "num_images": 3})
        too_many_at_once = _submit_as(emulator, "carol", {"prompt": "e", "num_images": 4})

        assert [first.status_code, second.status_code, other_key.status_code] == [200, 200, 200]
        assert over.status_code == 429
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        assert "3 images per minute" in over.json()["message"]
        assert too_many_at_once.status_code == 429
        stats = emulator.stats()
        assert stats["http_429"] == 2
        assert stats["rate_limited"] == 2
        assert stats["predictions"]["created"] == 3


def test_over_concurrency_predictions_queue_as_created(emulator: EmulatorHandle) -> None:
    emulator.configure(max_concurrency=1, latency="fixed:0.6")

    ids = [_submit_id(emulator, f"q{i}") for i in range(3)]
    time.sleep(0.1)

    assert [emulator.result(pid)["status"] for pid in ids] == ["processing", "created", "created"]
    assert emulator.stats()["concurrency"]["queued"] == 2
    for prediction_id in ids:
        assert emulator.wait_for(prediction_id)["status"] == "completed"
    concurrency = emulator.stats()["concurrency"]
    assert concurrency["peak"] == 1
    assert concurrency["peak_queued"] == 2
    assert concurrency["queued"] == 0
    starts = [emulator.prediction(pid)["started_at"] for pid in ids]
    assert starts == sorted(starts)  # FIFO


def test_raising_the_concurrency_limit_starts_queued_predictions(
    emulator: EmulatorHandle,
) -> None:
    emulator.configure(max_concurrency=1, latency="fixed:2")
    ids = [_submit_id(emulator, f"q{i}") for i in range(3)]
    time.sleep(0.1)
    assert emulator.stats()["concurrency"]["queued"] == 2

    emulator.configure(max_concurrency=5)
    time.sleep(0.1)

    assert [emulator.result(pid)["status"] for pid in ids] == ["processing"] * 3
    assert emulator.stats()["concurrency"]["peak"] == 3


def test_peak_concurrency_counts_predictions_processing_at_once(emulator: EmulatorHandle) -> None:
    emulator.configure(latency="fixed:0.5")

    ids = [_submit_id(emulator, f"p{i}") for i in range(4)]
    for prediction_id in ids:
        emulator.wait_for(prediction_id)

    assert emulator.stats()["concurrency"]["peak"] == 4
