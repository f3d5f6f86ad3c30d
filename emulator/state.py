"""Everything one running emulator knows, and the two ways it changes: config and reset.

``EmulatorState`` wires the parts together (stats, faults, limits, media, the
prediction table). ``reset()`` rebuilds all of them from the startup config, so
nothing of an earlier test survives; the render thread pool and the webhook
secret (an account-level setting at WaveSpeed) are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from emulator.account import Account
from emulator.config import EmulatorConfig
from emulator.faults import FaultInjector
from emulator.limits import RateLimiter
from emulator.media import MediaStore
from emulator.predictions import PredictionPlan, PredictionService
from emulator.registry import canonical_model
from emulator.stats import Stats
from emulator.webhooks import DeliveryPlan, WebhookSender, new_secret

RENDER_THREADS = min(8, (os.cpu_count() or 2) + 2)


@dataclass(frozen=True)
class UploadTicket:
    """An SDK upload in flight: the PUT target token -> the media name it will fill."""

    name: str
    content_type: str


@dataclass
class EmulatorState:
    startup_config: EmulatorConfig
    config: EmulatorConfig = field(init=False)
    stats: Stats = field(init=False)
    faults: FaultInjector = field(init=False)
    rate_limiter: RateLimiter = field(init=False)
    predictions: PredictionService = field(init=False)
    upload_tickets: dict[str, UploadTicket] = field(init=False)
    media: MediaStore = field(default_factory=MediaStore)
    webhook_secret: str = field(default_factory=new_secret)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            RENDER_THREADS, thread_name_prefix="emulator-render"
        )
    )

    def __post_init__(self) -> None:
        self.webhooks = WebhookSender(self.webhook_secret, self._count_webhook)
        self._build(self.startup_config)

    def _build(self, config: EmulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.faults = FaultInjector(config.faults, config.seed)
        self.rate_limiter = RateLimiter()
        self.upload_tickets = {}
        self.predictions = PredictionService(
            stats=self.stats,
            media=self.media,
            executor=self.executor,
            webhooks=self.webhooks,
            delivery_plan=self.delivery_plan,
            max_concurrency=config.max_concurrency,
            account=Account(balance_micros=config.balance_micros),
        )

    def reset(self) -> None:
        """Back to the startup config with no predictions, stats, media or fault history."""
        self.predictions.shutdown()
        self.media.clear()
        self._build(self.startup_config)

    def apply_config(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """Merge a partial config (raises ConfigError, leaving everything as it was)."""
        config = self.config.updated(changes)
        self.config = config
        if "seed" in changes:
            self.faults.reseed(config.seed)
        raw_faults = changes.get("faults")
        rearm = list(raw_faults) if isinstance(raw_faults, Mapping) else []
        self.faults.configure(config.faults, rearm=rearm)
        self.predictions.gate.set_limit(config.max_concurrency)
        if "balance" in changes:
            # A top-up (or a drain): the account holds this much from now on.
            self.predictions.account.balance_micros = config.balance_micros
        return config

    @property
    def account(self) -> Account:
        return self.predictions.account

    def plan(self, model: str, prompt: str) -> PredictionPlan:
        """Draw the latency and decide the ending of a new prediction (faults included)."""
        config = self.config
        latency = config.latency_for(canonical_model(model)).draw(self.faults.rng)
        failed = self.faults.fire("prediction_failed", model, prompt)
        nsfw = self.faults.fire("nsfw", model, prompt) is not None
        failure = (failed.code, failed.failure_message) if failed is not None else None
        return PredictionPlan(latency, config.image_scale, failure=failure, nsfw=nsfw)

    def shutdown(self) -> None:
        self.predictions.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _count_webhook(self, outcome: str) -> None:
        self.stats.webhooks[outcome] += 1

    def delivery_plan(self, model: str, prompt: str) -> DeliveryPlan:
        """Draw the webhook faults for a prediction that just ended."""
        faults = self.faults
        delayed = faults.fire("webhook_delay", model, prompt)
        return DeliveryPlan(
            drop=faults.fire("webhook_drop", model, prompt) is not None,
            delay=delayed.delay if delayed is not None else 0.0,
            duplicate=faults.fire("webhook_duplicate", model, prompt) is not None,
            resign_retries=self.config.webhook_resign_retries,
        )


def key_owner(api_key: str) -> str:
    """Who a request belongs to, for per-key limits, without keeping the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def new_upload_token() -> str:
    return secrets.token_urlsafe(24)


async def wait_done(event: asyncio.Event, timeout: float) -> bool:
    """True if ``event`` is set within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
