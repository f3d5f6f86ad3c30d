"""What the emulator records about the submit faults it served: per input, and on the
prediction a faulted request created (with whether its answer reached the client).

The chaos suite relies on this to tell a justified second submission (the first
answer never arrived) from a blind one.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
import requests

from tests.emulator.conftest import T2I_MAX
from tests.support.emulator import EmulatorHandle, input_key


def _faults_of(emulator: EmulatorHandle, prompt: str) -> dict[str, int]:
    per_input = emulator.stats()["submissions"]["faults_per_input"]
    key = input_key(f"wavespeed-ai/{T2I_MAX}", {"prompt": prompt})
    faults: dict[str, int] = per_input.get(key, {})
    return faults


def _wait_for_a_prediction(emulator: EmulatorHandle) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while not (created := emulator.predictions()):
        assert time.monotonic() < deadline, "the slow submit never created its prediction"
        time.sleep(0.05)
    return created


def test_a_clean_submit_records_no_fault_and_a_delivered_answer(
    emulator: EmulatorHandle,
) -> None:
    response = emulator.submit(T2I_MAX, {"prompt": "clean"})

    prediction = emulator.prediction(response.json()["data"]["id"])
    assert prediction["submit_faults"] == []
    assert prediction["submit_answer"] == "delivered"
    assert _faults_of(emulator, "clean") == {}


@pytest.mark.parametrize(
    "kind",
    ["submit_503", "submit_429", "submit_401", "submit_drop_before_create", "submit_echo_auth"],
)
def test_faults_that_create_nothing_are_counted_per_input(
    emulator: EmulatorHandle, kind: str
) -> None:
    emulator.configure(faults={kind: {"count": 1}})

    with contextlib.suppress(requests.ConnectionError):  # the drop fault closes the connection
        emulator.submit(T2I_MAX, {"prompt": "refused"})
    emulator.submit(T2I_MAX, {"prompt": "refused"})

    assert _faults_of(emulator, "refused") == {kind: 1}
    (prediction,) = emulator.predictions()
    assert prediction["submit_faults"] == []


def test_drop_after_create_is_recorded_on_the_prediction(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_drop_after_create": {"count": 1}})

    with pytest.raises(requests.ConnectionError):
        emulator.submit(T2I_MAX, {"prompt": "lost answer"})

    (prediction,) = emulator.predictions()
    assert prediction["submit_faults"] == ["submit_drop_after_create"]
    assert prediction["submit_answer"] == "submit_drop_after_create"
    assert _faults_of(emulator, "lost answer") == {"submit_drop_after_create": 1}


def test_malformed_answer_is_recorded_on_the_prediction(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_malformed": {"count": 1}})

    emulator.submit(T2I_MAX, {"prompt": "garbled"})

    (prediction,) = emulator.predictions()
    assert prediction["submit_answer"] == "submit_malformed"


def test_a_client_that_left_during_a_slow_submit_is_recorded(emulator: EmulatorHandle) -> None:
    """The prediction is created after the delay even though nobody is listening."""
    emulator.configure(faults={"submit_slow": {"delay": 1.0, "count": 1}})

    with pytest.raises(requests.ReadTimeout):
        requests.post(
            emulator.url(f"/api/v3/wavespeed-ai/{T2I_MAX}"),
            json={"prompt": "impatient"},
            headers=emulator.auth_headers,
            timeout=(5, 0.3),
        )

    created = _wait_for_a_prediction(emulator)
    assert created[0]["submit_faults"] == ["submit_slow"]
    assert created[0]["submit_answer"] == "client_left"
