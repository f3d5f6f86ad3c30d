"""created -> processing -> completed | failed, real images, sync mode and webhooks."""

from __future__ import annotations

import hashlib
import hmac
import io
import time

import pytest
import requests
from PIL import Image

from emulator import webhooks as webhook_delivery
from tests.emulator.conftest import (
    EDIT_MAX,
    EDIT_PRO,
    MULTI_MAX,
    MULTI_PRO,
    T2I_MAX,
    T2I_PRO,
    FileServer,
    WebhookReceiver,
    data_uri,
    fetch_image,
    mean_abs_difference,
    png_bytes,
)
from tests.support.emulator import EmulatorHandle, running_emulator

#: The documented size table (README): FLUX.1 Kontext's ~1 MP resolutions.
ASPECT_RATIO_SIZES = {
    "21:9": (1568, 672),
    "16:9": (1392, 752),
    "4:3": (1184, 880),
    "3:2": (1248, 832),
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:4": (880, 1184),
    "9:16": (752, 1392),
    "9:21": (672, 1568),
}


def _statuses_until_terminal(emulator: EmulatorHandle, prediction_id: str) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = emulator.result(prediction_id)["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("completed", "failed"):
            break
        time.sleep(0.02)
    return seen


def test_prediction_goes_created_processing_completed(emulator: EmulatorHandle) -> None:
    emulator.configure(latency="fixed:0.5")
    submitted = emulator.submit(T2I_MAX, {"prompt": "a lighthouse", "seed": 3}).json()["data"]

    seen = _statuses_until_terminal(emulator, submitted["id"])
    data = emulator.result(submitted["id"])

    assert submitted["status"] == "created"
    assert seen == ["processing", "completed"]
    assert data["timings"]["inference"] == 500
    assert data["has_nsfw_contents"] == [False]
    assert data["error"] == ""
    assert "code" not in data
    assert fetch_image(data["outputs"][0]).size == (1024, 1024)
    recorded = emulator.prediction(submitted["id"])
    assert recorded["started_at"] is not None
    assert recorded["completed_at"] > recorded["started_at"] >= recorded["created_at"]


def test_latency_comes_from_the_configured_distribution(emulator: EmulatorHandle) -> None:
    emulator.configure(latency="uniform:0.1:0.3", model_latency={T2I_PRO: "fixed:0.05"})
    uniform_ids = [
        emulator.submit(T2I_MAX, {"prompt": f"u{i}"}).json()["data"]["id"] for i in range(4)
    ]
    fixed_id = emulator.submit(T2I_PRO, {"prompt": "f"}).json()["data"]["id"]

    uniform = [emulator.wait_for(pid)["timings"]["inference"] for pid in uniform_ids]
    assert all(100 <= ms <= 300 for ms in uniform)
    assert emulator.wait_for(fixed_id)["timings"]["inference"] == 50


def test_seeded_lognormal_latency_is_reproducible() -> None:
    def latencies() -> list[float]:
        with running_emulator(latency="lognormal:0.1:0.5", seed=11) as emulator:
            ids = [
                emulator.submit(T2I_MAX, {"prompt": f"p{i}"}).json()["data"]["id"] for i in range(3)
            ]
            return [emulator.prediction(pid)["latency_seconds"] for pid in ids]

    first, second = latencies(), latencies()

    assert first == second
    assert len(set(first)) == 3


@pytest.mark.parametrize(("aspect_ratio", "size"), ASPECT_RATIO_SIZES.items())
def test_text_to_image_size_follows_the_aspect_ratio(
    emulator: EmulatorHandle, aspect_ratio: str, size: tuple[int, int]
) -> None:
    emulator.configure(latency=0)  # only the picture matters here
    body = {"prompt": "a field", "aspect_ratio": aspect_ratio, "enable_sync_mode": True}

    data = emulator.submit(T2I_MAX, body).json()["data"]

    assert fetch_image(data["outputs"][0]).size == size
    assert size[0] % 16 == 0 and size[1] % 16 == 0


def test_image_scale_shrinks_outputs_keeping_multiples_of_16() -> None:
    with running_emulator(image_scale=0.25) as emulator:
        body = {"prompt": "small", "aspect_ratio": "16:9", "enable_sync_mode": True}
        data = emulator.submit(T2I_MAX, body).json()["data"]

        assert fetch_image(data["outputs"][0]).size == (352, 192)


def test_same_prompt_and_seed_give_the_same_picture(emulator: EmulatorHandle) -> None:
    emulator.configure(latency=0)  # only the picture matters here

    def render(prompt: str, seed: int) -> bytes:
        body = {"prompt": prompt, "seed": seed, "enable_sync_mode": True}
        output = emulator.submit(T2I_MAX, body).json()["data"]["outputs"][0]
        return requests.get(output, timeout=10).content

    assert render("a red barn", 7) == render("a red barn", 7)
    assert render("a red barn", 7) != render("a red barn", 8)
    assert render("a red barn", 7) != render("a blue barn", 7)


def test_num_images_makes_that_many_distinct_outputs(emulator: EmulatorHandle) -> None:
    body = {"prompt": "tiles", "num_images": 3, "enable_sync_mode": True}

    data = emulator.submit(T2I_PRO, body).json()["data"]

    assert len(data["outputs"]) == 3
    assert data["has_nsfw_contents"] == [False, False, False]
    contents = {requests.get(url, timeout=10).content for url in data["outputs"]}
    assert len(contents) == 3


def test_a_chain_of_edits_changes_the_image_at_each_step_and_keeps_its_size(
    emulator: EmulatorHandle,
) -> None:
    first = emulator.submit(
        T2I_MAX, {"prompt": "a quiet street", "aspect_ratio": "3:2", "enable_sync_mode": True}
    ).json()["data"]
    current_url = first["outputs"][0]
    step_ids = []
    for model, instruction in ((EDIT_PRO, "make it night"), (EDIT_MAX, "add snow")):
        body = {"prompt": instruction, "image": current_url}
        step_id = emulator.submit(model, body).json()["data"]["id"]
        output_url = emulator.wait_for(step_id)["outputs"][0]

        before, after = fetch_image(current_url), fetch_image(output_url)
        assert after.size == before.size == (1248, 832)
        assert mean_abs_difference(before, after) > 10
        step_ids.append(step_id)
        current_url = output_url

    # Each edit counts itself in the PNG's text metadata, so its band lands below the last.
    with Image.open(io.BytesIO(requests.get(current_url, timeout=10).content)) as final:
        assert final.info["wavequeue-edits"] == "2"

    # What later tests assert from introspection: step N's input is step N-1's output.
    second_step = emulator.prediction(step_ids[1])
    first_step = emulator.prediction(step_ids[0])
    assert second_step["input"]["image"] == first_step["outputs"][0]
    assert first_step["input"]["image"] == first["outputs"][0]


def test_different_instructions_give_different_edits(emulator: EmulatorHandle) -> None:
    source = data_uri(png_bytes((96, 64), (128, 128, 128)))
    outputs = [
        emulator.submit(
            EDIT_PRO, {"prompt": prompt, "image": source, "enable_sync_mode": True}
        ).json()["data"]["outputs"][0]
        for prompt in ("make it warm", "make it cold")
    ]

    warm, cold = (fetch_image(url) for url in outputs)
    assert warm.size == cold.size == (96, 64)
    assert mean_abs_difference(warm, cold) > 5


def test_an_edit_fetches_an_image_from_any_http_url(
    emulator: EmulatorHandle, file_server: FileServer
) -> None:
    file_server.files["photo.png"] = png_bytes((80, 60), (10, 200, 10))

    body = {"prompt": "tint it", "image": f"{file_server.base_url}/photo.png"}
    data = emulator.submit(EDIT_MAX, body | {"enable_sync_mode": True}).json()["data"]

    assert data["status"] == "completed"
    assert fetch_image(data["outputs"][0]).size == (80, 60)


@pytest.mark.parametrize("model", [MULTI_PRO, MULTI_MAX])
def test_multi_combines_the_inputs_at_the_output_size(emulator: EmulatorHandle, model: str) -> None:
    red, blue = png_bytes((60, 40), (250, 0, 0)), png_bytes((30, 90), (0, 0, 250))
    images = [data_uri(red), data_uri(blue)]

    with_ratio = emulator.submit(
        model,
        {
            "prompt": "side by side",
            "images": images,
            "aspect_ratio": "16:9",
            "enable_sync_mode": True,
        },
    ).json()["data"]
    without_ratio = emulator.submit(
        model, {"prompt": "side by side", "images": images, "enable_sync_mode": True}
    ).json()["data"]

    combined = fetch_image(with_ratio["outputs"][0]).convert("RGB")
    assert combined.size == (1392, 752)
    # Left half comes from the red input, right half from the blue one (both tinted).
    left, right = combined.getpixel((200, 450)), combined.getpixel((1200, 450))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[0] > left[2] and right[2] > right[0]
    assert fetch_image(without_ratio["outputs"][0]).size == (60, 40)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("http://127.0.0.1:1/missing.png", "could not be fetched"),
        ("ftp://example.com/a.png", "is not an http(s) URL"),
        (data_uri(b"this is not an image"), "could not be decoded"),
        # http.client refuses these before connecting (InvalidURL): still a 1402, never a
        # 5000 "Internal error" that a client would take as worth a new prediction.
        ("http://127.0.0.1:1/a\nb.png", "could not be fetched"),
        ("http://127.0.0.1:1/a b\x1b[2J.png", "could not be fetched"),
    ],
    ids=["connection-refused", "bad-scheme", "not-an-image", "newline", "space-and-escape"],
)
def test_an_unusable_input_image_fails_the_prediction_with_1402(
    emulator: EmulatorHandle, image: str, reason: str
) -> None:
    response = emulator.submit(EDIT_PRO, {"prompt": "edit", "image": image})
    assert response.status_code == 200  # accepted: the fetch happens while processing

    data = emulator.wait_for(response.json()["data"]["id"])

    assert data["status"] == "failed"
    assert data["code"] == 1402
    assert reason in data["error"]
    assert data["outputs"] == []


