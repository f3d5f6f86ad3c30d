"""WaveSpeed's v3 signature check and the per-job callback URL's MAC."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from worker.webhooks.signature import SignatureError, Verifier, sign, signing_key
from worker.webhooks.urls import callback_url, job_mac, mac_matches

#: Shaped like WaveSpeed's documented secret: base64 characters, '+', '/' and '='.
SECRET = "whsec_dGhpcyBpcyBub3QgYmFzZTY0+/ZGVjb2RlZA=="
NOW = 1_800_000_000.0
BODY = b'{"id":"p1","status":"completed"}'


def _headers(
    *, webhook_id: str = "msg_1", stamp: int = int(NOW), secret: str = SECRET
) -> dict[str, str]:
    signed = f"{webhook_id}.{stamp}.".encode() + BODY
    digest = hmac.new(secret.removeprefix("whsec_").encode(), signed, hashlib.sha256)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": "v3," + digest.hexdigest(),
    }


def _verifier() -> Verifier:
    return Verifier(signing_key(SECRET), clock=lambda: NOW)


def test_a_genuine_delivery_verifies_and_names_its_id() -> None:
    assert _verifier().verify(_headers(), BODY) == "msg_1"


def test_the_secret_is_used_as_text_after_its_prefix_never_decoded() -> None:
    assert signing_key(SECRET) == SECRET[len("whsec_") :].encode()
    decoded = base64.b64decode(SECRET.removeprefix("whsec_"))
    wrong = Verifier(decoded, clock=lambda: NOW)
    with pytest.raises(SignatureError):
        wrong.verify(_headers(), BODY)


@pytest.mark.parametrize("offset", [-300, 300])
def test_five_minutes_either_way_is_still_fresh(offset: int) -> None:
    assert _verifier().verify(_headers(stamp=int(NOW) + offset), BODY) == "msg_1"


@pytest.mark.parametrize("offset", [-301, 301, -86400])
def test_older_or_later_than_five_minutes_is_stale(offset: int) -> None:
    with pytest.raises(SignatureError) as refused:
        _verifier().verify(_headers(stamp=int(NOW) + offset), BODY)
    assert refused.value.reason == "stale"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    with pytest.raises(SignatureError) as refused:
        _verifier().verify(headers, BODY)
    assert refused.value.reason == "missing_headers"


def test_a_body_a_secret_or_an_id_that_differs_is_a_bad_signature() -> None:
    cases = [
        (_headers(), BODY + b" "),
        (_headers(secret="whsec_other"), BODY),
        ({**_headers(), "webhook-id": "msg_2"}, BODY),
        ({**_headers(), "webhook-signature": _headers()["webhook-signature"][3:]}, BODY),
        ({**_headers(), "webhook-signature": "v1," + "0" * 64}, BODY),
    ]
    for headers, body in cases:
        with pytest.raises(SignatureError) as refused:
            _verifier().verify(headers, body)
        assert refused.value.reason == "bad_signature"


def test_a_timestamp_that_is_not_a_number_is_refused() -> None:
    headers = {**_headers(), "webhook-timestamp": "yesterday"}
    with pytest.raises(SignatureError) as refused:
        _verifier().verify(headers, BODY)
    assert refused.value.reason == "bad_timestamp"


def test_one_matching_signature_among_several_is_enough() -> None:
    good = _headers()["webhook-signature"]
    headers = {
        **_headers(),
        "webhook-signature": f"v3,{'a' * 64} {good.upper().replace('V3', 'v3')}",
    }
    assert _verifier().verify(headers, BODY) == "msg_1"


def test_sign_is_what_the_sender_puts_after_v3() -> None:
    expected = _headers()["webhook-signature"].removeprefix("v3,")
    assert sign(signing_key(SECRET), "msg_1", str(int(NOW)), BODY) == expected


def test_a_callback_url_names_its_job_and_carries_its_mac() -> None:
    key = b"local key"
    url = callback_url("https://hooks.example.com/base/", key, "job-1")
    assert url == f"https://hooks.example.com/base/wavespeed/job-1/{job_mac(key, 'job-1')}"
    mac = url.rsplit("/", 1)[1]
    assert len(mac) == 32
    assert mac_matches(key, "job-1", mac)
    assert not mac_matches(key, "job-2", mac)
    assert not mac_matches(b"another key", "job-1", mac)


def test_a_job_id_that_cannot_sit_in_a_path_is_refused() -> None:
    with pytest.raises(ValueError, match="job id"):
        callback_url("https://h.example", b"k", "../admin")
