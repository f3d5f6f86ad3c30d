"""The WaveSpeed v3 endpoints and their envelope, over real HTTP."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
import requests

from tests.emulator.conftest import (
    ALL_MODELS,
    EDIT_PRO,
    T2I_MAX,
    data_uri,
    fetch_image,
    minimal_body,
    png_bytes,
)
from tests.support.emulator import EmulatorHandle

DATA_KEYS = {
    "id",
    "model",
    "outputs",
    "urls",
    "has_nsfw_contents",
    "status",
    "created_at",
    "error",
    "timings",
}


@pytest.mark.parametrize("model", ALL_MODELS)
def test_submit_answers_the_created_envelope_for_every_model(
    emulator: EmulatorHandle, model: str
) -> None:
    response = emulator.submit(model, minimal_body(model, data_uri(png_bytes())))

    assert response.status_code == 200
    envelope = response.json()
    assert envelope["code"] == 200
    assert envelope["message"] == "success"
    data = envelope["data"]
    assert set(data) == DATA_KEYS
    assert data["model"] == f"wavespeed-ai/{model}"
    assert data["outputs"] == []
    assert data["has_nsfw_contents"] == []
    assert data["status"] == "created"
    assert data["error"] == ""
    assert data["timings"] == {"inference": 0}
    assert re.fullmatch(r"[0-9a-f]{32}", data["id"])
    assert data["urls"]["get"] == f"{emulator.base_url}/api/v3/predictions/{data['id']}/result"
    assert data["created_at"].endswith("Z")
    datetime.fromisoformat(data["created_at"])  # RFC3339


def test_result_is_served_at_both_result_urls(emulator: EmulatorHandle) -> None:
    prediction_id = emulator.submit(T2I_MAX, {"prompt": "a boat"}).json()["data"]["id"]
    completed = emulator.wait_for(prediction_id)

    for path in (
        f"/api/v3/predictions/{prediction_id}/result",
        f"/api/v3/predictions/{prediction_id}",
    ):
        response = requests.get(emulator.url(path), headers=emulator.auth_headers, timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"code": 200, "message": "success", "data": completed}


def test_unknown_model_is_a_404_envelope(emulator: EmulatorHandle) -> None:
    response = emulator.submit("flux-kontext-ultra", {"prompt": "x"})

    assert response.status_code == 404
    assert response.json() == {
        "code": 404,
        "message": "Model wavespeed-ai/flux-kontext-ultra not found",
        "data": None,
    }


def test_unknown_prediction_is_a_404_envelope(emulator: EmulatorHandle) -> None:
    response = requests.get(
        emulator.url("/api/v3/predictions/deadbeef/result"),
        headers=emulator.auth_headers,
        timeout=10,
    )

    assert response.status_code == 404
    assert response.json()["code"] == 404
    assert "deadbeef" in response.json()["message"]


def test_unknown_route_and_wrong_method_answer_the_envelope(emulator: EmulatorHandle) -> None:
    missing = requests.get(emulator.url("/api/v2/anything"), timeout=10)
    wrong_method = requests.delete(
        emulator.url("/api/v3/predictions/x/result"), headers=emulator.auth_headers, timeout=10
    )

    assert missing.status_code == 404
    assert missing.json()["code"] == 404
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"code": 405, "message": "Method Not Allowed", "data": None}


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(emulator: EmulatorHandle, body: bytes) -> None:
    response = requests.post(
        emulator.url(f"/api/v3/wavespeed-ai/{T2I_MAX}"),
        data=body,
        headers=emulator.auth_headers,
        timeout=10,
    )

    assert response.status_code == 400
    assert response.json()["message"] == "Request body must be a JSON object"


def test_generated_media_is_public_png(emulator: EmulatorHandle) -> None:
    prediction_id = emulator.submit(T2I_MAX, {"prompt": "a kite"}).json()["data"]["id"]
    output = emulator.wait_for(prediction_id)["outputs"][0]

    assert output.startswith(f"{emulator.base_url}/media/")
    response = requests.get(output, timeout=10)  # no Authorization header
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    head = requests.head(output, timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(response.content)
    assert requests.get(emulator.url("/media/0123.png"), timeout=10).status_code == 404


def test_a_public_url_is_the_base_of_every_url_handed_out(emulator: EmulatorHandle) -> None:
    """In compose the worker reaches the emulator as http://emulator:8765, which the host
    cannot resolve: with a public URL the outputs open from the host too (issue #12)."""
    public = emulator.base_url.replace("127.0.0.1", "localhost")
    emulator.configure(public_url=public + "/")
    data = emulator.submit(T2I_MAX, {"prompt": "a public kite"}).json()["data"]
    assert data["urls"]["get"].startswith(f"{public}/api/v3/predictions/")
    output = emulator.wait_for(data["id"])["outputs"][0]
    assert output.startswith(f"{public}/media/")
    assert requests.get(output, timeout=10).status_code == 200
    assert emulator.config()["public_url"] == public
    with pytest.raises(ValueError, match="public_url"):
        emulator.configure(public_url="emulator:8765")


def test_binary_upload_stores_the_file_and_returns_its_download_url(
    emulator: EmulatorHandle,
) -> None:
    image = png_bytes((40, 30))
    response = requests.post(
        emulator.url("/api/v3/media/upload/binary"),
        headers=emulator.auth_headers,
        files={"file": ("input.png", image, "image/png")},
        timeout=10,
    )

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["type"] == "image"
    assert data["filename"] == "input.png"
    assert data["size"] == len(image)
    assert data["download_url"].startswith(f"{emulator.base_url}/media/")
    assert requests.get(data["download_url"], timeout=10).content == image
    assert emulator.stats()["uploads"] == 1


def test_binary_upload_without_a_file_field_is_a_400(emulator: EmulatorHandle) -> None:
    response = requests.post(
        emulator.url("/api/v3/media/upload/binary"),
        headers=emulator.auth_headers,
        files={"other": ("x.png", b"x")},
        timeout=10,
    )

    assert response.status_code == 400
    assert "file" in response.json()["message"]


def test_upload_ticket_then_put_is_the_sdk_upload_flow(emulator: EmulatorHandle) -> None:
    image = png_bytes((20, 20))
    ticket = requests.post(
        emulator.url("/api/v3/media/uploads"),
        headers=emulator.auth_headers,
        json={"filename": "photo.png", "size": len(image), "content_type": "image/png"},
        timeout=10,
    )
    assert ticket.status_code == 200
    data = ticket.json()["data"]
    assert data["upload"]["method"] == "PUT"
    assert requests.get(data["download_url"], timeout=10).status_code == 404  # not there yet

    put = requests.put(
        data["upload"]["url"], data=image, headers=data["upload"]["headers"], timeout=10
    )
    assert put.status_code == 200
    fetched = requests.get(data["download_url"], timeout=10)
    assert fetched.content == image
    assert fetched.headers["Content-Type"] == "image/png"
    # A ticket is single-use.
    again = requests.put(data["upload"]["url"], data=image, timeout=10)
    assert again.status_code == 404


def test_upload_ticket_needs_a_filename(emulator: EmulatorHandle) -> None:
    response = requests.post(
        emulator.url("/api/v3/media/uploads"), headers=emulator.auth_headers, json={}, timeout=10
    )

    assert response.status_code == 400
    assert response.json()["message"] == "filename is required"


def test_webhook_secret_is_served_in_the_envelope(emulator: EmulatorHandle) -> None:
    response = requests.get(
        emulator.url("/api/v3/webhook/secret"), headers=emulator.auth_headers, timeout=10
    )

    assert response.status_code == 200
    secret = response.json()["data"]["secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > len("whsec_") + 16


def test_an_edit_accepts_an_uploaded_image(emulator: EmulatorHandle) -> None:
    uploaded = requests.post(
        emulator.url("/api/v3/media/upload/binary"),
        headers=emulator.auth_headers,
        files={"file": ("in.png", png_bytes((50, 70)), "image/png")},
        timeout=10,
    ).json()["data"]["download_url"]

    prediction_id = emulator.submit(EDIT_PRO, {"prompt": "add a hat", "image": uploaded}).json()[
        "data"
    ]["id"]
    data = emulator.wait_for(prediction_id)

    assert data["status"] == "completed"
    assert fetch_image(data["outputs"][0]).size == (50, 70)
