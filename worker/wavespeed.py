"""The WaveSpeed HTTP client: ``submit()``, ``result()`` and ``upload()``, nothing more.

Every transport and HTTP failure is mapped to the tree in ``worker.errors``
here, and the remote status is parsed here, into a closed set. The rule that
shapes the mapping: **a submit POST that may have reached the server is never
reported as safe to retry** — WaveSpeed has no idempotency key, so a second
POST may bill twice. Only failures that prove the request was not acted on
(connection refused, connect timeout, 429, 503) are transient on submit;
anything else after the bytes left is ``SubmitOutcomeUnknownError``.

Messages are built from status codes and the server's own words, never from
the request; and the server's words are redacted (the API key and any bearer
token are cut out) before they are quoted, because a careless server may echo
the request's Authorization header back. Then they are made printable
(``worker.outside_text``: control characters escaped, length capped), because the
server's words quote what it was sent, and they go on to logs, records and
terminals. A prediction id and an error code from the server are held to a short
plain spelling: the id goes into our poll URLs, the code into counter labels.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from worker.errors import (
    PermanentError,
    RateLimitedError,
    RemoteTaskFailedError,
    SubmitOutcomeUnknownError,
    TransientError,
    WaveSpeedError,
)
from worker.models import MODEL_PREFIX
from worker.money import usd_text_to_micros_rounded
from worker.outside_text import printable

#: Remote task codes (``data.code`` on a failed prediction) that are worth a new attempt.
_TRANSIENT_TASK_CODES = range(5000, 6000)
_SUBMIT_SAFE_HTTP = frozenset({429, 503})
MAX_ERROR_TEXT = 300
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+")
#: A prediction id, as WaveSpeed writes them (hex); it becomes part of our poll URL.
_PREDICTION_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: A remote error code written as text; it becomes a counter label.
_TEXT_CODE = re.compile(r"[A-Za-z0-9_.-]{1,40}")
REDACTED = "[redacted]"


class RemoteStatus(StrEnum):
    """Every status WaveSpeed reports; anything else is a protocol error."""

    CREATED = "created"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"

    @property
    def is_running(self) -> bool:
        return self in (RemoteStatus.CREATED, RemoteStatus.PROCESSING)


@dataclass(frozen=True)
class Prediction:
    """A prediction's state as WaveSpeed reported it."""

    id: str
    status: RemoteStatus
    outputs: list[str] = field(default_factory=list)
    has_nsfw_contents: list[bool] = field(default_factory=list)
    inference_ms: float | None = None
    error_code: int | str | None = None
    error_message: str = ""


def parse_prediction(envelope: Mapping[str, Any]) -> Prediction:
    """The one place that reads WaveSpeed's ``{code, message, data}`` envelope."""
    data = envelope.get("data")
    if not isinstance(data, Mapping) or not data.get("id"):
        raise PermanentError("WaveSpeed answered without a prediction in data", code="malformed")
    if not _PREDICTION_ID.fullmatch(str(data["id"])):
        raise PermanentError(
            f"WaveSpeed answered a malformed prediction id {printable(repr(data['id']), 80)}",
            code="malformed",
        )
    raw_status = str(data.get("status", ""))
    try:
        status = RemoteStatus(raw_status)
    except ValueError:
        raise PermanentError(
            f"WaveSpeed reported unknown status {printable(repr(raw_status), 80)} "
            f"for prediction {data['id']}",
            code="unknown_status",
        ) from None
    timings = data.get("timings") if isinstance(data.get("timings"), Mapping) else {}
    inference = timings.get("inference") if timings else None
    outputs = data.get("outputs") or []
    nsfw = data.get("has_nsfw_contents") or []
    if not isinstance(outputs, list) or not isinstance(nsfw, list):
        raise PermanentError(
            f"WaveSpeed answered a malformed prediction {data['id']} (outputs not a list)",
            code="malformed",
        )
    code = data.get("code")
    if isinstance(code, bool) or not isinstance(code, int | str | None):
        code = None
    elif isinstance(code, str) and not _TEXT_CODE.fullmatch(code):
        code = "unreadable"
    if code in (None, 0, 200) and status in (RemoteStatus.FAILED, RemoteStatus.TIMEOUT):
        code = 5004 if status is RemoteStatus.TIMEOUT else None
    return Prediction(
        id=str(data["id"]),
        status=status,
        outputs=[str(o) for o in outputs],
        has_nsfw_contents=[bool(n) for n in nsfw],
        inference_ms=float(inference) if isinstance(inference, int | float) else None,
        error_code=code if code not in (0, 200) else None,
        error_message=str(data.get("error") or ""),  # made printable by the client
    )


