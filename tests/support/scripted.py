"""A WaveSpeed client whose answers a test scripts, for races the emulator cannot stage.

Each call takes the next step of the script: an answer (a ``Prediction``) or an
error to raise, and optionally something to do *while the call is in flight*
(another copy of the message runs, the sweeper times the job out, the clock
jumps past a lease). The runner under test talks to real Redis; only the HTTP
side is scripted, and the tests say which race they stage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.wavespeed import Prediction, RemoteStatus


@dataclass
class Step:
    answer: Prediction | Exception
    during: Callable[[], object] | None = None


class ScriptedClient:
    def __init__(self) -> None:
        self.submits: deque[Step] = deque()
        self.results: deque[Step] = deque()
        self.calls: list[tuple[str, str]] = []
        #: The callback URL each submit passed (None: webhooks off).
        self.webhooks: list[str | None] = []

    def on_submit(
        self, answer: Prediction | Exception, during: Callable[[], object] | None = None
    ) -> ScriptedClient:
        self.submits.append(Step(answer, during))
        return self

    def on_result(
        self, answer: Prediction | Exception, during: Callable[[], object] | None = None
    ) -> ScriptedClient:
        self.results.append(Step(answer, during))
        return self

    def submit(
        self, model: str, body: Mapping[str, Any], *, webhook: str | None = None
    ) -> Prediction:
        self.calls.append(("submit", model))
        self.webhooks.append(webhook)
        return self._play(self.submits.popleft())

    def result(self, prediction_id: str) -> Prediction:
        self.calls.append(("result", prediction_id))
        return self._play(self.results.popleft())

    def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Uploads always succeed: the races scripted here are about submits and polls."""
        self.calls.append(("upload", filename))
        return f"https://cdn.example/uploads/{filename}"

    @staticmethod
    def _play(step: Step) -> Prediction:
        if step.during is not None:
            step.during()
        if isinstance(step.answer, Exception):
            raise step.answer
        return step.answer


def created(prediction_id: str = "p1") -> Prediction:
    return Prediction(id=prediction_id, status=RemoteStatus.CREATED)


def processing(prediction_id: str = "p1") -> Prediction:
    return Prediction(id=prediction_id, status=RemoteStatus.PROCESSING)


def completed(prediction_id: str = "p1", url: str = "https://cdn.example/p1.png") -> Prediction:
    return Prediction(
        id=prediction_id,
        status=RemoteStatus.COMPLETED,
        outputs=[url],
        has_nsfw_contents=[False],
        inference_ms=1500.0,
    )


def failed(prediction_id: str = "p1", code: int = 1403, message: str = "boom") -> Prediction:
    return Prediction(
        id=prediction_id, status=RemoteStatus.FAILED, error_code=code, error_message=message
    )
