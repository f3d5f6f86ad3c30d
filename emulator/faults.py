"""Decide, request by request, whether a configured fault fires.

One seeded ``random.Random`` drives every draw (and the latency draws, so a
``--seed`` run is reproducible). A fault fires when its targeting matches (model,
prompt), its ``count`` is not used up, and the draw falls under its probability;
the draw is only taken when the targeting matches, so unrelated traffic does not
shift a seeded sequence.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping

from emulator.config import FaultSpec

SUBMIT_ERROR_KINDS = ("submit_500", "submit_502", "submit_503")
RESULT_ERROR_KINDS = ("result_500", "result_502", "result_503")


class FaultInjector:
    def __init__(self, faults: Mapping[str, FaultSpec], seed: int | None) -> None:
        self.rng = random.Random(seed)
        self.served: Counter[str] = Counter()
        self._faults: Mapping[str, FaultSpec] = {}
        self._remaining: dict[str, int | None] = {}
        self.any_result_fault = False
        self.configure(faults)

    def configure(
        self, faults: Mapping[str, FaultSpec], rearm: Iterable[str] | None = None
    ) -> None:
        """Install new specs. Kinds in ``rearm`` (all when None) get their ``count`` back.

        A kind that a config update mentions is re-armed even when its knobs did not
        change, so a test can say "fail the next one again" by posting the same spec.
        """
        rearmed = set(faults) if rearm is None else set(rearm)
        for kind, spec in faults.items():
            if kind in rearmed or kind not in self._remaining:
                self._remaining[kind] = spec.count
        for kind in set(self._remaining) - set(faults):
            del self._remaining[kind]
        self._faults = dict(faults)
        # The result handler is the hot path: one flag check when no result fault is set.
        self.any_result_fault = any(kind.startswith("result_") for kind in faults)

    def reseed(self, seed: int | None) -> None:
        self.rng.seed(seed)

    def fire(self, kind: str, model: str, prompt: str) -> FaultSpec | None:
        """The fault's spec if it fires for this request (and counts it), else None."""
        spec = self._faults.get(kind)
        if spec is None or not spec.matches(model, prompt):
            return None
        remaining = self._remaining.get(kind)
        if remaining is not None and remaining <= 0:
            return None
        if spec.probability < 1.0 and self.rng.random() >= spec.probability:
            return None
        if remaining is not None:
            self._remaining[kind] = remaining - 1
        self.served[kind] += 1
        return spec

    def first_firing(self, kinds: tuple[str, ...], model: str, prompt: str) -> str | None:
        """The first of ``kinds`` that fires, in order (at most one error per response)."""
        for kind in kinds:
            if self.fire(kind, model, prompt) is not None:
                return kind
        return None

    def remaining(self) -> dict[str, int | None]:
        return dict(self._remaining)