def test_a_missing_image_on_an_http_host_fails_with_1402(
    emulator: EmulatorHandle, file_server: FileServer
) -> None:
    response = emulator.submit(
        EDIT_PRO, {"prompt": "x", "image": f"{file_server.base_url}/none.png"}
    )

    data = emulator.wait_for(response.json()["data"]["id"])

    assert (data["status"], data["code"]) == ("failed", 1402)
    assert "HTTP 404" in data["error"]


def test_failed_predictions_are_answered_with_http_200(emulator: EmulatorHandle) -> None:
    prediction_id = emulator.submit(
        EDIT_PRO, {"prompt": "x", "image": "http://127.0.0.1:1/x.png"}
    ).json()["data"]["id"]
    emulator.wait_for(prediction_id)

    response = requests.get(
        emulator.url(f"/api/v3/predictions/{prediction_id}/result"),
        headers=emulator.auth_headers,
        timeout=10,
    )

    assert response.status_code == 200
    assert response.json()["code"] == 200
    assert emulator.stats()["predictions"]["failed"] == 1


def test_sync_mode_holds_the_post_until_completed(emulator: EmulatorHandle) -> None:
    response = emulator.submit(T2I_MAX, {"prompt": "a moon", "enable_sync_mode": True})

    data = response.json()["data"]
    assert response.status_code == 200
    assert data["status"] == "completed"
    assert len(data["outputs"]) == 1
    assert data["timings"]["inference"] == 200


