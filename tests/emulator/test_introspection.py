"""``/_emulator/*``: stats, predictions, config and reset, as tests will use them."""

from __future__ import annotations

import re

import pytest
import requests

from tests.emulator.conftest import EDIT_PRO, T2I_MAX, data_uri, png_bytes
from tests.support.emulator import EmulatorHandle, input_key, running_emulator


def test_stats_count_submissions_per_model_and_per_identical_input(
    emulator: EmulatorHandle,
) -> None:
    body = {"prompt": "same thing", "seed": 1}
    emulator.submit(T2I_MAX, body)
    emulator.submit(T2I_MAX, body | {"enable_sync_mode": False})  # delivery flag: same input
    emulator.submit(T2I_MAX, {"prompt": "other"})
    emulator.submit(EDIT_PRO, {"prompt": "edit", "image": data_uri(png_bytes())})

    stats = emulator.stats()

    key = input_key(f"wavespeed-ai/{T2I_MAX}", body)
    assert stats["submissions"]["total"] == 4
    assert stats["submissions"]["per_model"] == {
        f"wavespeed-ai/{T2I_MAX}": 3,
        f"wavespeed-ai/{EDIT_PRO}": 1,
    }
    assert stats["submissions"]["per_input"][key] == 2
    assert stats["predictions"]["per_input"][key] == 2
    assert sorted(stats["submissions"]["per_input"].values()) == [1, 1, 2]
    assert stats["predictions"]["created"] == 4


def test_input_key_ignores_key_order_sync_mode_and_webhook() -> None:
    model = f"wavespeed-ai/{T2I_MAX}"

    assert input_key(model, {"prompt": "a", "seed": 2}) == input_key(
        model, {"seed": 2, "prompt": "a", "enable_sync_mode": True, "webhook_url": "http://x"}
    )
    assert input_key(model, {"prompt": "a"}) != input_key(model, {"prompt": "b"})
    assert input_key(model, {"prompt": "a"}) != input_key("wavespeed-ai/other", {"prompt": "a"})


def test_faulted_submissions_count_as_submissions_but_not_predictions(
    emulator: EmulatorHandle,
) -> None:
    emulator.configure(faults={"submit_503": {"count": 1}})
    body = {"prompt": "retry me"}
    emulator.submit(T2I_MAX, body)
    emulator.submit(T2I_MAX, body)

    stats = emulator.stats()

    key = input_key(f"wavespeed-ai/{T2I_MAX}", body)
    assert stats["submissions"]["per_input"][key] == 2
    assert stats["predictions"]["per_input"][key] == 1  # "created exactly once"


def test_stats_count_polls_per_prediction(emulator: EmulatorHandle) -> None:
    polled = emulator.submit(T2I_MAX, {"prompt": "a"}).json()["data"]["id"]
    untouched = emulator.submit(T2I_MAX, {"prompt": "b"}).json()["data"]["id"]
    for _ in range(3):
        emulator.result(polled)
    requests.get(
        emulator.url("/api/v3/predictions/nope/result"), headers=emulator.auth_headers, timeout=10
    )

    polls = emulator.stats()["polls"]

    assert polls["per_prediction"] == {polled: 3, untouched: 0}
    assert polls["total"] == 3
    assert polls["unknown_id"] == 1
    assert emulator.prediction(polled)["polls"] == 3


def test_stats_count_outcomes_and_media(emulator: EmulatorHandle) -> None:
    completed = emulator.wait_for(emulator.submit(T2I_MAX, {"prompt": "ok"}).json()["data"]["id"])
    bad = {"prompt": "x", "image": "http://127.0.0.1:1/x.png"}
    emulator.wait_for(emulator.submit(EDIT_PRO, bad).json()["data"]["id"])
    requests.get(completed["outputs"][0], timeout=10)

    stats = emulator.stats()

    assert stats["predictions"]["completed"] == 1
    assert stats["predictions"]["failed"] == 1
    assert stats["media_served"] == 1
    assert stats["concurrency"]["processing"] == 0


