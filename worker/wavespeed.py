"""The WaveSpeed HTTP client: ``submit()``, ``result()``, ``upload()`` and
``webhook_secret()``, nothing more, over urllib3 (``worker.http_pool``): no retries
inside it (the runner retries, on its own schedule), and a submit's redirect is never
followed (a 307 would re-send the POST).

Every transport and HTTP failure is mapped to the tree in ``worker.errors``
here, and the remote status is parsed here, into a closed set. The rule that
shapes the mapping: **a submit POST that may have reached the server is never
reported as safe to retry** — WaveSpeed has no idempotency key, so a second
POST may bill twice. Only failures that prove the request was not acted on
(connection refused, connect timeout, the proxy unreachable, 429, 503) are transient
on submit; anything else after the bytes left is ``SubmitOutcomeUnknownError``.

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
from urllib.parse import urlencode

import urllib3

from worker.errors import (
    PermanentError,
    RateLimitedError,
    RemoteTaskFailedError,
    SubmitOutcomeUnknownError,
    TransientError,
    WaveSpeedError,
)
from worker.http_pool import pool_manager
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


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
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


def _text_of(response: urllib3.BaseHTTPResponse) -> str:
    """The body as text: in the charset the answer names, else UTF-8; never an error."""
    charset = "utf-8"
    for param in str(response.headers.get("Content-Type", "")).split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip("\"' ")
    try:
        return response.data.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return response.data.decode("utf-8", errors="replace")


def _server_message(response: urllib3.BaseHTTPResponse, secret: str) -> str:
    try:
        body = json.loads(response.data)
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    text = str(message or _text_of(response) or response.reason or "")
    # Redact before cutting, so a secret straddling the cut cannot leave a readable half.
    return printable(redact(text, secret), MAX_ERROR_TEXT)


#: Failures that prove the request never reached WaveSpeed: no connection was made
#: (refused, a name that does not resolve, a connect timeout; ``NewConnectionError`` and
#: ``NameResolutionError`` are ``ConnectTimeoutError``s), the proxy could not be reached,
#: or the pool was closed or full before anything was sent.
_NEVER_SENT = (
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.ProxyError,
    urllib3.exceptions.ClosedPoolError,
    urllib3.exceptions.EmptyPoolError,
)
#: Failures of the request itself, found before it is sent: the same request fails again.
#: (``LocationValueError`` covers a bad URL and an unknown URL scheme; a plain
#: ``ValueError`` is what ``http.client`` raises for a header value it will not send.)
_BAD_REQUEST = (
    urllib3.exceptions.LocationValueError,
    urllib3.exceptions.BodyNotHttplibCompatible,
    urllib3.exceptions.UnrewindableBodyError,
    urllib3.exceptions.InvalidHeader,
    urllib3.exceptions.HostChangedError,
    urllib3.exceptions.ResponseError,  # too many redirects
    ValueError,
)
#: An answer that came and could not be read: the request was acted on, maybe.
_UNREADABLE_ANSWER = (json.JSONDecodeError, UnicodeDecodeError)


def map_transport_error(exc: Exception, *, during_submit: bool) -> WaveSpeedError:
    """Map a failure to get a readable answer (urllib3's exceptions, a request urllib3
    refused, an answer that is not JSON). On submit, "maybe sent" is never "transient"."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # a GET's error, wrapped by the redirect-only Retry
    name = type(exc).__name__
    if isinstance(exc, _NEVER_SENT):
        return TransientError(f"could not connect to WaveSpeed ({name})", code="connect")
    if isinstance(exc, urllib3.exceptions.SSLError):
        return PermanentError(f"TLS failure talking to WaveSpeed ({name})", code="tls")
    if isinstance(exc, _BAD_REQUEST) and not isinstance(exc, _UNREADABLE_ANSWER):
        return PermanentError(f"bad request to WaveSpeed ({name})", code="client")
    if during_submit:
        return SubmitOutcomeUnknownError(
            f"the submit request was sent and no complete answer came back ({name}); "
            "the prediction may exist on WaveSpeed and may be billed",
            code="submit_outcome_unknown",
        )
    return TransientError(f"WaveSpeed did not answer ({name})", code="transport")


#: What a request may raise before an answer is in hand (see ``map_transport_error``).
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, ValueError)
#: GETs follow redirects, as requests did (at most 30; urllib3 drops the Authorization
#: header when one leads to another host), and retry nothing: a failure comes back at
#: once, wrapped in ``MaxRetryError``. POSTs neither retry nor follow (a re-sent submit
#: could bill twice): ``retries=False``, ``redirect=False``.
_GET_RETRIES = urllib3.Retry(
    total=None, connect=0, read=0, status=0, other=0, redirect=30, raise_on_redirect=True
)