def failure_of(prediction: Prediction) -> WaveSpeedError:
    """The error a terminally failed prediction stands for: 5xxx is worth a new
    attempt (the service broke, not the request), anything else is final."""
    code = prediction.error_code
    message = prediction.error_message or f"prediction {prediction.status.value}"
    if isinstance(code, int) and code in _TRANSIENT_TASK_CODES:
        return TransientError(message, code=code)
    return RemoteTaskFailedError(message, code=code if code is not None else prediction.status)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def redact(text: str, secret: str) -> str:
    """``text`` without ``secret`` and without anything that looks like a bearer token."""
    if secret:
        text = text.replace(secret, REDACTED)
    return _BEARER.sub(f"Bearer {REDACTED}", text)


def _server_message(response: requests.Response, secret: str) -> str:
    try:
        body = response.json()
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    text = str(message or response.text or response.reason or "")
    # Redact before cutting, so a secret straddling the cut cannot leave a readable half.
    return printable(redact(text, secret), MAX_ERROR_TEXT)


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the request provably never reached the server (refused, DNS, proxy)."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.ProxyError):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def map_transport_error(exc: requests.RequestException, *, during_submit: bool) -> WaveSpeedError:
    """Map any ``requests`` exception. On submit, "maybe sent" is never "transient"."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.SSLError):
        return PermanentError(f"TLS failure talking to WaveSpeed ({name})", code="tls")
    if isinstance(exc, requests.ConnectionError) and _never_connected(exc):
        return TransientError(f"could not connect to WaveSpeed ({name})", code="connect")
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema
        | requests.exceptions.InvalidHeader
        | requests.exceptions.URLRequired
        | requests.exceptions.InvalidJSONError
        | requests.exceptions.TooManyRedirects,
    ) and not isinstance(exc, requests.exceptions.JSONDecodeError):
        # JSONDecodeError subclasses InvalidJSONError but means the *answer* was unreadable.
        return PermanentError(f"bad request to WaveSpeed ({name})", code="client")
    if during_submit:
        return SubmitOutcomeUnknownError(
            f"the submit request was sent and no complete answer came back ({name}); "
            "the prediction may exist on WaveSpeed and may be billed",
            code="submit_outcome_unknown",
        )
    return TransientError(f"WaveSpeed did not answer ({name})", code="transport")


class WaveSpeedClient:
    """One ``requests.Session`` with connect/read timeouts. Create one per worker
    process, after fork (sessions hold sockets, which must not cross a fork)."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 32,
        proxy_from_env: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        # requests reads proxy variables and ~/.netrc on every call unless told not
        # to: a measurable share of a poll's CPU. Only proxy users need it.
        self.session.trust_env = proxy_from_env
        # urllib3 retries are off: a retried POST could bill twice, and GET retries
        # belong to the task's own schedule.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Authorization"] = f"Bearer {api_key}"
        self._secret = api_key
        self.session.headers["User-Agent"] = "wavequeue"

    def close(self) -> None:
        self.session.close()

    def submit(
        self, model: str, body: Mapping[str, Any], *, webhook: str | None = None
    ) -> Prediction:
        """POST a prediction; returns it (normally ``created``). ``webhook``: the URL
        WaveSpeed calls when it ends (the documented ``?webhook=`` query parameter)."""
        url = f"{self.base_url}/api/v3/{MODEL_PREFIX}{model.removeprefix(MODEL_PREFIX)}"
        params = {"webhook": webhook} if webhook else None
        try:
            response = self.session.post(url, json=dict(body), params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise map_transport_error(exc, during_submit=True) from None
        if response.status_code != 200:
            raise self._http_error(response, during_submit=True)
        try:
            return self._redacted(parse_prediction(response.json()))
        except requests.exceptions.JSONDecodeError as exc:
            raise map_transport_error(exc, during_submit=True) from None
        except PermanentError as exc:
            if exc.code != "malformed":
                raise
            # A 200 we cannot read: the prediction may exist, and we have no id to poll.
            raise SubmitOutcomeUnknownError(
                f"{exc.message}; the prediction may exist on WaveSpeed and may be billed",
                code="submit_outcome_unknown",
            ) from None

    def result(self, prediction_id: str) -> Prediction:
        """GET the prediction's current state."""
        url = f"{self.base_url}/api/v3/predictions/{prediction_id}/result"
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise map_transport_error(exc, during_submit=False) from None
        if response.status_code != 200:
            raise self._http_error(response, during_submit=False)
        try:
            envelope = response.json()
        except requests.exceptions.JSONDecodeError as exc:
            raise map_transport_error(exc, during_submit=False) from None
        return self._redacted(parse_prediction(envelope))

    def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Store an image in WaveSpeed's media storage (``/api/v3/media/upload/binary``);
        returns its download URL. Unlike a submit, an upload creates nothing billable, so
        any failure to get an answer is safe to retry (``TransientError``)."""
        url = f"{self.base_url}/api/v3/media/upload/binary"
        try:
            response = self.session.post(
                url, files={"file": (filename, data, content_type)}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            mapped = map_transport_error(exc, during_submit=False)
            if isinstance(mapped, PermanentError):  # TLS, a malformed request: no retry helps
                raise mapped from None
            raise TransientError(
                f"uploading an image to WaveSpeed failed ({type(exc).__name__})", code="upload"
            ) from None
        if response.status_code != 200:
            raise self._http_error(response, during_submit=False)
        try:
            data_field = response.json().get("data")
            download_url = data_field.get("download_url") if isinstance(data_field, dict) else None
        except (ValueError, AttributeError):
            download_url = None
        if not isinstance(download_url, str) or not download_url:
            raise TransientError(
                "WaveSpeed answered an upload without a download_url", code="upload"
            )
        return download_url

    def webhook_secret(self) -> str:
        """The account's webhook signing secret (``whsec_...``), as WaveSpeed gives it."""
        url = f"{self.base_url}/api/v3/webhook/secret"
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise map_transport_error(exc, during_submit=False) from None
        if response.status_code != 200:
            raise self._http_error(response, during_submit=False)
        try:
            envelope = response.json()
        except requests.exceptions.JSONDecodeError as exc:
            raise map_transport_error(exc, during_submit=False) from None
        data = envelope.get("data") if isinstance(envelope, Mapping) else None
        secret = data.get("secret") if isinstance(data, Mapping) else None
        if not isinstance(secret, str) or not secret:
            # Never quote the answer: it would be the secret if only its shape were off.
            raise PermanentError("WaveSpeed answered without a webhook secret", code="malformed")
        return secret

    def balance(self) -> int:
        """The account's balance in micro-dollars (``GET /api/v3/balance``: ``data.balance``,
        US dollars as a JSON number, read through its decimal text, never as a float)."""
        url = f"{self.base_url}/api/v3/balance"
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise map_transport_error(exc, during_submit=False) from None
        if response.status_code != 200:
            raise self._http_error(response, during_submit=False)
        try:
            envelope = json.loads(response.text, parse_float=str, parse_int=str)
        except ValueError:
            raise PermanentError(
                "WaveSpeed answered the balance with bad JSON", code="malformed"
            ) from None
        data = envelope.get("data") if isinstance(envelope, Mapping) else None
        amount = data.get("balance") if isinstance(data, Mapping) else None
        try:
            if not isinstance(amount, str):
                raise ValueError("not a number")
            return usd_text_to_micros_rounded(amount)
        except ValueError:
            raise PermanentError(
                "WaveSpeed answered the balance without a usable amount", code="malformed"
            ) from None

    def _redacted(self, prediction: Prediction) -> Prediction:
        """A failed prediction's message is the server's text too."""
        if not prediction.error_message:
            return prediction
        message = printable(redact(prediction.error_message, self._secret), MAX_ERROR_TEXT)

        message = redact(prediction.error_message, self._secret)[:MAX_ERROR_TEXT]
        return dataclasses.replace(prediction, error_message=message)

    def _http_error(self, response: requests.Response, *, during_submit: bool) -> WaveSpeedError:
        status = response.status_code
        message = f"HTTP {status} from WaveSpeed: {_server_message(response, self._secret)}"
        if status == 429:
            return RateLimitedError(message, code=429, retry_after=_retry_after(response))
        if 400 <= status < 500:  # 400/401/403/404/422...: the same request fails again
            return PermanentError(message, code=status)
        if during_submit and status not in _SUBMIT_SAFE_HTTP:
            # A 500/502/504 may come after the prediction was created.
            return SubmitOutcomeUnknownError(
                message + "; the prediction may exist on WaveSpeed and may be billed",
                code="submit_outcome_unknown",
            )
        return TransientError(message, code=status, retry_after=_retry_after(response))
