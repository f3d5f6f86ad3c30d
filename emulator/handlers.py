"""The WaveSpeed v3 API as tornado handlers: submit, result, media, uploads, webhook secret.

Every answer uses the WaveSpeed envelope ``{code, message, data}``. The result
handler is the hot path (workers poll it constantly), so it is synchronous and
writes the prediction's cached wire bytes unless a result fault is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import mimetypes
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import tornado.web

from emulator.account import usd_number
from emulator.errors import InvalidRequestError
from emulator.faults import RESULT_ERROR_KINDS, SUBMIT_ERROR_KINDS
from emulator.media import MEDIA_PATH
from emulator.predictions import Prediction, envelope_bytes
from emulator.registry import ModelSpec, find_model
from emulator.state import EmulatorState, UploadTicket, key_owner, new_upload_token, wait_done
from emulator.stats import input_key
from emulator.validation import validate_request

JSON_TYPE = "application/json"
MEDIA_CACHE_CONTROL = "public, max-age=604800"  # outputs live 7 days at WaveSpeed


class BaseHandler(tornado.web.RequestHandler):
    state: EmulatorState
    #: Set when the answer is an injected fault, so the error log skips it.
    injected_fault = False

    def initialize(self, state: EmulatorState) -> None:
        self.state = state

    def compute_etag(self) -> str | None:
        return None  # hashing every poll's body for an ETag is wasted work

    @property
    def base_url(self) -> str:
        """Where the client reached us: output and result URLs are built on it."""
        return f"{self.request.protocol}://{self.request.host}"

    def write_wire(self, body: bytes, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.write(body)

    def send_envelope(self, status: int, message: str, data: Any = None) -> None:
        self.write_wire(envelope_bytes(data, code=status, message=message), status)

    def send_too_many_requests(self, retry_after: int, message: str) -> None:
        self.state.stats.http_429 += 1
        self.set_header("Retry-After", str(retry_after))
        self.send_envelope(429, message)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_envelope(status_code, http.HTTPStatus(status_code).phrase)

    def authorize(self) -> str | None:
        """The caller's owner id, or None after answering 401. The key is never echoed."""
        header = self.request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            message = "Missing API key: send the header 'Authorization: Bearer <your API key>'"
        elif self.state.config.api_key is not None and not hmac.compare_digest(
            key.encode(), self.state.config.api_key.encode()
        ):
            message = "Invalid API key"
        else:
            return key_owner(key)
        self.state.stats.auth_failures += 1
        self.send_envelope(401, message)
        return None

    def drop_connection(self) -> None:
        """Close the socket without a response: the client sees the connection drop."""
        connection = self.request.connection
        stream = getattr(connection, "stream", None)
        if stream is not None:
            stream.close()
        # Nothing may be written after this; mark the handler finished.
        self._finished = True

    def json_object_body(self) -> dict[str, Any] | None:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self.state.stats.validation_errors += 1
            self.send_envelope(400, "Request body must be a JSON object")
            return None
        return body


@dataclass(frozen=True)
class Submission:
    """A submit POST that passed auth and parsing: who asked, for which model, with what."""

    owner: str
    model: ModelSpec
    body: dict[str, Any]
    key: str

    @property
    def prompt(self) -> str:
        prompt = self.body.get("prompt")
        return prompt if isinstance(prompt, str) else ""


