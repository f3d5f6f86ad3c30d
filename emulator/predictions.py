"""Predictions and their lifecycle: ``created`` -> ``processing`` -> ``completed`` | ``failed``.

Each prediction is an asyncio task on the IOLoop: wait for a concurrency slot
(status stays ``created`` meanwhile), turn ``processing``, render its outputs in
the thread pool (so polls stay fast), sleep out the rest of its drawn latency,
then finish and fire its webhook. A wire form of each prediction's envelope is
cached until its state changes, so a result poll is a dict lookup and a write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from emulator.account import Account
from emulator.errors import MediaUnreachableError
from emulator.images import decode_image, encode_png
from emulator.limits import ConcurrencyGate
from emulator.media import MEDIA_PATH, MediaStore, fetch_media
from emulator.registry import ModelSpec
from emulator.stats import Stats
from emulator.webhooks import DeliveryPlan, WebhookSender

log = logging.getLogger(__name__)

MEDIA_UNREACHABLE_CODE = 1402
INTERNAL_ERROR_CODE = 5000
SYNC_TIMEOUT_CODE = 5004


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope_bytes(data: Any, code: int = 200, message: str = "success") -> bytes:
    """The WaveSpeed response envelope ``{code, message, data}``, serialized."""
    return json.dumps(
        {"code": code, "message": message, "data": data}, separators=(",", ":")
    ).encode()


@dataclass(frozen=True)
class PredictionPlan:
    """What was decided at submit time: how long it takes and how it ends."""

    latency: float
    image_scale: float
    failure: tuple[int, str] | None = None
    nsfw: bool = False


@dataclass(eq=False)
class Prediction:
    id: str
    model: ModelSpec
    body: dict[str, Any]
    params: dict[str, Any]
    owner: str
    base_url: str
    input_key: str
    plan: PredictionPlan
    webhook_url: str | None = None
    status: str = "created"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    completed_at: datetime | None = None
    outputs: list[str] = field(default_factory=list)
    has_nsfw_contents: list[bool] = field(default_factory=list)
    error: str = ""
    code: int | None = None
    inference_ms: int = 0
    polls: int = 0
    #: Submit faults served on the request that created it (``submit_slow``,
    #: ``submit_drop_after_create``, ``submit_malformed``).
    submit_faults: list[str] = field(default_factory=list)
    #: What became of the submit answer: ``delivered``, ``submit_drop_after_create``,
    #: ``submit_malformed`` or ``client_left`` (the client hung up first, e.g. a read
    #: timeout during ``submit_slow``): anything but ``delivered`` means the client
    #: never learned this prediction's id.
    submit_answer: str = "delivered"
    webhook_log: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _wire: bytes | None = None

    @property
    def prompt(self) -> str:
        prompt = self.body.get("prompt")
        return prompt if isinstance(prompt, str) else ""

    @property
    def result_url(self) -> str:
        return f"{self.base_url}/api/v3/predictions/{self.id}/result"

    def data(self) -> dict[str, Any]:
        """The ``data`` object of the result envelope (and the webhook body)."""
        data: dict[str, Any] = {
            "id": self.id,
            "model": self.model.path,
            "outputs": list(self.outputs),
            "urls": {"get": self.result_url},
            "has_nsfw_contents": list(self.has_nsfw_contents),
            "status": self.status,
            "created_at": rfc3339(self.created_at),
            "error": self.error,
            "timings": {"inference": self.inference_ms},
        }
        if self.code is not None:
            data["code"] = self.code  # only failed predictions carry a task code
        return data

    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = envelope_bytes(self.data())
        return self._wire

    def sync_timeout_wire(self, waited: float) -> bytes:
        """The 200 answer of a sync-mode POST that outlived the sync limit (code 5004)."""
        message = (
            f"Sync mode timed out after {waited:g}s; the prediction is still running: "
            f"poll {self.result_url}"
        )
        data = self.data() | {"status": "processing", "code": SYNC_TIMEOUT_CODE, "error": message}
        return envelope_bytes(data, code=SYNC_TIMEOUT_CODE, message=message)

    def introspect(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model.path,
            "input": self.body,
            "input_key": self.input_key,
            "status": self.status,
            "code": self.code,
            "error": self.error,
            "outputs": list(self.outputs),
            "has_nsfw_contents": list(self.has_nsfw_contents),
            "polls": self.polls,
            "submit_faults": list(self.submit_faults),
            "submit_answer": self.submit_answer,
            "latency_seconds": self.plan.latency,
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at) if self.started_at else None,
            "completed_at": rfc3339(self.completed_at) if self.completed_at else None,
            "webhook": {"url": self.webhook_url, "deliveries": list(self.webhook_log)}
            if self.webhook_url
            else None,
        }

    def start(self) -> None:
        self.status = "processing"
        self.started_at = datetime.now(UTC)
        self._wire = None

    def finish(
        self, *, outputs: list[str] | None = None, failure: tuple[int, str] | None = None
    ) -> None:
        self.completed_at = datetime.now(UTC)
        started = self.started_at or self.completed_at
        if failure is None:
            self.status = "completed"
            self.outputs = outputs or []
            self.has_nsfw_contents = [self.plan.nsfw] * len(self.outputs)
            self.inference_ms = round(self.plan.latency * 1000)
        else:
            self.status = "failed"
            self.code, self.error = failure
            self.inference_ms = round((self.completed_at - started).total_seconds() * 1000)
        self._wire = None
        self.done.set()


class PredictionService:
    """The prediction table and the tasks that move each prediction along."""

    def __init__(
        self,
        *,
        stats: Stats,
        media: MediaStore,
        executor: Executor,
        webhooks: WebhookSender,
        delivery_plan: Callable[[str, str], DeliveryPlan] | None = None,
        max_concurrency: int | None,
        account: Account | None = None,
    ) -> None:
        self._stats = stats
        self.account = account or Account()
        self._media = media
        self._executor = executor
        self._webhooks = webhooks
        self._delivery_plan = delivery_plan or (lambda _model, _prompt: DeliveryPlan())
        self.gate = ConcurrencyGate(max_concurrency)
        self._table: dict[str, Prediction] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def __iter__(self) -> Iterator[Prediction]:
        return iter(list(self._table.values()))

    def get(self, prediction_id: str) -> Prediction | None:
        return self._table.get(prediction_id)

    def polls_per_prediction(self) -> dict[str, int]:
        return {prediction.id: prediction.polls for prediction in self._table.values()}

    def create(
        self,
        *,
        model: ModelSpec,
        body: dict[str, Any],
        params: dict[str, Any],
        owner: str,
        base_url: str,
        input_key: str,
        plan: PredictionPlan,
        webhook_url: str | None,
    ) -> Prediction:
        prediction = Prediction(
            id=uuid.uuid4().hex,
            model=model,
            body=body,
            params=params,
            owner=owner,
            base_url=base_url,
            input_key=input_key,
            plan=plan,
            webhook_url=webhook_url,
        )
        self._table[prediction.id] = prediction
        self._stats.predictions_created += 1
        self._stats.predictions_per_model[model.path] += 1
        self._stats.predictions_per_input[input_key] += 1
        self._spawn(self._run(prediction))
        return prediction

    def shutdown(self) -> None:
        """Stop every lifecycle and webhook task (used by reset and server stop)."""
        for task in list(self._tasks):
            task.cancel()
        for prediction in self._table.values():
            prediction.done.set()  # release sync-mode waiters

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, prediction: Prediction) -> None:
        await self._wait_for_slot(prediction.owner)
        try:
            prediction.start()
            self._stats.started_processing()
            await self._process(prediction)
        finally:
            self._stats.processing_now -= 1
            self.gate.release(prediction.owner)
        if prediction.status == "completed":
            self._stats.predictions_completed += 1
            # Billed per image delivered; a failed prediction costs nothing.
            self.account.debit(len(prediction.outputs), prediction.model.price_micros)
        else:
            self._stats.predictions_failed += 1
        if prediction.webhook_url:
            plan = self._delivery_plan(prediction.model.path, prediction.prompt)
            self._spawn(
                self._webhooks.deliver(
                    prediction.webhook_url, prediction.data(), prediction.webhook_log, plan
                )
            )

    async def _wait_for_slot(self, owner: str) -> None:
        if not self.gate.would_wait(owner):
            await self.gate.acquire(owner)
            return
        self._stats.queued(+1)
        try:
            await self.gate.acquire(owner)
        finally:
            self._stats.queued(-1)

    async def _process(self, prediction: Prediction) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + prediction.plan.latency
        outputs: list[str] = []
        if prediction.plan.failure is None:
            try:
                names = await asyncio.wrap_future(
                    self._executor.submit(
                        self._render, prediction.model, prediction.params, prediction.plan
                    )
                )
            except MediaUnreachableError as exc:
                # Like the real service: an unreachable input fails at once, not after the latency.
                prediction.finish(failure=(MEDIA_UNREACHABLE_CODE, str(exc)))
                return
            except Exception as exc:  # a rendering bug must fail the task, not leave it hanging
                log.exception("rendering prediction %s failed", prediction.id)
                prediction.finish(failure=(INTERNAL_ERROR_CODE, f"Internal error: {exc}"))
                return
            outputs = [f"{prediction.base_url}{MEDIA_PATH}{name}" for name in names]
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        prediction.finish(outputs=outputs, failure=prediction.plan.failure)

    def _render(self, model: ModelSpec, params: dict[str, Any], plan: PredictionPlan) -> list[str]:
        """Runs in the thread pool: fetch inputs, draw, encode, store. Returns media names."""

        def load(reference: str) -> Image.Image:
            return decode_image(fetch_media(reference, self._media))

        images = model.make_outputs(params, load, plan.image_scale)
        return [self._media.put(encode_png(image), "image/png") for image in images]
