"""``/_emulator/*``: what tests read and change. Plain JSON (no envelope), no auth.

* ``GET  /_emulator/stats``             counters (see ``stats.Stats.to_json``), and ``billing``:
                                        the balance and what was debited (micro-dollars)
* ``GET  /_emulator/predictions``       every prediction (``?model=``, ``?status=`` filter)
* ``GET  /_emulator/predictions/<id>``  one: model, input as received, status, polls, times
* ``GET  /_emulator/config``            the current config (never the API key)
* ``POST /_emulator/config``            a partial config, merged (see ``EmulatorConfig.updated``)
* ``POST /_emulator/reset``             predictions, stats, media and config back to startup
* ``GET  /_emulator/health``            ``{"status": "ok"}``
"""

from __future__ import annotations

import json
from typing import Any

from emulator.errors import ConfigError
from emulator.handlers import BaseHandler
from emulator.registry import canonical_model


class IntrospectionHandler(BaseHandler):
    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(payload, separators=(",", ":")).encode())


class StatsHandler(IntrospectionHandler):
    def get(self) -> None:
        state = self.state
        stats = state.stats.to_json(state.predictions.polls_per_prediction(), state.faults.served)
        stats["billing"] = state.account.to_json()
        self.send_json(stats)


class PredictionListHandler(IntrospectionHandler):
    def get(self) -> None:
        model = self.get_query_argument("model", None)
        status = self.get_query_argument("status", None)
        wanted_model = canonical_model(model) if model else None
        self.send_json(
            [
                prediction.introspect()
                for prediction in self.state.predictions
                if (wanted_model is None or prediction.model.path == wanted_model)
                and (status is None or prediction.status == status)
            ]
        )


class PredictionDetailHandler(IntrospectionHandler):
    def get(self, prediction_id: str) -> None:
        prediction = self.state.predictions.get(prediction_id)
        if prediction is None:
            self.send_json({"error": f"prediction {prediction_id} not found"}, 404)
        else:
            self.send_json(prediction.introspect())


class ConfigHandler(IntrospectionHandler):
    def get(self) -> None:
        self.send_json(self._current())

    def post(self) -> None:
        try:
            changes = json.loads(self.request.body or b"{}")
            self.state.apply_config(changes)
        except ValueError as exc:  # ConfigError and bad JSON alike
            message = str(exc) if isinstance(exc, ConfigError) else f"invalid JSON: {exc}"
            self.send_json({"error": message}, 400)
            return
        self.send_json(self._current())

    def _current(self) -> dict[str, Any]:
        current = self.state.config.to_json()
        current["fault_counts_remaining"] = self.state.faults.remaining()
        return current


class ResetHandler(IntrospectionHandler):
    def post(self) -> None:
        self.state.reset()
        self.send_json({"status": "reset"})


class HealthHandler(IntrospectionHandler):
    def get(self) -> None:
        self.send_json({"status": "ok"})
