"""What the emulator saw, for tests to assert on ("submitted exactly once", poll counts).

Plain counters touched only on the IOLoop thread, so they cost an increment each.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Body fields that do not change what is generated, left out of the input key.
_DELIVERY_FIELDS = frozenset({"enable_sync_mode", "webhook_url", "webhook"})


def input_key(model: str, body: Mapping[str, Any]) -> str:
    """A stable hash of model + canonical JSON of the body (minus sync mode and webhook).

    Two submissions with the same key asked for the same thing: if a test sees a
    count above one, something submitted twice.
    """
    generated = {name: value for name, value in body.items() if name not in _DELIVERY_FIELDS}
    canonical = json.dumps(generated, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{model}\n{canonical}".encode()).hexdigest()[:16]


@dataclass
class Stats:
    submissions_total: int = 0
    submissions_per_model: Counter[str] = field(default_factory=Counter)
    # Every submit POST that got past auth with a JSON body, fault or not ...
    submissions_per_input: Counter[str] = field(default_factory=Counter)
    # The submit faults served per input (kind -> count), created or not ...
    submit_faults_per_input: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    # ... and those that actually created a prediction.
    predictions_created: int = 0
    predictions_per_model: Counter[str] = field(default_factory=Counter)
    predictions_per_input: Counter[str] = field(default_factory=Counter)
    predictions_completed: int = 0
    predictions_failed: int = 0
    polls_total: int = 0
    polls_unknown_id: int = 0
    processing_now: int = 0
    peak_concurrency: int = 0
    queued_now: int = 0
    peak_queued: int = 0
    http_429: int = 0
    rate_limited: int = 0
    auth_failures: int = 0
    validation_errors: int = 0
    sync_timeouts: int = 0
    uploads: int = 0
    media_served: int = 0
    #: Webhook deliveries by outcome: delivered, failed (every attempt refused or
    #: unanswered), dropped (``webhook_drop``), duplicated (``webhook_duplicate``).
    webhooks: Counter[str] = field(default_factory=Counter)

    def started_processing(self) -> None:
        self.processing_now += 1
        self.peak_concurrency = max(self.peak_concurrency, self.processing_now)

    def queued(self, delta: int) -> None:
        self.queued_now += delta
        self.peak_queued = max(self.peak_queued, self.queued_now)

    def to_json(
        self, polls_per_prediction: Mapping[str, int], faults: Mapping[str, int]
    ) -> dict[str, Any]:
        return {
            "submissions": {
                "total": self.submissions_total,
                "per_model": dict(self.submissions_per_model),
                "per_input": dict(self.submissions_per_input),
                "faults_per_input": {
                    key: dict(kinds) for key, kinds in self.submit_faults_per_input.items()
                },
            },
            "predictions": {
                "created": self.predictions_created,
                "completed": self.predictions_completed,
                "failed": self.predictions_failed,
                "per_model": dict(self.predictions_per_model),
                "per_input": dict(self.predictions_per_input),
            },
            "polls": {
                "total": self.polls_total,
                "per_prediction": dict(polls_per_prediction),
                "unknown_id": self.polls_unknown_id,
            },
            "concurrency": {
                "processing": self.processing_now,
                "peak": self.peak_concurrency,
                "queued": self.queued_now,
                "peak_queued": self.peak_queued,
            },
            "http_429": self.http_429,
            "rate_limited": self.rate_limited,
            "faults": dict(faults),
            "auth_failures": self.auth_failures,
            "validation_errors": self.validation_errors,
            "sync_timeouts": self.sync_timeouts,
            "uploads": self.uploads,
            "media_served": self.media_served,
            "webhooks": {
                outcome: self.webhooks[outcome]
                for outcome in ("delivered", "failed", "dropped", "duplicated")
            },
        }
