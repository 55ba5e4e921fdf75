"""The bureau's read API: sites, their latest state and inventory, and the hourly rollups.

Who sees what: bureau and admin keys see every site; an operator key sees only its own
enterprise's sites (lists are filtered; a named site of another enterprise is answered as
missing, 404); a dispatcher key may list sites and nothing else here. Energy figures (kWh,
PUE from the rollups) are PostgreSQL ``numeric`` and travel as decimal strings, so sums stay
exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

import psycopg
from fastapi import APIRouter, Query
from psycopg.rows import class_row
from pydantic import AwareDatetime, BaseModel

from collectors.state import SiteState, site_states
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow
from jinsuan.kernel.errors import Invalid
from jinsuan.kernel.sites import Site, check_sees, get_site, visible_enterprise

MAX_RANGE = timedelta(days=366)

Everyone = Annotated[Principal, allow(Role.OPERATOR, Role.DISPATCHER, Role.BUREAU, Role.VIEWER,
                                             Role.ADMIN)]
Readers = Annotated[Principal, allow(Role.OPERATOR, Role.BUREAU, Role.VIEWER, Role.ADMIN)]
City = Annotated[str | None, Query(description="Only sites in this city.")]
EnterpriseName = Annotated[str | None, Query(description="Only this enterprise's sites (name).")]
SiteName = Annotated[str | None, Query(description="Only the site with this name.")]
From = Annotated[AwareDatetime | None, Query(alias="from", description="Start (inclusive); "
                                             "default: 24 hours before `to`.")]
To = Annotated[AwareDatetime | None, Query(alias="to", description="End (exclusive); "
                                           "default: now.")]

_SITE_FILTER = (
    " WHERE (%(ent_id)s::bigint IS NULL OR s.enterprise_id = %(ent_id)s)"
    " AND (%(city)s::text IS NULL OR s.city = %(city)s)"
    " AND (%(enterprise)s::text IS NULL OR e.name = %(enterprise)s)"
    " AND (%(site)s::text IS NULL OR s.name = %(site)s)"
)


class SiteOut(BaseModel):
    id: int
    name: str
    city: str
    enterprise_id: int
    enterprise: str
    in_province: bool
    data_centre: str
    agents: int
    last_report_at: datetime | None


class AcceleratorOut(BaseModel):
    uuid: str
    model: str
    vendor: str
    domestic: bool
    rack: str | None
    memory_total_bytes: int | None
    fp16_tflops: float | None
    fp16_estimated: bool
    fp16_source: str
    first_seen: datetime
    last_seen: datetime


class SiteAccelerators(BaseModel):
    site_id: int
    site: str
    fp16_tflops_total: float
    estimated: int
    unknown: int
    accelerators: list[AcceleratorOut]


class HourFigures(BaseModel):
    """The figures of one hour, for a site or summed over an enterprise's sites."""

    hour: datetime
    it_kwh: Decimal | None
    facility_kwh: Decimal | None
    pue: Decimal | None
    fp16_pflops: float
    accelerators: int
    racks: int
    utilization: float | None
    coverage_it: float
    coverage_facility: float
    coverage_accelerators: float


class SiteHour(HourFigures):
    site_id: int
    site: str
    city: str
    enterprise: str
    computed_at: datetime


class EnterpriseHour(HourFigures):
    enterprise_id: int
    enterprise: str
    sites: int


def _readable_site(conn: psycopg.Connection, principal: Principal, site_id: int) -> Site:
    site = get_site(conn, site_id)
    check_sees(principal, site)
    return site


def _time_range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=24)
    if start >= end:
        raise Invalid("`from` must be before `to`", field="from")
    if end - start > MAX_RANGE:
        raise Invalid(f"the range may span at most {MAX_RANGE.days} days", field="to")
    return start, end


