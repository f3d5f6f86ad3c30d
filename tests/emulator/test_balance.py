"""The account balance: ``GET /api/v3/balance`` over real HTTP, debited per completed image
at the model's price, never for a failed prediction; set by the config, back on reset."""

from __future__ import annotations

import pytest
import requests

from tests.emulator.conftest import T2I_MAX, T2I_PRO
from tests.support.emulator import EmulatorHandle, running_emulator


def _balance(emulator: EmulatorHandle, path: str = "/api/v3/balance") -> float:
    response = requests.get(emulator.url(path), headers=emulator.auth_headers, timeout=10)
    assert response.status_code == 200
    envelope = response.json()
    assert envelope["code"] == 200 and envelope["data"]["currency"] == "USD"
    balance: float = envelope["data"]["balance"]
    return balance


def _finish(emulator: EmulatorHandle, model: str, body: dict[str, object]) -> str:
    prediction_id: str = emulator.submit(model, body).json()["data"]["id"]
    return str(emulator.wait_for(prediction_id)["status"])


def test_completed_images_are_debited_at_the_model_price(emulator: EmulatorHandle) -> None:
    assert _balance(emulator) == 1000.0
    assert _finish(emulator, T2I_PRO, {"prompt": "four", "num_images": 4}) == "completed"
    assert _finish(emulator, T2I_MAX, {"prompt": "one"}) == "completed"
    # 4 x $0.04 + $0.08 = $0.24, exactly, on both documented paths.
    assert _balance(emulator) == 999.76
    assert _balance(emulator, "/api/v3/account/balance") == 999.76
    billing = emulator.stats()["billing"]
    assert billing == {
        "balance_micros": 999_760_000,
        "billed_micros": 240_000,
        "billed_images": 5,
        "predictions_billed": 2,
    }


def test_a_failed_prediction_is_not_billed() -> None:
    with running_emulator(faults={"prediction_failed": {"code": 1403}}) as emulator:
        assert _finish(emulator, T2I_MAX, {"prompt": "fails"}) == "failed"
        assert _balance(emulator) == 1000.0
        assert emulator.stats()["billing"]["billed_micros"] == 0


def test_the_balance_is_set_by_the_config_and_reset_to_the_start() -> None:
    with running_emulator(balance="0.10") as emulator:
        assert _balance(emulator) == 0.1
        assert _finish(emulator, T2I_MAX, {"prompt": "one"}) == "completed"
        assert _balance(emulator) == 0.02
        emulator.configure(balance=25.5)  # a top-up
        assert _balance(emulator) == 25.5
        emulator.reset()
        assert _balance(emulator) == 0.1


def test_the_balance_needs_the_api_key(emulator: EmulatorHandle) -> None:
    response = requests.get(emulator.url("/api/v3/balance"), timeout=10)
    assert response.status_code == 401


@pytest.mark.parametrize("bad", ["ten", "0.0000001", True, None])
def test_a_bad_balance_is_refused(emulator: EmulatorHandle, bad: object) -> None:
    with pytest.raises(ValueError, match="balance"):
        emulator.configure(balance=bad)
