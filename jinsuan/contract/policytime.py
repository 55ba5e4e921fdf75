"""The policy's calendar: dates and periods are Asia/Shanghai, instants are stored in UTC.

A policy year or month (an annual PUE, a monthly report, a reward year) starts at midnight
Beijing time; these helpers turn it into the aware ``[start, end)`` pair the store is queried
with, so no reader writes its own bounds.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


def year_bounds(year: int) -> tuple[datetime, datetime]:
    """The Asia/Shanghai calendar year ``year`` as a UTC ``[start, end)`` pair."""
    return _utc(datetime(year, 1, 1, tzinfo=SHANGHAI)), _utc(datetime(year + 1, 1, 1,
                                                                      tzinfo=SHANGHAI))


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """The Asia/Shanghai calendar month as a UTC ``[start, end)`` pair."""
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    return (_utc(datetime(year, month, 1, tzinfo=SHANGHAI)),
            _utc(datetime(*following, 1, tzinfo=SHANGHAI)))


def hours_in(start: datetime, end: datetime) -> int:
    """Whole hours in ``[start, end)``; Beijing time has no daylight saving, so a year is
    8,760 or 8,784 hours."""
    return int((end - start).total_seconds() // 3600)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def days_bounds(first: date, last: date) -> tuple[datetime, datetime]:
    """The Asia/Shanghai calendar days ``first`` .. ``last`` (inclusive) as a UTC
    ``[start, end)`` pair."""
    after = last + timedelta(days=1)
    return (_utc(datetime(first.year, first.month, first.day, tzinfo=SHANGHAI)),
            _utc(datetime(after.year, after.month, after.day, tzinfo=SHANGHAI)))


def parse_moment(text: str) -> datetime:
    """``text`` as an instant, in UTC: a day ``YYYY-MM-DD`` is its midnight Beijing time (as
    the policy's dates are), a date and time must carry its time zone; a ``ValueError`` says
    which it is not."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return days_bounds(day, day)[0]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("is not a day or a moment") from None
    if moment.tzinfo is None:
        raise ValueError("has no time zone")
    return _utc(moment)
