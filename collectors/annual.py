"""``GET /v1/pue/annual``: each site's PUE over a policy year, as measure 4 needs it.

The year is the Asia/Shanghai calendar year. Annual PUE is the ratio of the year's facility
energy to its IT energy (ISO/IEC 30134-2), summed over the hours in which both were measured,
never a mean of hourly ratios. Alongside it: how many hours of the year those are, and how many
hours had gaps in their meter data, so a figure resting on thin data is visible as such.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from jinsuan.contract.policytime import hours_in, year_bounds
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow
from jinsuan.kernel.sites import visible_enterprise

FULL_COVERAGE = 0.95  # an hour with less meter coverage than this counts as having gaps

Readers = Annotated[Principal, allow(Role.OPERATOR, Role.BUREAU, Role.ADMIN)]


class AnnualPue(BaseModel):
    site_id: int
    site: str
    city: str
    enterprise: str
    year: int
    pue: Decimal | None
    it_kwh: Decimal
    facility_kwh: Decimal
    it_metered_at: list[str]  # where IT energy is measured: ups_output, pdu_output, ...
    hours_in_year: int
    hours_measured: int  # hours with both energies measured
    hours_with_gaps: int  # measured hours whose meter coverage was below FULL_COVERAGE


def router() -> APIRouter:
    api = APIRouter(tags=["rollups"])

    @api.get("/v1/pue/annual", response_model=list[AnnualPue])
    def annual_pue(
        conn: ConnDep,
        principal: Readers,
        year: Annotated[int, Query(ge=2024, le=2100, description="Asia/Shanghai year.")],
    ) -> list[AnnualPue]:
        """Every visible site's PUE over ``year`` with the data behind it."""
        start, end = year_bounds(year)
        rows = conn.execute(
            "SELECT s.id, s.name, s.city, e.name,"
            " sum(r.facility_kwh) FILTER (WHERE r.it_kwh IS NOT NULL"
            "   AND r.facility_kwh IS NOT NULL)"
            " / NULLIF(sum(r.it_kwh) FILTER (WHERE r.it_kwh IS NOT NULL"
            "   AND r.facility_kwh IS NOT NULL), 0),"
            " coalesce(sum(r.it_kwh) FILTER (WHERE r.facility_kwh IS NOT NULL), 0),"
            " coalesce(sum(r.facility_kwh) FILTER (WHERE r.it_kwh IS NOT NULL), 0),"
            " (SELECT coalesce(array_agg(DISTINCT m.measures ORDER BY m.measures), '{}')"
            "  FROM meters m WHERE m.site_id = s.id AND m.role = 'it'),"
            " count(r.hour) FILTER (WHERE r.it_kwh IS NOT NULL AND r.facility_kwh IS NOT NULL),"
            " count(r.hour) FILTER (WHERE r.it_kwh IS NOT NULL AND r.facility_kwh IS NOT NULL"
            "   AND least(r.coverage_it, r.coverage_facility) < %(full)s)"
            " FROM sites s JOIN enterprises e ON e.id = s.enterprise_id"
            " LEFT JOIN rollup_site_hourly r ON r.site_id = s.id"
            "   AND r.hour >= %(start)s AND r.hour < %(end)s"
            " WHERE %(ent)s::bigint IS NULL OR s.enterprise_id = %(ent)s"
            " GROUP BY s.id, s.name, s.city, e.name ORDER BY s.name",
            {"start": start, "end": end, "full": FULL_COVERAGE,
             "ent": visible_enterprise(principal)},
        ).fetchall()
        hours = hours_in(start, end)
        return [
            AnnualPue(site_id=r[0], site=r[1], city=r[2], enterprise=r[3], year=year, pue=r[4],
                      it_kwh=r[5], facility_kwh=r[6], it_metered_at=list(r[7]),
                      hours_in_year=hours, hours_measured=r[8], hours_with_gaps=r[9])
            for r in rows
        ]

    return api
