"""The site contract's calendar and money rules, which every reader of a policy figure shares."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from jinsuan.contract.money import is_fen, to_fen
from jinsuan.contract.policytime import hours_in, month_bounds, year_bounds


def test_a_policy_year_starts_at_midnight_in_beijing():
    start, end = year_bounds(2025)
    assert start == datetime(2024, 12, 31, 16, tzinfo=UTC)
    assert end == datetime(2025, 12, 31, 16, tzinfo=UTC)
    assert hours_in(start, end) == 365 * 24
    assert hours_in(*year_bounds(2024)) == 366 * 24  # a leap year; Beijing has no DST


@pytest.mark.parametrize(("year", "month", "start", "end"), [
    (2025, 1, datetime(2024, 12, 31, 16, tzinfo=UTC), datetime(2025, 1, 31, 16, tzinfo=UTC)),
    (2025, 12, datetime(2025, 11, 30, 16, tzinfo=UTC), datetime(2025, 12, 31, 16, tzinfo=UTC)),
    (2024, 2, datetime(2024, 1, 31, 16, tzinfo=UTC), datetime(2024, 2, 29, 16, tzinfo=UTC)),
])
def test_a_policy_month_in_utc(year, month, start, end):
    assert month_bounds(year, month) == (start, end)


@pytest.mark.parametrize(("amount", "rounded"), [
    ("2.675", "2.68"),    # exact in Decimal, so half up applies (a float would give 2.67)
    ("0.005", "0.01"),
    ("0.0049999", "0.00"),
    ("-0.005", "-0.01"),  # half away from zero
    ("280320", "280320.00"),
])
def test_money_rounds_once_to_the_fen_half_up(amount, rounded):
    assert str(to_fen(Decimal(amount))) == rounded


def test_is_fen():
    assert is_fen(Decimal("28.00")) and is_fen(Decimal("0.01"))
    assert not is_fen(Decimal("0.001"))
    assert not is_fen(Decimal("NaN")) and not is_fen(Decimal("Infinity"))
