"""Money as whole micro-dollars (1 USD = 1,000,000), never as floats.

Prices, costs, spend counters, budgets and the account balance are all integers of
micro-dollars: sums stay exact (a thousand $0.04 images are exactly $40.000000, which
floats cannot promise), Redis adds them with ``HINCRBY``, and a Lua script compares
them without rounding. Text in and out goes through ``Decimal``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from worker.constants import TENANT_PATTERN

MICROS_PER_USD = 1_000_000
_MICRO = Decimal(1).scaleb(-6)


def usd_to_micros(value: object) -> int:
    """``"12.50"``, ``12.5``, ``Decimal("0.04")`` -> micro-dollars. Refuses anything that
    is not a finite amount with at most six decimals (a float is read by its shortest
    repr, so ``0.04`` is exactly 40,000). ``ValueError`` in words otherwise."""
    if isinstance(value, bool):
        raise ValueError("must be an amount of US dollars, not a boolean")
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        amount = Decimal(text.strip().removeprefix("$"))
    except InvalidOperation:
        raise ValueError(f"must be an amount of US dollars like 12.50, not {text!r}") from None
    if not amount.is_finite():
        raise ValueError("must be a finite amount of US dollars")
    micros = amount / _MICRO
    if micros != micros.to_integral_value():
        raise ValueError("must have at most six decimals (whole micro-dollars)")
    return int(micros)


def usd_text_to_micros_rounded(text: str) -> int:
    """A dollar amount someone else wrote (a JSON number's text, maybe with float noise
    such as ``0.30000000000000004``), rounded to whole micro-dollars."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {text[:40]!r}") from None
    if not amount.is_finite():
        raise ValueError("not a finite amount")
    return int((amount / _MICRO).to_integral_value())


def micros_to_decimal(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-6)


def format_usd(micros: int, *, sign: bool = False) -> str:
    """``40000`` -> ``"0.04"``: at least two decimals, more only when the amount has them."""
    amount = micros_to_decimal(abs(micros)).normalize()
    digits = max(2, -amount.as_tuple().exponent) if amount else 2  # type: ignore[operator]
    text = f"{amount:.{digits}f}"
    if micros < 0:
        return "-" + text
    return ("+" + text) if sign else text


def dollars(micros: int) -> str:
    """``"$0.04"`` (``"-$1.20"`` when negative), for people."""
    text = format_usd(micros)
    return "-$" + text[1:] if text.startswith("-") else "$" + text


#: The name that stands for "every tenant without a cap of its own".
ANY_TENANT = "*"


def parse_tenant_amounts(text: str) -> dict[str, int]:
    """``"acme=50, beta=12.50, *=5"`` -> ``{"acme": 50000000, ...}`` (micro-dollars).
    ``ValueError`` naming the first bad entry."""
    amounts: dict[str, int] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, separator, amount = (piece.strip() for piece in entry.partition("="))
        if not separator:
            raise ValueError(f"{entry!r}: expected tenant=amount")
        if name != ANY_TENANT and not re.fullmatch(TENANT_PATTERN, name):
            raise ValueError(f"{name!r} is not a tenant name ([A-Za-z0-9_.-], 1-64) or *")
        try:
            micros = usd_to_micros(amount)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if micros < 0:
            raise ValueError(f"{name}: must not be negative")
        amounts[name] = micros
    return amounts