def test_predictions_list_and_detail(emulator: EmulatorHandle) -> None:
    body = {"prompt": "listed", "seed": 5, "unknown": True}
    first = emulator.submit(T2I_MAX, body).json()["data"]["id"]
    second = emulator.submit(
        EDIT_PRO, {"prompt": "e", "image": "http://127.0.0.1:1/gone.png"}
    ).json()["data"]["id"]
    emulator.wait_for(first)
    emulator.wait_for(second)
    emulator.result(first)

    listed = emulator.predictions()
    detail = emulator.prediction(first)

    assert [item["id"] for item in listed] == [first, second]
    assert detail["model"] == f"wavespeed-ai/{T2I_MAX}"
    assert detail["input"] == body
    assert detail["input_key"] == input_key(f"wavespeed-ai/{T2I_MAX}", body)
    assert detail["status"] == "completed"
    assert detail["polls"] == emulator.stats()["polls"]["per_prediction"][first] > 1
    assert detail["code"] is None
    assert len(detail["outputs"]) == 1
    assert detail["created_at"] <= detail["started_at"] <= detail["completed_at"]
    assert detail["latency_seconds"] == pytest.approx(0.2)
    assert detail["webhook"] is None
    assert [item["id"] for item in emulator.predictions(model=EDIT_PRO)] == [second]
    assert [item["id"] for item in emulator.predictions(status="completed")] == [first]
    assert [item["id"] for item in emulator.predictions(status="failed")] == [second]


def test_unknown_prediction_detail_is_a_404(emulator: EmulatorHandle) -> None:
    response = requests.get(emulator.url("/_emulator/predictions/nope"), timeout=10)

    assert response.status_code == 404


def test_config_get_shows_the_current_config_without_the_key(emulator: EmulatorHandle) -> None:
    config = emulator.config()

    assert config == {
        "api_key_required": True,
        "seed": None,
        "latency": "fixed:0.2",
        "model_latency": {},
        "sync_timeout": 60.0,
        "rate_limit_per_minute": None,
        "max_concurrency": None,
        "image_scale": 1.0,
        "faults": {},
        "webhook_resign_retries": True,
        "balance_micros": 1_000_000_000,
        "fault_counts_remaining": {},
    }
    assert "test-key" not in requests.get(emulator.url("/_emulator/config"), timeout=10).text


def test_config_post_merges_partial_updates(emulator: EmulatorHandle) -> None:
    emulator.configure(
        latency="uniform:1:2",
        model_latency={"flux-kontext-pro": "fixed:5"},
        faults={"submit_503": {"probability": 0.25, "models": ["flux-kontext-pro"]}},
    )
    emulator.configure(
        model_latency={f"wavespeed-ai/{T2I_MAX}": 3},
        faults={"submit_503": {"count": 2}, "result_429": {"retry_after": 4}},
        rate_limit_per_minute=100,
    )

    config = emulator.config()

    assert config["latency"] == "uniform:1:2"
    assert config["model_latency"] == {
        "wavespeed-ai/flux-kontext-pro": "fixed:5",
        f"wavespeed-ai/{T2I_MAX}": "fixed:3",
    }
    assert config["faults"]["submit_503"] == {
        "probability": 0.25,
        "count": 2,
        "models": ["wavespeed-ai/flux-kontext-pro"],
        "prompt_contains": None,
    }
    assert config["faults"]["result_429"]["retry_after"] == 4
    assert config["rate_limit_per_minute"] == 100
    assert config["fault_counts_remaining"] == {"submit_503": 2, "result_429": None}


