"""Every requests exception maps into the error tree; submit never calls "maybe sent" transient."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import requests
import urllib3.exceptions

from worker.errors import (
    PermanentError,
    RemoteTaskFailedError,
    SubmitOutcomeUnknownError,
    TransientError,
    WaveSpeedError,
)
from worker.wavespeed import RemoteStatus, failure_of, map_transport_error, parse_prediction

REQUEST_EXCEPTIONS = sorted(
    (
        cls
        for _, cls in inspect.getmembers(requests.exceptions, inspect.isclass)
        if issubclass(cls, requests.RequestException)
    ),
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("exc_class", REQUEST_EXCEPTIONS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("during_submit", [True, False])
def test_every_requests_exception_maps_somewhere(
    exc_class: type[requests.RequestException], during_submit: bool
) -> None:
    is_json = issubclass(exc_class, requests.exceptions.JSONDecodeError)
    exc = exc_class("bad json", "{", 0) if is_json else exc_class("boom")
    mapped = map_transport_error(exc, during_submit=during_submit)
    assert isinstance(mapped, WaveSpeedError)
    if not during_submit:
        assert not isinstance(mapped, SubmitOutcomeUnknownError)


def test_there_are_many_request_exceptions() -> None:
    assert len(REQUEST_EXCEPTIONS) > 15


def _refused() -> requests.ConnectionError:
    pool_error = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/x", pool_error))  # type: ignore[arg-type]


SUBMIT_CASES: list[tuple[requests.RequestException, type[WaveSpeedError]]] = [
    (_refused(), TransientError),
    (requests.ConnectTimeout("connect timed out"), TransientError),
    (requests.ReadTimeout("read timed out"), SubmitOutcomeUnknownError),
    (requests.ConnectionError("Connection aborted: RemoteDisconnected"), SubmitOutcomeUnknownError),
    (requests.exceptions.ChunkedEncodingError("broken body"), SubmitOutcomeUnknownError),
    (requests.exceptions.InvalidURL("bad url"), PermanentError),
    (requests.exceptions.SSLError("bad cert"), PermanentError),
]


@pytest.mark.parametrize(("exc", "expected"), SUBMIT_CASES, ids=lambda v: type(v).__name__)
def test_submit_mapping(exc: requests.RequestException, expected: type[WaveSpeedError]) -> None:
    assert type(map_transport_error(exc, during_submit=True)) is expected


def test_read_timeout_on_result_is_transient() -> None:
    mapped = map_transport_error(requests.ReadTimeout("slow"), during_submit=False)
    assert type(mapped) is TransientError


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


def test_json_decode_error_on_submit_is_outcome_unknown() -> None:
    exc = requests.exceptions.JSONDecodeError("bad json", "{", 0)
    assert type(map_transport_error(exc, during_submit=True)) is SubmitOutcomeUnknownError
    assert type(map_transport_error(exc, during_submit=False)) is TransientError


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
