"""Run the WaveSpeed emulator for a test and talk to it over real HTTP.

``running_emulator(**config)`` starts an ``EmulatorServer`` in a background
thread on a free port of 127.0.0.1 (reachable from worker processes too) and
yields an ``EmulatorHandle``. ``config`` takes the ``POST /_emulator/config``
keys (``latency``, ``model_latency``, ``faults``, ``sync_timeout``,
``rate_limit_per_minute``, ``max_concurrency``, ``image_scale``, ``seed``);
tests default to a fixed 0.2 s latency. Everything the handle reads or changes
goes over HTTP, so tests see what a client on the wire would see.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from emulator.app import EmulatorServer
from emulator.config import EmulatorConfig
from emulator.stats import input_key

#: What tests run with unless they say otherwise: fast, deterministic predictions.
TEST_DEFAULTS: Mapping[str, Any] = {"latency": "fixed:0.2"}
TERMINAL_STATUSES = ("completed", "failed")
MODEL_PREFIX = "wavespeed-ai/"

__all__ = ["EmulatorHandle", "input_key", "running_emulator"]


@dataclass
class EmulatorHandle:
    server: EmulatorServer
    api_key: str
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def url(self, path: str) -> str:
        return self.base_url + path

    # --- introspection (/_emulator/*) ---------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self._get_json("/_emulator/stats")

    def predictions(self, **filters: str) -> list[dict[str, Any]]:
        """Every prediction, oldest first; filters: ``model=``, ``status=``."""
        response = self.session.get(self.url("/_emulator/predictions"), params=filters, timeout=10)
        response.raise_for_status()
        listed: list[dict[str, Any]] = response.json()
        return listed

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        return self._get_json(f"/_emulator/predictions/{prediction_id}")

    def config(self) -> dict[str, Any]:
        return self._get_json("/_emulator/config")

    def configure(self, **partial: Any) -> dict[str, Any]:
        """Merge a partial config; raises ValueError with the emulator's message if rejected."""
        response = self.session.post(self.url("/_emulator/config"), json=partial, timeout=10)
        if response.status_code == 400:
            raise ValueError(response.json()["error"])
        response.raise_for_status()
        current: dict[str, Any] = response.json()
        return current

    def reset(self) -> None:
        self.session.post(self.url("/_emulator/reset"), timeout=10).raise_for_status()

    def stop(self) -> None:
        self.server.stop()
        self.session.close()

    # --- the WaveSpeed API, for tests that only need a prediction ------------------------

    def submit(
        self, model: str, body: Mapping[str, Any], *, webhook: str | None = None
    ) -> requests.Response:
        """POST a submit (``model`` with or without ``wavespeed-ai/``); returns the response."""
        path = model if model.startswith(MODEL_PREFIX) else MODEL_PREFIX + model
        params = {"webhook": webhook} if webhook else None
        return self.session.post(
            self.url(f"/api/v3/{path}"),
            json=dict(body),
            params=params,
            headers=self.auth_headers,
            timeout=120,
        )

    def result(self, prediction_id: str) -> dict[str, Any]:
        """The ``data`` of ``GET /api/v3/predictions/<id>/result`` (raises on non-200)."""
        response = self.session.get(
            self.url(f"/api/v3/predictions/{prediction_id}/result"),
            headers=self.auth_headers,
            timeout=10,
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json()["data"]
        return data

    def wait_for(
        self,
        prediction_id: str,
        statuses: tuple[str, ...] = TERMINAL_STATUSES,
        timeout: float = 30.0,
        interval: float = 0.05,
    ) -> dict[str, Any]:
        """Poll until the prediction's status is one of ``statuses``; returns its data."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.result(prediction_id)
            if data["status"] in statuses:
                return data
            if time.monotonic() > deadline:
                raise TimeoutError(f"prediction {prediction_id} still {data['status']!r}")
            time.sleep(interval)

    def _get_json(self, path: str) -> dict[str, Any]:
        response = self.session.get(self.url(path), timeout=10)
        response.raise_for_status()
        payload: dict[str, Any] = response.json()
        return payload


@contextmanager
def running_emulator(
    *, api_key: str | None = "test-key", host: str = "127.0.0.1", **config: Any
) -> Iterator[EmulatorHandle]:
    """An emulator of the caller's own; ``api_key=None`` accepts any non-empty key."""
    emulator_config = EmulatorConfig(api_key=api_key).updated({**TEST_DEFAULTS, **config})
    server = EmulatorServer(emulator_config, host=host, port=0).start()
    handle = EmulatorHandle(server, api_key or "any-key")
    try:
        yield handle
    finally:
        handle.stop()