def _json_body(body: Mapping[str, Any]) -> bytes:
    """The submit body as requests encoded it; a body that is not JSON (NaN, infinity,
    an object JSON has no spelling for) is a ``PermanentError``, and nothing is sent."""
    try:
        return json.dumps(dict(body), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise PermanentError(
            f"bad request to WaveSpeed ({type(exc).__name__}: the body is not JSON)",
            code="client",
        ) from None


class WaveSpeedClient:
    """One urllib3 pool manager (``worker.http_pool``) with connect/read timeouts. Create
    one per worker process, after fork (pools hold sockets, which must not cross a fork);
    it is thread-safe."""

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
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.http = pool_manager(self.base_url, pool_size=pool_size, proxy_from_env=proxy_from_env)
        self._secret = api_key
        # The headers requests sent, bar its Connection: keep-alive (HTTP/1.1's default).
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": "wavequeue",
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
        }
        self._json_headers = {**self._headers, "Content-Type": "application/json"}

    def close(self) -> None:
        self.http.clear()

    def submit(
        self, model: str, body: Mapping[str, Any], *, webhook: str | None = None
    ) -> Prediction:
        """POST a prediction; returns it (normally ``created``). ``webhook``: the URL
        WaveSpeed calls when it ends (the documented ``?webhook=`` query parameter)."""
        url = f"{self.base_url}/api/v3/{MODEL_PREFIX}{model.removeprefix(MODEL_PREFIX)}"
        if webhook:
            url += "?" + urlencode({"webhook": webhook})
        encoded = _json_body(body)
        try:
            response = self._post(url, encoded, self._json_headers)
        except _TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, during_submit=True) from None
        if response.status != 200:
            raise self._http_error(response, during_submit=True)
        try:
            return self._redacted(parse_prediction(json.loads(response.data)))
        except _UNREADABLE_ANSWER as exc:
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
        envelope = self._get_json(f"{self.base_url}/api/v3/predictions/{prediction_id}/result")
        return self._redacted(parse_prediction(envelope))

    def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Store an image in WaveSpeed's media storage (``/api/v3/media/upload/binary``);
        returns its download URL. Unlike a submit, an upload creates nothing billable, so
        any failure to get an answer is safe to retry (``TransientError``)."""
        url = f"{self.base_url}/api/v3/media/upload/binary"
        try:
            body, multipart_type = urllib3.encode_multipart_formdata(
                {"file": (filename, data, content_type)}
            )
            response = self._post(url, body, {**self._headers, "Content-Type": multipart_type})
        except _TRANSPORT_ERRORS as exc:
            mapped = map_transport_error(exc, during_submit=False)
            if isinstance(mapped, PermanentError):  # TLS, a malformed request: no retry helps
                raise mapped from None
            raise TransientError(
                f"uploading an image to WaveSpeed failed ({type(exc).__name__})", code="upload"
            ) from None
        if response.status != 200:
            raise self._http_error(response, during_submit=False)
        try:
            data_field = json.loads(response.data).get("data")
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
        envelope = self._get_json(f"{self.base_url}/api/v3/webhook/secret")
        data = envelope.get("data") if isinstance(envelope, Mapping) else None
        secret = data.get("secret") if isinstance(data, Mapping) else None
        if not isinstance(secret, str) or not secret:
            # Never quote the answer: it would be the secret if only its shape were off.
            raise PermanentError("WaveSpeed answered without a webhook secret", code="malformed")
        return secret

    def balance(self) -> int:
        """The account's balance in micro-dollars (``GET /api/v3/balance``: ``data.balance``,
        US dollars as a JSON number, read through its decimal text, never as a float)."""
        envelope = self._get_json(f"{self.base_url}/api/v3/balance", numbers_as_text=True)
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

    def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> urllib3.BaseHTTPResponse:
        return self.http.urlopen(
            "POST",
            url,
            body=body,
            headers=headers,
            timeout=self.timeout,
            retries=False,
            redirect=False,
        )

    def _get_json(self, url: str, *, numbers_as_text: bool = False) -> Any:
        """GET ``url`` and decode its 200 answer; every failure mapped (not a submit).
        ``numbers_as_text``: JSON numbers come back as their text (money, read exactly)."""
        try:
            response = self.http.urlopen(
                "GET", url, headers=self._headers, timeout=self.timeout, retries=_GET_RETRIES
            )
        except _TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, during_submit=False) from None
        if response.status != 200:
            raise self._http_error(response, during_submit=False)
        try:
            if numbers_as_text:
                return json.loads(response.data, parse_float=str, parse_int=str)
            return json.loads(response.data)
        except _UNREADABLE_ANSWER as exc:
            raise map_transport_error(exc, during_submit=False) from None

    def _redacted(self, prediction: Prediction) -> Prediction:
        """A failed prediction's message is the server's text too."""
        if not prediction.error_message:
            return prediction
        message = printable(redact(prediction.error_message, self._secret), MAX_ERROR_TEXT)
        return dataclasses.replace(prediction, error_message=message)

    def _http_error(
        self, response: urllib3.BaseHTTPResponse, *, during_submit: bool
    ) -> WaveSpeedError:
        status = response.status
        message = f"HTTP {status} from WaveSpeed: {_server_message(response, self._secret)}"
        if status == 429:
            return RateLimitedError(message, code=429, retry_after=_retry_after(response))
        if 400 <= status < 500:  # 400/401/403/404/422...: the same request fails again
            return PermanentError(message, code=status)
        if during_submit and status not in _SUBMIT_SAFE_HTTP:
            # A 500/502/504 (or a redirect, not followed) may come after the prediction
            # was created.
            return SubmitOutcomeUnknownError(
                message + "; the prediction may exist on WaveSpeed and may be billed",
                code="submit_outcome_unknown",
            )
        return TransientError(message, code=status, retry_after=_retry_after(response))
