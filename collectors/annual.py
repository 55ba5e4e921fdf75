"""``GET /v1/pue/annual``: each data centre's (or site's) PUE over a policy year, as measure 4
needs it.

The year is the Asia/Shanghai calendar year. The figures come from the store's one definition
of PUE over a period (migration 0013: ``pue_site_range``, ``pue_site_hourly``, ``pue_ratio``),
which the energy dashboard's year-to-date figures and the monthly report read over the same
year: the ratio of the year's facility energy to its IT energy (ISO/IEC 30134-2), summed over
the site-hours in which both were measured, never a mean of hourly ratios. Measure 4 judges a
**data centre** (every site an enterprise registered under one data-centre name), so that is
the default; ``by=site`` gives each site's own figure. Alongside the ratio: how many hours of the
year were measured, how many of those had gaps in their meter data, and which counter quality
flags (``rollup_site_hourly.quality``) the measured hours carry, so a figure resting on thin or
corrected data is visible as such.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query
from pydantic import BaseModel

from collectors.rollup import _PUE
from jinsuan.contract.policytime import hours_in, year_bounds
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow
from jinsuan.kernel.sites import visible_enterprise

FULL_COVERAGE = 0.95  # a measured hour whose IT or facility coverage is below this has gaps

Readers = Annotated[Principal, allow(Role.OPERATOR, Role.BUREAU, Role.VIEWER, Role.ADMIN)]


class By(StrEnum):
    DATA_CENTRE = "data_centre"
    SITE = "site"


# The columns that name a subject (fixed text, never input).
_KEY = {By.DATA_CENTRE: "enterprise_id, data_centre", By.SITE: "site_id"}
_VISIBLE = "(%(ent)s::bigint IS NULL OR h.enterprise_id = %(ent)s)"
_IN_YEAR = "h.hour >= %(start)s AND h.hour < %(end)s"

_FIGURES = """
WITH days AS (
    -- The year's UTC days: whole days from the daily rollup, the part-days at its ends by hour.
    SELECT {key}, h.day, sum(h.it_kwh) AS it_kwh, sum(h.facility_kwh) AS facility_kwh,
           bit_or(h.hours_measured) AS measured
    FROM pue_site_range(%(start)s, %(end)s) h
    WHERE {visible}
    GROUP BY {key}, h.day
),
gaps AS (
    -- Per subject and day, the hours in which one of its sites' IT or facility coverage fell
    -- below the threshold, read from the hours that have such gaps.
    SELECT {key}, date_bin('1 day', h.hour, timestamptz '2000-01-01 00:00+00') AS day,
           bit_or(1 << extract(hour FROM h.hour AT TIME ZONE 'UTC')::integer) AS hours
    FROM pue_site_hourly h
    WHERE least(h.coverage_it, h.coverage_facility) < %(full)s AND {in_year} AND {visible}
    GROUP BY {key}, day
)
-- Hours are bits of their day: an hour measured at several sites of a data centre counts once,
-- and a measured hour has gaps when it is one of the subject's hours with gaps.
SELECT {key}, sum(d.it_kwh), sum(d.facility_kwh),
       pue_ratio(sum(d.facility_kwh), sum(d.it_kwh)),
       sum(bit_count(d.measured::bit(24)))::integer,
       sum(bit_count((d.measured & coalesce(g.hours, 0))::bit(24)))::integer
FROM days d
LEFT JOIN gaps g USING ({key}, day)
GROUP BY {key}
"""

_FLAGS = """
SELECT {key}, f.flag, count(DISTINCT f.hour)::integer
FROM (SELECT {key}, h.hour, unnest(h.quality) AS flag
      FROM pue_site_hourly h
      WHERE h.measured AND h.quality <> '{{}}' AND {in_year} AND {visible}) f