def test_config_null_removes_entries(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_503": 1, "nsfw": {}}, model_latency={T2I_MAX: 1})

    emulator.configure(faults={"submit_503": None}, model_latency={T2I_MAX: None})
    assert list(emulator.config()["faults"]) == ["nsfw"]
    assert emulator.config()["model_latency"] == {}

    emulator.configure(faults=None, rate_limit_per_minute=None)
    assert emulator.config()["faults"] == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"faults": {"submit_504": {}}}, "unknown fault kind 'submit_504'"),
        (
            {"faults": {"submit_503": {"probability": 1.5}}},
            "submit_503.probability must be between",
        ),
        ({"faults": {"submit_503": {"delay": 1}}}, "fault submit_503 has no knob 'delay'"),
        ({"faults": {"submit_503": {"models": ["nope"]}}}, "unknown model 'nope'"),
        ({"faults": {"submit_503": {"count": -1}}}, "submit_503.count must be >= 0"),
        ({"faults": {"prediction_failed": {"code": "x"}}}, "prediction_failed.code must be"),
        ({"faults": ["submit_503"]}, "faults must be an object"),
        ({"latency": "gamma:1"}, "latency distribution must be fixed, uniform or lognormal"),
        ({"latency": "uniform:3:1"}, "needs MIN <= MAX"),
        ({"model_latency": {"nope": 1}}, "unknown model 'nope'"),
        ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
        ({"image_scale": True}, "image_scale must be a number"),
        ({"api_key": "new"}, "api_key is set at startup"),
        ({"colour": "blue"}, "unknown config key 'colour'"),
    ],
)
def test_invalid_config_is_a_400_and_changes_nothing(
    emulator: EmulatorHandle, changes: dict[str, object], message: str
) -> None:
    before = emulator.config()

    with pytest.raises(ValueError, match=re.escape(message)):
        emulator.configure(**changes)

    assert emulator.config() == before


def test_config_post_with_bad_json_is_a_400(emulator: EmulatorHandle) -> None:
    response = requests.post(emulator.url("/_emulator/config"), data=b"{", timeout=10)

    assert response.status_code == 400
    assert "invalid JSON" in response.json()["error"]


def test_reset_clears_predictions_stats_media_and_config() -> None:
    with running_emulator(latency="fixed:0.1", rate_limit_per_minute=50) as emulator:
        prediction_id = emulator.submit(T2I_MAX, {"prompt": "before"}).json()["data"]["id"]
        output = emulator.wait_for(prediction_id)["outputs"][0]
        emulator.configure(latency="fixed:3", faults={"nsfw": {}}, max_concurrency=2)

        emulator.reset()

        assert emulator.predictions() == []
        stats = emulator.stats()
        assert stats["submissions"]["total"] == 0
        assert stats["polls"]["per_prediction"] == {}
        config = emulator.config()
        assert config["latency"] == "fixed:0.1"
        assert config["rate_limit_per_minute"] == 50
        assert config["faults"] == {}
        assert config["max_concurrency"] is None
        old = requests.get(
            emulator.url(f"/api/v3/predictions/{prediction_id}/result"),
            headers=emulator.auth_headers,
            timeout=10,
        )
        assert old.status_code == 404
        assert requests.get(output, timeout=10).status_code == 404
        # And it still works afterwards.
        again = emulator.submit(T2I_MAX, {"prompt": "after"}).json()["data"]["id"]
        assert emulator.wait_for(again)["status"] == "completed"


def test_reset_cancels_running_predictions_and_releases_sync_waiters(
    emulator: EmulatorHandle,
) -> None:
    emulator.configure(latency="fixed:5", max_concurrency=1)
    emulator.submit(T2I_MAX, {"prompt": "running"})
    emulator.submit(T2I_MAX, {"prompt": "queued"})

    emulator.reset()

    stats = emulator.stats()
    assert stats["concurrency"] == {"processing": 0, "peak": 0, "queued": 0, "peak_queued": 0}
    fresh = emulator.submit(T2I_MAX, {"prompt": "fresh"}).json()["data"]["id"]
    assert emulator.wait_for(fresh)["status"] == "completed"


def test_health(emulator: EmulatorHandle) -> None:
    response = requests.get(emulator.url("/_emulator/health"), timeout=10)

    assert response.json() == {"status": "ok"}
