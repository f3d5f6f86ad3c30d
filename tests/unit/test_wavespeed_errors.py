"""The error mapping and the parsing of ``worker.wavespeed``, on built values: failures
that ``test_wavespeed_client.py`` cannot stage over real HTTP, and envelopes."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import urllib3
from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    ClosedPoolError,
    DecodeError,
    EmptyPoolError,
    IncompleteRead,
    LocationParseError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from worker.errors import (
    PermanentError,
    RemoteTaskFailedError,
    SubmitOutcomeUnknownError,
    TransientError,
    WaveSpeedError,
)
from worker.wavespeed import RemoteStatus, failure_of, map_transport_error, parse_prediction


def _pool() -> urllib3.HTTPConnectionPool:
    return urllib3.HTTPConnectionPool("127.0.0.1", 1)


def _conn() -> HTTPConnection:
    return HTTPConnection("127.0.0.1", 1)


#: Failures the tests over real HTTP (test_wavespeed_client.py) do not stage, built here.
#: (exception, on submit, on a poll)
CASES: list[tuple[Exception, type[WaveSpeedError], type[WaveSpeedError]]] = [
    # Never sent: safe to retry, even a submit.
    (NameResolutionError("wavespeed.invalid", _conn(), socket.gaierror(-2, "unknown")),
     TransientError, TransientError),
    (NewConnectionError(_conn(), "Connection refused"), TransientError, TransientError),
    (ProxyError("Unable to connect to proxy", OSError("refused")),
     TransientError, TransientError),
    (ClosedPoolError(_pool(), "Pool is closed."), TransientError, TransientError),
    (EmptyPoolError(_pool(), "Pool is empty."), TransientError, TransientError),
    # A GET's failure comes wrapped by its redirect-only Retry: the reason is what counts.
    (MaxRetryError(_pool(), "/x", NewConnectionError(_conn(), "refused")),
     TransientError, TransientError),
    (MaxRetryError(_pool(), "/x", ReadTimeoutError(_pool(), "/x", "slow")),
     SubmitOutcomeUnknownError, TransientError),
    # Sent, and no readable answer.
    (ReadTimeoutError(_pool(), "/x", "slow"), SubmitOutcomeUnknownError, TransientError),
    (ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
     SubmitOutcomeUnknownError, TransientError),
    (IncompleteRead(10, 20), SubmitOutcomeUnknownError, TransientError),
    (DecodeError("bad gzip"), SubmitOutcomeUnknownError, TransientError),
    (json.JSONDecodeError("Expecting value", "{", 1), SubmitOutcomeUnknownError, TransientError),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
     SubmitOutcomeUnknownError, TransientError),
    # The request itself is wrong, or TLS failed: the same call fails again.
    (SSLError("certificate verify failed"), PermanentError, PermanentError),
    (LocationParseError("http://[::1"), PermanentError, PermanentError),
    (ValueError("Invalid header value"), PermanentError, PermanentError),
]  # fmt: skip


@pytest.mark.parametrize(("exc", "on_submit", "on_poll"), CASES, ids=lambda v: type(v).__name__)
def test_mapping(
    exc: Exception, on_submit: type[WaveSpeedError], on_poll: type[WaveSpeedError]
) -> None:
    assert type(map_transport_error(exc, during_submit=True)) is on_submit
    assert type(map_transport_error(exc, during_submit=False)) is on_poll


def _envelope(**data: Any) -> dict[str, Any]:
    return {"code": 200, "message": "success", "data": {"id": "p1", **data}}


def test_parse_completed() -> None:
    prediction = parse_prediction(
        _envelope(
            status="completed",
            outputs=["http://x/1.png"],
            has_nsfw_contents=[False],
            timings={"inference": 2500},
        )
    )
    assert prediction.status is RemoteStatus.COMPLETED
    assert prediction.outputs == ["http://x/1.png"]
    assert prediction.inference_ms == 2500


def test_unknown_status_is_an_error_not_an_endless_poll() -> None:
    with pytest.raises(PermanentError, match="unknown status"):
        parse_prediction(_envelope(status="thinking"))


def test_missing_data_is_an_error() -> None:
    with pytest.raises(PermanentError):
        parse_prediction({"code": 200, "message": "success"})


@pytest.mark.parametrize("status", ["cancelled", "timeout", "failed"])
def test_terminal_failures(status: str) -> None:
    prediction = parse_prediction(_envelope(status=status, error="nope", code=1403))
    assert isinstance(failure_of(prediction), RemoteTaskFailedError)


def test_remote_5xxx_is_transient() -> None:
    prediction = parse_prediction(_envelope(status="failed", error="internal", code=5000))
    failure = failure_of(prediction)
    assert isinstance(failure, TransientError)
    assert failure.code == 5000


def test_sync_timeout_is_still_running() -> None:
    prediction = parse_prediction(_envelope(status="processing", code=5004, error="Sync timeout"))
    assert prediction.status.is_running


def test_redaction_cuts_the_key_and_bearer_tokens() -> None:
    from worker.wavespeed import redact

    text = "bad key sk-abc; Authorization: Bearer sk-abc, also bearer other-token."
    cleaned = redact(text, "sk-abc")
    assert "sk-abc" not in cleaned and "other-token" not in cleaned
    assert cleaned.count("[redacted]") == 3


@pytest.mark.parametrize("prediction_id", ["../../media/upload", "abc\n1", "x" * 200, "a b"])
def test_a_prediction_id_that_cannot_be_a_url_segment_is_malformed(prediction_id: str) -> None:
    with pytest.raises(PermanentError) as refused:
        parse_prediction({"data": {"id": prediction_id, "status": "created"}})
    assert refused.value.code == "malformed"
    assert "\n" not in refused.value.message


def test_a_text_error_code_is_kept_only_when_it_is_a_plain_word() -> None:
    def code_of(code: object) -> object:
        data = {"id": "p1", "status": "failed", "code": code, "error": "boom"}
        return parse_prediction({"data": data}).error_code

    assert code_of("E_MEDIA.1") == "E_MEDIA.1"
    assert code_of(1402) == 1402
    assert code_of("jobs_failed|model=x") == "unreadable"  # would forge a counter label
    assert code_of("\x1b[2J") == "unreadable"
    assert code_of(True) is None
