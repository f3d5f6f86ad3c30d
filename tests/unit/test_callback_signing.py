"""Callback signatures: Standard Webhooks v1, checked against the spec's own example and
against tampering; the secret's format is checked without ever echoing it."""

from __future__ import annotations

import pytest

from worker.callback_signing import CallbackSignatureError, signature, signed_headers, verify
from worker.errors import ConfigError
from worker.settings import Settings, callback_key

# The Standard Webhooks specification's test vector (its README and reference libraries).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_the_standard_webhooks_one() -> None:
    key = Settings(callback_secret=SPEC_SECRET).require_callback_secret()
    assert signature(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_verify_accepts_what_was_signed_and_nothing_else() -> None:
    key = Settings(callback_secret=SPEC_SECRET).require_callback_secret()
    headers = signed_headers(key, "job_1", b'{"a":1}', now=1_000_000.0)
    verify(SPEC_SECRET, headers, b'{"a":1}', now=1_000_010.0)
    for body, now, changed in [
        (b'{"a":2}', 1_000_010.0, {}),  # altered body
        (b'{"a":1}', 1_000_400.0, {}),  # stale
        (b'{"a":1}', 1_000_010.0, {"webhook-id": "job_2"}),  # another message's signature
        (b'{"a":1}', 1_000_010.0, {"webhook-signature": "v1,AAAA"}),
        (b'{"a":1}', 1_000_010.0, {"webhook-timestamp": "x"}),
    ]:
        with pytest.raises(CallbackSignatureError):
            verify(SPEC_SECRET, {**headers, **changed}, body, now=now)
    other = "whsec_" + "QUFB" * 8
    with pytest.raises(CallbackSignatureError):
        verify(other, headers, b'{"a":1}', now=1_000_010.0)
    # Several signatures (a key rotation): any one will do.
    rotated = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    verify(SPEC_SECRET, rotated, b'{"a":1}', now=1_000_010.0)


@pytest.mark.parametrize(
    "bad", ["plainpassword-value", "whsec_not*base64!", "whsec_" + "QUFB" * 2, "whsec_"]
)
def test_a_bad_secret_is_refused_without_being_echoed(bad: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"WAVEQUEUE_CALLBACK_SECRET": bad})
    assert "WAVEQUEUE_CALLBACK_SECRET" in str(raised.value)
    if bad != "whsec_":
        assert bad not in str(raised.value)


def test_without_a_secret_callbacks_cannot_be_signed() -> None:
    assert Settings.from_env({"WAVEQUEUE_CALLBACK_SECRET": ""}).callback_secret is None
    with pytest.raises(ConfigError, match="WAVEQUEUE_CALLBACK_SECRET is not set"):
        Settings().require_callback_secret()
    assert SPEC_SECRET not in repr(Settings(callback_secret=SPEC_SECRET))
    assert len(callback_key(Settings(callback_secret=SPEC_SECRET).callback_secret)) == 24  # type: ignore[arg-type]


def test_the_retry_window_must_fit_in_the_record_ttl() -> None:
    settings = Settings(api_key="k", record_ttl=3600, callback_retry_for=7200)
    with pytest.raises(ConfigError, match="WAVEQUEUE_CALLBACK_RETRY_FOR"):
        settings.check_for_worker()
