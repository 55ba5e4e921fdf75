"""Money: ``Decimal`` yuan to the fen, with one rounding rule.

Every amount the platform stores or shows (a price, a usage record's cost, an award) is a
``Decimal`` number of yuan with at most two decimals. Arithmetic runs at full ``Decimal``
precision and the result is rounded once, to the fen, half away from zero (``ROUND_HALF_UP``,
as Chinese accounting rounds 四舍五入). Nothing passes through a float.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

FEN = Decimal("0.01")


def to_fen(amount: Decimal) -> Decimal:
    """``amount`` yuan rounded to the fen by the platform's one rule."""
    return amount.quantize(FEN, ROUND_HALF_UP)


def is_fen(amount: Decimal) -> bool:
    """Whether ``amount`` is a finite number of yuan with no part smaller than a fen."""
    return amount.is_finite() and amount == amount.quantize(FEN)


MAX_PRICE = Decimal("99999999.99")  # the store's numeric(12, 2) for a price per hour


def price_problem(text_value: Decimal) -> str | None:
    """Why ``text_value`` is not a price in plain yuan to the fen (``"28.00"``), or None.

    Refused: an exponent (``"1E+2"``), a sign (``"-0.00"``), more than two decimals, anything
    not finite or above :data:`MAX_PRICE`: a price is written as a cashier would write it.
    """
    if not text_value.is_finite() or text_value.is_signed():
        return f"{text_value} is not a price ≥ 0 in yuan"
    if text_value.as_tuple().exponent > 0 or not is_fen(text_value):  # type: ignore[operator]
        return f"{text_value} is not written in yuan to the fen, like 28.00"
    if text_value > MAX_PRICE:
        return f"{text_value} is above the largest price, {MAX_PRICE}"
    return None