def router() -> APIRouter:
    api = APIRouter(tags=["read"])

    @api.get("/v1/sites")
    def list_sites(
        conn: ConnDep, principal: Everyone,
        city: City = None, enterprise: EnterpriseName = None, site: SiteName = None,
    ) -> list[SiteOut]:
        """Sites the caller may see, with their agents and latest report time."""
        params = {"ent_id": visible_enterprise(principal), "city": city,
                  "enterprise": enterprise, "site": site}
        with conn.cursor(row_factory=class_row(SiteOut)) as cur:
            return cur.execute(
                "SELECT s.id, s.name, s.city, s.enterprise_id, e.name AS enterprise,"
                " s.in_province, s.data_centre, count(g.id)::int AS agents,"
                " max(g.last_report_at) AS last_report_at"
                " FROM sites s JOIN enterprises e ON e.id = s.enterprise_id"
                " LEFT JOIN agents g ON g.site_id = s.id AND g.revoked_at IS NULL"
                + _SITE_FILTER +
                " GROUP BY s.id, e.name ORDER BY s.name",
                params,
            ).fetchall()

    @api.get("/v1/sites/{site_id}/latest")
    def latest(
        site_id: int, conn: ConnDep, principal: Readers,
        window_minutes: Annotated[float, Query(gt=0, le=24 * 60)] = 60,
        connected_minutes: Annotated[float, Query(gt=0, le=24 * 60)] = 5,
    ) -> SiteState:
        """The site's state now: accelerators and FP16 PFlops connected, power, live PUE."""
        _readable_site(conn, principal, site_id)
        [state] = site_states(
            conn, site_ids=[site_id], window=timedelta(minutes=window_minutes),
            connected_within=timedelta(minutes=connected_minutes),
        )
        return state

    @api.get("/v1/sites/{site_id}/accelerators")
    def accelerators(site_id: int, conn: ConnDep, principal: Readers) -> SiteAccelerators:
        """The site's accelerator inventory, each with its FP16 figure and that figure's source."""
        site = _readable_site(conn, principal, site_id)
        with conn.cursor(row_factory=class_row(AcceleratorOut)) as cur:
            rows = cur.execute(
                "SELECT uuid, model, vendor, domestic, rack, memory_total_bytes, fp16_tflops,"
                " fp16_estimated, fp16_source, first_seen, last_seen"
                " FROM accelerators WHERE site_id = %s ORDER BY rack NULLS LAST, uuid",
                (site_id,),
            ).fetchall()
        return SiteAccelerators(
            site_id=site.id, site=site.name,
            fp16_tflops_total=sum(a.fp16_tflops or 0.0 for a in rows),
            estimated=sum(a.fp16_estimated for a in rows),
            unknown=sum(a.fp16_tflops is None for a in rows),
            accelerators=rows,
        )

    @api.get("/v1/rollups/sites")
    def site_rollups(
        conn: ConnDep, principal: Readers, start: From = None, end: To = None,
        city: City = None, enterprise: EnterpriseName = None, site: SiteName = None,
    ) -> list[SiteHour]:
        """Hourly rollups per site over ``[from, to)``."""
        start, end = _time_range(start, end)
        params = {"ent_id": visible_enterprise(principal), "city": city,
                  "enterprise": enterprise, "site": site, "start": start, "end": end}
        with conn.cursor(row_factory=class_row(SiteHour)) as cur:
            return cur.execute(
                "SELECT r.site_id, s.name AS site, s.city, e.name AS enterprise, r.hour,"
                " r.it_kwh, r.facility_kwh, r.pue, r.fp16_pflops, r.accelerators, r.racks,"
                " r.utilization, r.coverage_it, r.coverage_facility, r.coverage_accelerators,"
                " r.computed_at"
                " FROM rollup_site_hourly r JOIN sites s ON s.id = r.site_id"
                " JOIN enterprises e ON e.id = s.enterprise_id"
                + _SITE_FILTER +
                " AND r.hour >= %(start)s AND r.hour < %(end)s ORDER BY s.name, r.hour",
                params,
            ).fetchall()

    @api.get("/v1/rollups/enterprises")
    def enterprise_rollups(
        conn: ConnDep, principal: Readers, start: From = None, end: To = None,
        enterprise: EnterpriseName = None,
    ) -> list[EnterpriseHour]:
        """Hourly rollups per enterprise over ``[from, to)``; PUE is a ratio of energy sums."""
        start, end = _time_range(start, end)
        params = {"ent_id": visible_enterprise(principal), "enterprise": enterprise,
                  "start": start, "end": end}
        with conn.cursor(row_factory=class_row(EnterpriseHour)) as cur:
            return cur.execute(
                "SELECT r.enterprise_id, e.name AS enterprise, r.hour, r.sites, r.it_kwh,"
                " r.facility_kwh, r.pue, r.fp16_pflops, r.accelerators, r.racks,"
                " r.utilization, r.coverage_it, r.coverage_facility, r.coverage_accelerators"
                " FROM rollup_enterprise_hourly r JOIN enterprises e ON e.id = r.enterprise_id"
                " WHERE (%(ent_id)s::bigint IS NULL OR r.enterprise_id = %(ent_id)s)"
                " AND (%(enterprise)s::text IS NULL OR e.name = %(enterprise)s)"
                " AND r.hour >= %(start)s AND r.hour < %(end)s ORDER BY e.name, r.hour",
                params,
            ).fetchall()

    return api
