"""The emulator's knobs: latency distributions, faults and limits, with one parser.

CLI flags and ``POST /_emulator/config`` both end in ``EmulatorConfig.updated``
(a partial update that merges), so the two can never disagree. The config is
immutable; the run-time state that goes with it (the seeded RNG, how many times
each fault may still fire) lives in ``faults.FaultInjector``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from emulator.account import DEFAULT_BALANCE_MICROS, parse_usd
from emulator.errors import ConfigError
from emulator.registry import canonical_model, find_model

DEFAULT_PORT: Final = 8765
DEFAULT_SYNC_TIMEOUT: Final = 60.0

#: Every fault kind and what it does. "Not created" means the POST left no prediction.
FAULT_KINDS: Final[Mapping[str, str]] = {
    "submit_500": "submit answers HTTP 500; no prediction is created",
    "submit_502": "submit answers HTTP 502; no prediction is created",
    "submit_503": "submit answers HTTP 503; no prediction is created",
    "submit_429": "submit answers HTTP 429 with Retry-After (knob retry_after); not created",
    "submit_401": "submit answers HTTP 401 Invalid API key, as for a revoked key; not created",
    "submit_drop_before_create": "the request is read, then the connection is closed; "
    "no prediction is created",
    "submit_drop_after_create": "the prediction IS created, then the connection is closed "
    "without a response",
    "submit_slow": "submit waits `delay` seconds before it is handled",
    "submit_malformed": "the prediction IS created; the 200 response body is truncated JSON",
    "submit_echo_auth": "submit answers HTTP 400 whose message quotes the request's "
    "Authorization header (a careless server); not created",
    "result_500": "a result poll answers HTTP 500",
    "result_502": "a result poll answers HTTP 502",
    "result_503": "a result poll answers HTTP 503",
    "result_429": "a result poll answers HTTP 429 with Retry-After (knob retry_after)",
    "result_drop": "a result poll's connection is closed without a response",
    "result_slow": "a result poll waits `delay` seconds before it is answered",
    "result_malformed": "a result poll answers 200 with truncated JSON",
    "prediction_failed": "the prediction ends `failed` with `code` (default 1403) and `message`",
    "nsfw": "the prediction completes with has_nsfw_contents [true, ...]",
    "webhook_drop": "the prediction's webhook is never sent (every attempt lost on the way)",
    "webhook_delay": "the prediction's webhook waits `delay` seconds before its first attempt",
    "webhook_duplicate": "the prediction's webhook is delivered twice: the same webhook-id "
    "and body, the second once the first was answered",
}

#: Knobs every fault takes (targeting), and the extra ones particular kinds take.
COMMON_KNOBS: Final = frozenset({"probability", "count", "models", "prompt_contains"})
KIND_KNOBS: Final[Mapping[str, frozenset[str]]] = {
    "submit_429": frozenset({"retry_after"}),
    "result_429": frozenset({"retry_after"}),
    "submit_slow": frozenset({"delay"}),
    "result_slow": frozenset({"delay"}),
    "prediction_failed": frozenset({"code", "message"}),
    "webhook_delay": frozenset({"delay"}),
}

#: Task codes (DESIGN.md) and the message a failure carries when none is configured.
TASK_CODE_MESSAGES: Final[Mapping[int, str]] = {
    1200: "Content flagged by moderation",
    1400: "Invalid parameter",
    1401: "Invalid parameter",
    1402: "Media not reachable",
    1403: "Task failed",
    1405: "Task failed",
    5000: "Internal server error",
    5003: "Service unavailable",
    5004: "Task timed out",
}


@dataclass(frozen=True)
class LatencySpec:
    """How long inference takes: ``fixed:S``, ``uniform:MIN:MAX`` or ``lognormal:MEDIAN:SPREAD``.

    ``lognormal`` draws ``median * exp(spread * N(0, 1))``: most draws near the median,
    a long tail of slow ones, like a real GPU queue.
    """

    distribution: str
    first: float
    second: float = 0.0

    @classmethod
    def parse(cls, value: object) -> LatencySpec:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls._checked("fixed", [float(value)])
        if not isinstance(value, str):
            raise ConfigError(f"latency must be a number of seconds or a string, not {value!r}")
        name, *numbers = value.strip().split(":")
        try:
            parsed = [float(number) for number in numbers]
        except ValueError:
            raise ConfigError(f"latency {value!r}: parameters must be numbers") from None
        return cls._checked(name, parsed)

    @classmethod
    def _checked(cls, name: str, numbers: list[float]) -> LatencySpec:
        arity = {"fixed": 1, "uniform": 2, "lognormal": 2}
        if name not in arity:
            raise ConfigError(f"latency distribution must be fixed, uniform or lognormal: {name!r}")
        if len(numbers) != arity[name]:
            usage = {"fixed": "fixed:S", "uniform": "uniform:MIN:MAX"}
            raise ConfigError(f"latency {name} takes {usage.get(name, 'lognormal:MEDIAN:SPREAD')}")
        if any(not math.isfinite(number) or number < 0 for number in numbers):
            raise ConfigError("latency parameters must be finite and >= 0")
        if name == "uniform" and numbers[0] > numbers[1]:
            raise ConfigError("latency uniform:MIN:MAX needs MIN <= MAX")
        if name == "lognormal" and numbers[0] == 0:
            raise ConfigError("latency lognormal needs a median > 0")
        return cls(name, *numbers)

    def draw(self, rng: random.Random) -> float:
        if self.distribution == "uniform":
            return rng.uniform(self.first, self.second)
        if self.distribution == "lognormal":
            return self.first * math.exp(self.second * rng.gauss(0.0, 1.0))
        return self.first

    def __str__(self) -> str:
        numbers = [self.first] if self.distribution == "fixed" else [self.first, self.second]
        return ":".join([self.distribution, *(f"{number:g}" for number in numbers)])


DEFAULT_LATENCY: Final = LatencySpec("lognormal", 3.0, 0.3)


@dataclass(frozen=True)
class FaultSpec:
    """One fault kind's knobs. ``count`` None = unlimited; empty ``models`` = every model."""

    probability: float = 1.0
    count: int | None = None
    models: tuple[str, ...] = ()
    prompt_contains: str | None = None
    delay: float = 1.0
    retry_after: int = 1
    code: int = 1403
    message: str | None = None

    def matches(self, model: str, prompt: str) -> bool:
        """Targeting: does this fault apply to a request for ``model`` with ``prompt``?"""
        if self.models and model not in self.models:
            return False
        return self.prompt_contains is None or self.prompt_contains in prompt

    @property
    def failure_message(self) -> str:
        return self.message or TASK_CODE_MESSAGES.get(self.code, "Task failed")

    def updated(self, kind: str, changes: Mapping[str, Any]) -> FaultSpec:
        allowed = COMMON_KNOBS | KIND_KNOBS.get(kind, frozenset())
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ConfigError(f"fault {kind} has no knob {unknown[0]!r}; knobs: {sorted(allowed)}")
        values: dict[str, Any] = {}
        for knob, raw in changes.items():
            values[knob] = _KNOB_PARSERS[knob](f"{kind}.{knob}", raw)
        return replace(self, **values)

    def to_json(self, kind: str) -> dict[str, Any]:
        knobs = sorted(COMMON_KNOBS | KIND_KNOBS.get(kind, frozenset()))
        shown = {knob: getattr(self, knob) for knob in knobs}
        shown["models"] = list(self.models)
        if "message" in shown:
            shown["message"] = self.failure_message
        return shown


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes the emulator's answers. The API key is never serialized."""

    api_key: str | None = None
    seed: int | None = None
    latency: LatencySpec = DEFAULT_LATENCY
    model_latency: Mapping[str, LatencySpec] = field(default_factory=dict)
    sync_timeout: float = DEFAULT_SYNC_TIMEOUT
    rate_limit_per_minute: int | None = None
    max_concurrency: int | None = None
    image_scale: float = 1.0
    faults: Mapping[str, FaultSpec] = field(default_factory=dict)
    #: Whether each webhook retry gets a new timestamp and signature (WaveSpeed's own
    #: behaviour is not documented). Off, a retry repeats the first attempt's headers, so
    #: one sent more than 5 minutes after the first fails a receiver's freshness check.
    webhook_resign_retries: bool = True
    #: The account balance (micro-dollars): at start and after a reset; setting it through
    #: ``POST /_emulator/config`` (``"balance": 12.5``, US dollars) sets the current one.
    balance_micros: int = DEFAULT_BALANCE_MICROS

    def latency_for(self, model: str) -> LatencySpec:
        return self.model_latency.get(model, self.latency)

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with ``changes`` merged in (the ``POST /_emulator/config`` semantics).

        Top-level keys replace; ``model_latency`` and ``faults`` merge per entry, an
        entry set to ``null`` is removed, and ``"faults": null`` removes them all.
        """
        if not isinstance(changes, Mapping):
            raise ConfigError("the config must be a JSON object")
        values: dict[str, Any] = {}
        for key, raw in changes.items():
            if key == "balance":
                values["balance_micros"] = parse_usd("balance", raw)
                continue
            if key not in _TOP_LEVEL_PARSERS:
                if key == "api_key":
                    raise ConfigError("api_key is set at startup (--api-key) only")
                keys = sorted([*_TOP_LEVEL_PARSERS, "balance"])
                raise ConfigError(f"unknown config key {key!r}; keys: {keys}")
            values[key] = _TOP_LEVEL_PARSERS[key](self, raw)
        return replace(self, **values)

    def to_json(self) -> dict[str, Any]:
        return {
            "api_key_required": self.api_key is not None,
            "seed": self.seed,
            "latency": str(self.latency),
            "model_latency": {model: str(spec) for model, spec in self.model_latency.items()},
            "sync_timeout": self.sync_timeout,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "max_concurrency": self.max_concurrency,
            "image_scale": self.image_scale,
            "faults": {kind: spec.to_json(kind) for kind, spec in self.faults.items()},
            "webhook_resign_retries": self.webhook_resign_retries,
            "balance_micros": self.balance_micros,
        }


def parse_fault_flag(flag: str) -> tuple[str, dict[str, Any]]:
    """``submit_503=0.1,count=2,models=flux-kontext-pro|flux-kontext-max`` -> (kind, knobs).

    The first item is ``kind=probability`` (or just ``kind``: probability 1); the rest
    are ``knob=value``; ``models`` separates several models with ``|``.
    """
    head, *rest = flag.split(",")
    kind, _, probability = head.partition("=")
    knobs: dict[str, Any] = {"probability": probability.strip() or "1"}
    for item in rest:
        knob, separator, value = item.partition("=")
        if not separator:
            raise ConfigError(f"--fault {flag!r}: expected knob=value, got {item!r}")
        knobs[knob.strip()] = value.split("|") if knob.strip() == "models" else value
    return kind.strip(), knobs


# --- value parsers (JSON values, or strings from CLI flags) --------------------------


def _number(name: str, raw: Any, *, minimum: float = 0.0, maximum: float = math.inf) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"{name} must be a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}")
    return value


def _integer(name: str, raw: Any, *, minimum: int = 0) -> int:
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ConfigError(f"{name} must be an integer")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}")
    return value


def _boolean(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0"):
        return raw.lower() in ("true", "1")
    raise ConfigError(f"{name} must be true or false")


def _optional_integer(name: str, raw: Any, *, minimum: int) -> int | None:
    return None if raw is None else _integer(name, raw, minimum=minimum)


def _text(name: str, raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ConfigError(f"{name} must be a string")
    return raw


def _model_name(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or find_model(raw) is None:
        raise ConfigError(f"{name}: unknown model {raw!r}")
    return canonical_model(raw)


def _models(name: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ConfigError(f"{name} must be a list of model names")
    return tuple(_model_name(name, item) for item in items)


_KNOB_PARSERS: Final[Mapping[str, Callable[[str, Any], object]]] = {
    "probability": lambda name, raw: _number(name, raw, maximum=1.0),
    "count": lambda name, raw: _optional_integer(name, raw, minimum=0),
    "models": _models,
    "prompt_contains": _text,
    "delay": lambda name, raw: _number(name, raw, maximum=3600.0),
    "retry_after": lambda name, raw: _integer(name, raw, minimum=0),
    "code": lambda name, raw: _integer(name, raw, minimum=1),
    "message": _text,
}


def _merge_faults(config: EmulatorConfig, raw: Any) -> dict[str, FaultSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("faults must be an object of fault kind -> knobs (or null)")
    merged = dict(config.faults)
    for kind, knobs in raw.items():
        if kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {kind!r}; kinds: {', '.join(FAULT_KINDS)}")
        if knobs is None:
            merged.pop(kind, None)
            continue
        if isinstance(knobs, int | float) and not isinstance(knobs, bool):
            changes: Any = {"probability": knobs}  # a bare number is the probability
        else:
            changes = knobs
        if not isinstance(changes, Mapping):
            raise ConfigError(f"fault {kind} must be an object of knobs, a probability or null")
        merged[kind] = merged.get(kind, FaultSpec()).updated(kind, changes)
    return merged


def _merge_model_latency(config: EmulatorConfig, raw: Any) -> dict[str, LatencySpec]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("model_latency must be an object of model -> latency (or null)")
    merged = dict(config.model_latency)
    for model, spec in raw.items():
        name = _model_name("model_latency", model)
        if spec is None:
            merged.pop(name, None)
        else:
            merged[name] = LatencySpec.parse(spec)
    return merged


_TOP_LEVEL_PARSERS: Final[Mapping[str, Callable[[EmulatorConfig, Any], object]]] = {
    "seed": lambda _config, raw: None if raw is None else _integer("seed", raw, minimum=0),
    "latency": lambda _config, raw: LatencySpec.parse(raw),
    "model_latency": _merge_model_latency,
    "sync_timeout": lambda _config, raw: _number("sync_timeout", raw, maximum=3600.0),
    "rate_limit_per_minute": lambda _config, raw: _optional_integer(
        "rate_limit_per_minute", raw, minimum=1
    ),
    "max_concurrency": lambda _config, raw: _optional_integer("max_concurrency", raw, minimum=1),
    "image_scale": lambda _config, raw: _number("image_scale", raw, minimum=0.01, maximum=4.0),
    "faults": _merge_faults,
    "webhook_resign_retries": lambda _config, raw: _boolean("webhook_resign_retries", raw),
}
