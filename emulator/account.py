"""The emulated account's balance, in whole micro-dollars (1 USD = 1,000,000).

WaveSpeed bills a completed prediction per image at the model's price; a failed one is
not billed (the assumption wavequeue's accounting makes too: see its README, "Cost and
budgets"). Kept as integers so a test can compare wavequeue's accounting with the
emulator's to the cent, and beyond. Touched only on the IOLoop thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from emulator.errors import ConfigError

MICROS_PER_USD = 1_000_000
#: What a new emulator's account holds: $1,000.
DEFAULT_BALANCE_MICROS = 1_000 * MICROS_PER_USD


def parse_usd(name: str, raw: Any) -> int:
    """A dollar amount (a JSON number or a string such as "12.50") as micro-dollars."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{name} must be an amount of US dollars")
    try:
        amount = Decimal(repr(raw) if isinstance(raw, float) else str(raw))
    except InvalidOperation:
        raise ConfigError(f"{name} must be an amount of US dollars, not {raw!r}") from None
    if not amount.is_finite():
        raise ConfigError(f"{name} must be finite")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ConfigError(f"{name} must have at most six decimals")
    return int(micros)


def usd_number(micros: int) -> float:
    """Micro-dollars as the JSON number WaveSpeed answers (``156.78``): a float whose
    shortest repr is the exact decimal, for any amount below a billion dollars."""
    return float(Decimal(micros).scaleb(-6))


@dataclass
class Account:
    balance_micros: int = DEFAULT_BALANCE_MICROS
    #: Debited so far (since start or reset), and for how many images and predictions.
    billed_micros: int = 0
    billed_images: int = 0
    predictions_billed: int = 0

    def debit(self, images: int, price_micros: int) -> None:
        """A prediction completed with ``images`` images at ``price_micros`` each."""
        amount = images * price_micros
        self.balance_micros -= amount
        self.billed_micros += amount
        self.billed_images += images
        self.predictions_billed += 1

    def to_json(self) -> dict[str, int]:
        return {
            "balance_micros": self.balance_micros,
            "billed_micros": self.billed_micros,
            "billed_images": self.billed_images,
            "predictions_billed": self.predictions_billed,
        }