GROUP BY {key}, f.flag
ORDER BY f.flag
"""


class AnnualPue(BaseModel):
    by: By
    enterprise: str
    data_centre: str
    site_id: int | None  # by site; None for a data centre
    site: str | None
    sites: list[str]  # the sites whose energy is summed
    city: str  # their cities, comma-separated
    year: int
    pue: Decimal | None  # to 6 decimals, half to even, like rollup_site_hourly.pue
    it_kwh: Decimal  # over the measured hours
    facility_kwh: Decimal  # over the measured hours
    it_metered_at: list[str]  # where IT energy is measured: ups_output, pdu_output, ...
    hours_in_year: int
    hours_measured: int  # hours in which (a site of the centre) measured both energies
    hours_with_gaps: int  # measured hours whose IT or facility coverage was below FULL_COVERAGE
    quality: dict[str, int]  # counter quality flag -> measured hours that carry it


def router() -> APIRouter:
    api = APIRouter(tags=["rollups"])

    @api.get("/v1/pue/annual", response_model=list[AnnualPue])
    def annual_pue(
        conn: ConnDep,
        principal: Readers,
        year: Annotated[int, Query(ge=2024, le=2100, description="Asia/Shanghai year.")],
        by: Annotated[By, Query(description="data_centre (measure 4's unit, the default: an "
                                            "enterprise's sites under one data-centre name) or "
                                            "site.")] = By.DATA_CENTRE,
    ) -> list[AnnualPue]:
        """Every visible data centre's (or site's) PUE over ``year`` with the data behind it;
        one with no measured hour has ``pue`` null."""
        return annual(conn, year, by, visible_enterprise(principal))

    return api


def annual(conn: psycopg.Connection, year: int, by: By,
           enterprise_id: int | None) -> list[AnnualPue]:
    """The answer for ``year``, per data centre or site of ``enterprise_id`` (None: every
    enterprise), ordered by data centre, enterprise and site."""
    start, end = year_bounds(year)
    params = {"start": start, "end": end, "full": FULL_COVERAGE, "ent": enterprise_id}
    parts = {"key": _KEY[by], "visible": _VISIBLE, "in_year": _IN_YEAR}
    figures = {tuple(r[:-5]): r[-5:] for r in conn.execute(_FIGURES.format(**parts), params)}
    flags: dict[tuple[Any, ...], dict[str, int]] = defaultdict(dict)
    for *subject, flag, hours in conn.execute(_FLAGS.format(**parts), params):
        flags[tuple(subject)][flag] = hours
    members: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for site in conn.execute(
            "SELECT s.id, s.name, s.city, s.enterprise_id, e.name, s.data_centre,"
            " (SELECT coalesce(array_agg(DISTINCT m.measures ORDER BY m.measures), '{}')"
            "  FROM meters m WHERE m.site_id = s.id AND m.role = 'it')"
            " FROM sites s JOIN enterprises e ON e.id = s.enterprise_id"
            " WHERE %(ent)s::bigint IS NULL OR s.enterprise_id = %(ent)s"
            " ORDER BY s.data_centre, e.name, s.name", params):
        members[(site[0],) if by is By.SITE else (site[3], site[5])].append(site)
    hours = hours_in(start, end)
    out = []
    for subject, sites in members.items():
        it_kwh, facility_kwh, pue, measured, gaps = figures.get(subject, (None, None, None, 0, 0))
        first = sites[0]
        out.append(AnnualPue(
            by=by, enterprise=first[4], data_centre=first[5],
            site_id=first[0] if by is By.SITE else None,
            site=first[1] if by is By.SITE else None,
            sites=[s[1] for s in sites], city=", ".join(sorted({s[2] for s in sites})),
            year=year, pue=None if pue is None else pue.quantize(_PUE, ROUND_HALF_EVEN),
            it_kwh=it_kwh or Decimal(0), facility_kwh=facility_kwh or Decimal(0),
            it_metered_at=sorted({m for s in sites for m in s[6]}),
            hours_in_year=hours, hours_measured=measured, hours_with_gaps=gaps,
            quality=flags.get(subject, {})))
    return out
