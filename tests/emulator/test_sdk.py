"""The official ``wavespeed`` SDK (2.x) against the emulator: run, sync mode, upload."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import wavespeed

from tests.emulator.conftest import EDIT_PRO, T2I_MAX, fetch_image, png_bytes
from tests.support.emulator import EmulatorHandle

MODEL = f"wavespeed-ai/{T2I_MAX}"


@pytest.fixture
def client(emulator: EmulatorHandle) -> wavespeed.Client:
    return wavespeed.Client(api_key=emulator.api_key, base_url=emulator.base_url)


def test_run_submits_polls_and_returns_the_outputs(
    emulator: EmulatorHandle, client: wavespeed.Client
) -> None:
    output = client.run(MODEL, {"prompt": "an SDK cat", "aspect_ratio": "9:16"}, poll_interval=0.05)

    [url] = output["outputs"]
    assert fetch_image(url).size == (752, 1392)
    [prediction] = emulator.predictions()
    assert prediction["input"] == {"prompt": "an SDK cat", "aspect_ratio": "9:16"}
    assert prediction["polls"] >= 1


def test_run_in_sync_mode_is_one_request(
    emulator: EmulatorHandle, client: wavespeed.Client
) -> None:
    output = client.run(MODEL, {"prompt": "a sync cat"}, enable_sync_mode=True)

    assert len(output["outputs"]) == 1
    [prediction] = emulator.predictions()
    assert prediction["input"]["enable_sync_mode"] is True
    assert prediction["polls"] == 0


def test_run_no_throw_reports_a_sync_timeout_as_processing(
    emulator: EmulatorHandle, client: wavespeed.Client
) -> None:
    emulator.configure(latency="fixed:1", sync_timeout=0.2)

    result = client.run_no_throw(MODEL, {"prompt": "too slow"}, enable_sync_mode=True)

    assert result["status"] == "processing"
    assert result["outputs"] is None
    [prediction] = emulator.predictions()
    assert result["task_id"] == prediction["id"]
    assert "Sync mode timed out" in result["error"]
    # The SDK's own recovery path: fetch the task later by id.
    assert emulator.wait_for(prediction["id"])["status"] == "completed"
    assert client.get_result(prediction["id"])["data"]["status"] == "completed"


def test_run_raises_on_a_failed_prediction(
    emulator: EmulatorHandle, client: wavespeed.Client
) -> None:
    emulator.configure(faults={"prediction_failed": {"code": 1200, "message": "Moderated"}})

    with pytest.raises(RuntimeError, match="Moderated"):
        client.run(MODEL, {"prompt": "bad"}, poll_interval=0.05)


def test_upload_returns_a_url_an_edit_can_use(
    emulator: EmulatorHandle, client: wavespeed.Client, tmp_path: Path
) -> None:
    path = tmp_path / "input.png"
    path.write_bytes(png_bytes((72, 40)))

    url = client.upload(str(path))

    assert requests.get(url, timeout=10).content == path.read_bytes()
    output = client.run(
        f"wavespeed-ai/{EDIT_PRO}", {"prompt": "add stars", "image": url}, poll_interval=0.05
    )
    assert fetch_image(output["outputs"][0]).size == (72, 40)