def test_sync_mode_past_the_limit_answers_processing_with_code_5004(
    emulator: EmulatorHandle,
) -> None:
    emulator.configure(latency="fixed:1.0", sync_timeout=0.2)

    response = emulator.submit(T2I_MAX, {"prompt": "slow", "enable_sync_mode": True})

    assert response.status_code == 200
    envelope = response.json()
    data = envelope["data"]
    assert envelope["code"] == 5004
    assert data["code"] == 5004
    assert data["status"] == "processing"
    assert data["error"].startswith("Sync mode timed out")
    assert envelope["message"] == data["error"]
    # The id is real: polling it leads to the completed prediction.
    assert emulator.wait_for(data["id"])["status"] == "completed"
    assert emulator.stats()["sync_timeouts"] == 1


def _expected_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    key = secret.removeprefix("whsec_").encode()
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v3," + hmac.new(key, signed, hashlib.sha256).hexdigest()


def _secret(emulator: EmulatorHandle) -> str:
    response = requests.get(
        emulator.url("/api/v3/webhook/secret"), headers=emulator.auth_headers, timeout=10
    )
    secret: str = response.json()["data"]["secret"]
    return secret


def test_webhook_query_parameter_gets_the_signed_completed_data(
    emulator: EmulatorHandle, webhook_receiver: WebhookReceiver
) -> None:
    prediction_id = emulator.submit(
        T2I_MAX, {"prompt": "a webhook"}, webhook=webhook_receiver.url
    ).json()["data"]["id"]

    delivery = webhook_receiver.next()

    assert delivery.json == emulator.result(prediction_id)
    assert delivery.json["status"] == "completed"
    assert delivery.headers["content-type"] == "application/json"
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 60
    expected = _expected_signature(_secret(emulator), delivery.headers, delivery.body)
    assert hmac.compare_digest(delivery.headers["webhook-signature"], expected)
    assert _wait_for_webhook_count(emulator, "delivered", 1)


def test_webhook_url_in_the_body_gets_the_failed_data(
    emulator: EmulatorHandle, webhook_receiver: WebhookReceiver
) -> None:
    body = {"prompt": "x", "image": "http://127.0.0.1:1/x.png", "webhook_url": webhook_receiver.url}
    prediction_id = emulator.submit(EDIT_PRO, body).json()["data"]["id"]

    delivery = webhook_receiver.next()

    assert delivery.json["id"] == prediction_id
    assert delivery.json["status"] == "failed"
    assert delivery.json["code"] == 1402
    expected = _expected_signature(_secret(emulator), delivery.headers, delivery.body)
    assert delivery.headers["webhook-signature"] == expected


def test_a_failing_webhook_receiver_gets_retries(
    emulator: EmulatorHandle, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_delivery, "RETRY_BACKOFF_SECONDS", 0.01)
    webhook_receiver.status = 500

    prediction_id = emulator.submit(
        T2I_MAX, {"prompt": "retry me"}, webhook=webhook_receiver.url
    ).json()["data"]["id"]
    attempts = [webhook_receiver.next() for _ in range(3)]

    assert len({attempt.headers["webhook-id"] for attempt in attempts}) == 1  # same event
    assert _wait_for_webhook_count(emulator, "failed", 1)
    deliveries = emulator.prediction(prediction_id)["webhook"]["deliveries"]
    assert [entry["status"] for entry in deliveries] == [500, 500, 500]


def _wait_for_webhook_count(emulator: EmulatorHandle, outcome: str, count: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if emulator.stats()["webhooks"][outcome] == count:
            return True
        time.sleep(0.02)
    return False