class SubmitHandler(BaseHandler):
    """``POST /api/v3/<owner>/<model>``: validate, create a prediction, answer ``created``.

    Order: auth (401), model (404), JSON body (400), the submit faults that stop a
    request before anything exists, validation (400), the per-key rate limit
    (429), then the prediction is created and answered (or held in sync mode).
    """

    #: Set when the client closed the connection before the answer (e.g. its read timeout).
    client_left = False
    #: The submit faults served on this request, in order.
    request_faults: list[str]

    def on_connection_close(self) -> None:
        self.client_left = True

    async def post(self, model_path: str) -> None:
        self.request_faults = []
        submission = self._admit(model_path)
        if submission is None or not await self._survives_submit_faults(submission):
            return
        prediction = self._create(submission)
        if prediction is None:
            return
        prediction.submit_faults = list(self.request_faults)
        faults, model, prompt = self.state.faults, submission.model.path, submission.prompt
        if faults.fire("submit_drop_after_create", model, prompt):
            self._served(submission, "submit_drop_after_create", prediction)
            self.drop_connection()
        elif prediction.params["enable_sync_mode"]:
            await self._answer_sync(prediction)
        elif faults.fire("submit_malformed", model, prompt):
            self._served(submission, "submit_malformed", prediction)
            wire = prediction.wire()
            self.write_wire(wire[: len(wire) // 2])
        else:
            self.write_wire(prediction.wire())
        if self.client_left:
            prediction.submit_answer = "client_left"

    def _served(
        self, submission: Submission, kind: str, prediction: Prediction | None = None
    ) -> None:
        """Record a submit fault against the input (and the prediction it hit), so a test
        can tell a justified second submission from a blind one."""
        self.request_faults.append(kind)
        self.state.stats.submit_faults_per_input[submission.key][kind] += 1
        if prediction is not None:
            prediction.submit_faults.append(kind)
            prediction.submit_answer = kind

    def _admit(self, model_path: str) -> Submission | None:
        owner = self.authorize()
        if owner is None:
            return None
        model = find_model(model_path)
        if model is None:
            self.send_envelope(404, f"Model {model_path} not found")
            return None
        body = self.json_object_body()
        if body is None:
            return None
        submission = Submission(owner, model, body, input_key(model.path, body))
        stats = self.state.stats
        stats.submissions_total += 1
        stats.submissions_per_model[model.path] += 1
        stats.submissions_per_input[submission.key] += 1
        return submission

    def _create(self, submission: Submission) -> Prediction | None:
        try:
            params = validate_request(submission.model, submission.body)
            webhook_url = self._webhook_url(submission.body)
        except InvalidRequestError as exc:
            self.state.stats.validation_errors += 1
            self.send_envelope(400, exc.message)
            return None
        if not self._within_rate_limit(submission, params):
            return None
        return self.state.predictions.create(
            model=submission.model,
            body=submission.body,
            params=params,
            owner=submission.owner,
            base_url=self.base_url,
            input_key=submission.key,
            plan=self.state.plan(submission.model.path, submission.prompt),
            webhook_url=webhook_url,
        )

    async def _answer_sync(self, prediction: Prediction) -> None:
        limit = self.state.config.sync_timeout
        if await wait_done(prediction.done, limit):
            self.write_wire(prediction.wire())
        else:
            self.state.stats.sync_timeouts += 1
            self.write_wire(prediction.sync_timeout_wire(limit))

    async def _survives_submit_faults(self, submission: Submission) -> bool:
        """Apply the submit faults that stop a request before any prediction exists."""
        faults, model, prompt = self.state.faults, submission.model, submission.prompt
        slow = faults.fire("submit_slow", model.path, prompt)
        if slow is not None:
            self._served(submission, "submit_slow")
            await asyncio.sleep(slow.delay)
        if faults.fire("submit_drop_before_create", model.path, prompt):
            self._served(submission, "submit_drop_before_create")
            self.drop_connection()
            return False
        if faults.fire("submit_echo_auth", model.path, prompt):
            self._served(submission, "submit_echo_auth")
            self.injected_fault = True
            echoed = self.request.headers.get("Authorization", "")
            self.send_envelope(
                400, f"Bad request (emulator fault); you sent Authorization: {echoed}"
            )
            return False
        if faults.fire("submit_401", model.path, prompt):
            # What a revoked key gets, whatever key was sent (this one was accepted above).
            self._served(submission, "submit_401")
            self.injected_fault = True
            self.state.stats.auth_failures += 1
            self.send_envelope(401, "Invalid API key")
            return False
        error_kind = faults.first_firing(SUBMIT_ERROR_KINDS, model.path, prompt)
        if error_kind is not None:
            self._served(submission, error_kind)
            send_fault_status(self, error_kind)
            return False
        throttled = faults.fire("submit_429", model.path, prompt)
        if throttled is not None:
            self._served(submission, "submit_429")
            self.send_too_many_requests(throttled.retry_after, "Too many requests")
            return False
        return True

    def _webhook_url(self, body: dict[str, Any]) -> str | None:
        url = self.get_query_argument("webhook", None) or body.get("webhook_url")
        if url is not None and not (
            isinstance(url, str) and url.startswith(("http://", "https://"))
        ):
            raise InvalidRequestError("webhook_url", "webhook_url must be an http(s) URL")
        return url

    def _within_rate_limit(self, submission: Submission, params: dict[str, Any]) -> bool:
        limit = self.state.config.rate_limit_per_minute
        if limit is None:
            return True
        images = submission.model.image_count(params)
        wait = self.state.rate_limiter.try_take(submission.owner, images, limit, time.monotonic())
        if wait is None:
            return True
        self.state.stats.rate_limited += 1
        self.send_too_many_requests(
            wait, f"Rate limit exceeded: {limit} images per minute; retry after {wait}s"
        )
        return False


class ResultHandler(BaseHandler):
    """``GET /api/v3/predictions/<id>/result`` (and ``/api/v3/predictions/<id>``)."""

    def get(self, prediction_id: str) -> Awaitable[None] | None:
        if self.authorize() is None:
            return None
        prediction = self.state.predictions.get(prediction_id)
        if prediction is None:
            self.state.stats.polls_unknown_id += 1
            self.send_envelope(404, f"Prediction {prediction_id} not found")
            return None
        prediction.polls += 1
        self.state.stats.polls_total += 1
        if self.state.faults.any_result_fault:
            return self._answer_with_faults(prediction)
        self.write_wire(prediction.wire())
        return None

    async def _answer_with_faults(self, prediction: Prediction) -> None:
        faults, model, prompt = self.state.faults, prediction.model.path, prediction.prompt
        slow = faults.fire("result_slow", model, prompt)
        if slow is not None:
            await asyncio.sleep(slow.delay)
        if faults.fire("result_drop", model, prompt):
            self.drop_connection()
            return
        error_kind = faults.first_firing(RESULT_ERROR_KINDS, model, prompt)
        if error_kind is not None:
            send_fault_status(self, error_kind)
            return
        throttled = faults.fire("result_429", model, prompt)
        if throttled is not None:
            self.send_too_many_requests(throttled.retry_after, "Too many requests")
            return
        wire = prediction.wire()
        if faults.fire("result_malformed", model, prompt):
            wire = wire[: len(wire) // 2]
        self.write_wire(wire)


class MediaHandler(BaseHandler):
    """``GET /media/<name>``: public, like WaveSpeed's CDN output URLs."""

    def get(self, name: str) -> None:
        self._serve(name, with_body=True)

    def head(self, name: str) -> None:
        self._serve(name, with_body=False)

    def _serve(self, name: str, *, with_body: bool) -> None:
        item = self.state.media.get(name)
        if item is None:
            self.send_envelope(404, f"Media {name} not found")
            return
        self.state.stats.media_served += 1
        self.set_header("Content-Type", item.content_type)
        self.set_header("Cache-Control", MEDIA_CACHE_CONTROL)
        if with_body:
            self.write(item.data)
        else:
            self.set_header("Content-Length", str(len(item.data)))


class BinaryUploadHandler(BaseHandler):
    """``POST /api/v3/media/upload/binary`` with multipart field ``file``."""

    def post(self) -> None:
        if self.authorize() is None:
            return
        files = self.request.files.get("file")
        if not files:
            self.send_envelope(400, "file is required (multipart form field 'file')")
            return
        upload = files[0]
        content_type = _content_type(upload.content_type, upload.filename)
        name = self.state.media.put(
            upload.body, content_type, self.state.media.new_name(content_type, upload.filename)
        )
        self.state.stats.uploads += 1
        self.send_envelope(
            200,
            "success",
            {
                "type": content_type.split("/")[0] if "/" in content_type else "file",
                "download_url": f"{self.base_url}{MEDIA_PATH}{name}",
                "filename": upload.filename,
                "size": len(upload.body),
            },
        )


class UploadTicketHandler(BaseHandler):
    """``POST /api/v3/media/uploads``: the SDK's upload flow, step 1 (then a PUT)."""

    def post(self) -> None:
        if self.authorize() is None:
            return
        body = self.json_object_body()
        if body is None:
            return
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename:
            self.send_envelope(400, "filename is required")
            return
        declared = body.get("content_type")
        content_type = _content_type(declared if isinstance(declared, str) else None, filename)
        token = new_upload_token()
        name = self.state.media.new_name(content_type, filename)
        self.state.upload_tickets[token] = UploadTicket(name, content_type)
        self.send_envelope(
            200,
            "success",
            {
                "upload": {
                    "method": "PUT",
                    "url": f"{self.base_url}/uploads/{token}",
                    "headers": {"Content-Type": content_type},
                },
                "download_url": f"{self.base_url}{MEDIA_PATH}{name}",
                "filename": filename,
                "size": body.get("size"),
            },
        )


class UploadTargetHandler(BaseHandler):
    """``PUT /uploads/<token>``: the pre-signed target; the token is the credential."""

    def put(self, token: str) -> None:
        ticket = self.state.upload_tickets.pop(token, None)
        if ticket is None:
            self.send_envelope(404, "Unknown or used upload token")
            return
        self.state.media.put(self.request.body, ticket.content_type, ticket.name)
        self.state.stats.uploads += 1
        self.set_status(200)


class WebhookSecretHandler(BaseHandler):
    """``GET /api/v3/webhook/secret``: the key webhook signatures are made with."""

    def get(self) -> None:
        if self.authorize() is None:
            return
        self.send_envelope(200, "success", {"secret": self.state.webhook_secret})


class BalanceHandler(BaseHandler):
    """``GET /api/v3/balance`` (also ``/api/v3/account/balance``): the account's balance in
    US dollars, debited per completed image at the model's price."""

    def get(self) -> None:
        if self.authorize() is None:
            return
        balance = usd_number(self.state.account.balance_micros)
        self.send_envelope(200, "success", {"balance": balance, "currency": "USD"})


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.send_envelope(404, f"No route for {self.request.method} {self.request.path}")
        self.finish()


def send_fault_status(handler: BaseHandler, kind: str) -> None:
    """Answer an injected ``*_500``/``*_502``/``*_503`` fault with its HTTP status."""
    status = int(kind.rsplit("_", 1)[1])
    handler.injected_fault = True
    handler.send_envelope(status, f"{http.HTTPStatus(status).phrase} (emulator fault {kind})")


def _content_type(declared: str | None, filename: str) -> str:
    if declared and declared != "application/octet-stream":
        return declared
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"
