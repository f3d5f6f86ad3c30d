"""``Authorization: Bearer <key>``: who may call what, and what a refusal says."""

from __future__ import annotations

import pytest
import requests

from tests.emulator.conftest import T2I_MAX, png_bytes
from tests.support.emulator import EmulatorHandle, running_emulator

SUBMIT = f"/api/v3/wavespeed-ai/{T2I_MAX}"
MISSING_MESSAGE = "Missing API key: send the header 'Authorization: Bearer <your API key>'"


def _post_submit(emulator: EmulatorHandle, headers: dict[str, str]) -> requests.Response:
    return requests.post(emulator.url(SUBMIT), json={"prompt": "x"}, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Bearer "}, {"Authorization": "Basic dGVzdA=="}],
    ids=["no-header", "empty", "bearer-without-key", "basic-scheme"],
)
def test_missing_key_is_a_401_envelope(emulator: EmulatorHandle, headers: dict[str, str]) -> None:
    response = _post_submit(emulator, headers)

    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": MISSING_MESSAGE, "data": None}


def test_wrong_key_is_a_401_that_does_not_echo_the_key(emulator: EmulatorHandle) -> None:
    response = _post_submit(emulator, {"Authorization": "Bearer sk-wrong-secret-value"})

    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": "Invalid API key", "data": None}
    assert "sk-wrong-secret-value" not in response.text
    assert "test-key" not in response.text
    assert emulator.stats()["auth_failures"] == 1
    assert emulator.stats()["submissions"]["total"] == 0


def test_bearer_scheme_is_case_insensitive(emulator: EmulatorHandle) -> None:
    response = _post_submit(emulator, {"Authorization": "bearer test-key"})

    assert response.status_code == 200


def test_every_api_endpoint_requires_the_key(emulator: EmulatorHandle) -> None:
    prediction_id = emulator.submit(T2I_MAX, {"prompt": "x"}).json()["data"]["id"]
    session = requests.Session()
    session.headers["Authorization"] = "Bearer nope"
    calls = [
        session.get(emulator.url(f"/api/v3/predictions/{prediction_id}/result"), timeout=10),
        session.get(emulator.url(f"/api/v3/predictions/{prediction_id}"), timeout=10),
        session.get(emulator.url("/api/v3/webhook/secret"), timeout=10),
        session.post(
            emulator.url("/api/v3/media/upload/binary"),
            files={"file": ("a.png", png_bytes())},
            timeout=10,
        ),
        session.post(emulator.url("/api/v3/media/uploads"), json={"filename": "a"}, timeout=10),
    ]

    assert [call.status_code for call in calls] == [401] * len(calls)
    assert emulator.prediction(prediction_id)["polls"] == 0  # refused polls are not polls


def test_media_and_introspection_need_no_key(emulator: EmulatorHandle) -> None:
    prediction_id = emulator.submit(T2I_MAX, {"prompt": "x"}).json()["data"]["id"]
    output = emulator.wait_for(prediction_id)["outputs"][0]

    assert requests.get(output, timeout=10).status_code == 200
    for path in ("/_emulator/stats", "/_emulator/predictions", "/_emulator/config"):
        assert requests.get(emulator.url(path), timeout=10).status_code == 200


def test_without_a_configured_key_any_non_empty_key_is_accepted() -> None:
    with running_emulator(api_key=None) as emulator:
        first = _post_submit(emulator, {"Authorization": "Bearer one-key"})
        second = _post_submit(emulator, {"Authorization": "Bearer another-key"})
        missing = _post_submit(emulator, {})

        assert (first.status_code, second.status_code, missing.status_code) == (200, 200, 401)
        assert emulator.config()["api_key_required"] is False
