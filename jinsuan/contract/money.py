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
