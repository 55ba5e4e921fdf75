"""The bureau's month: an Asia/Shanghai calendar month, as a UTC range for the queries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from jinsuan.contract.policytime import hours_in, month_bounds


class ReportError(ValueError):
    """Input the report cannot use, or a machine it cannot draw on; the message says the fix."""


@dataclass(frozen=True, slots=True)
class Month:
    year: int
    month: int

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        """The first instant of the month in Beijing time, in UTC."""
        return month_bounds(self.year, self.month)[0]

    @property
    def end(self) -> datetime:
        """The first instant of the next month in Beijing time, in UTC (exclusive)."""
        return month_bounds(self.year, self.month)[1]

    @property
    def last_instant(self) -> datetime:
        """The range's "to" as Grafana's "This month" sends it: the month's last millisecond.

        ``$__timeFilter`` is an inclusive BETWEEN, so sending :attr:`end` itself would count
        the next month's first hour.
        """
        return self.end - timedelta(milliseconds=1)

    @property
    def hours(self) -> int:
        return hours_in(self.start, self.end)


def parse_month(text: str) -> Month:
    """``YYYY-MM`` as a :class:`Month`; anything else is refused saying what was expected."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if match is None:
        raise ReportError(f"month {text!r} is not in the form YYYY-MM (for example 2025-06)")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise ReportError(f"month {text!r}: {month} is not a month (01 to 12)")
    if year < 2000:
        raise ReportError(f"month {text!r}: the year {year} is before any data this platform has")
    return Month(year, month)
