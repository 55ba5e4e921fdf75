"""``GET /v1/usage``: metered usage records and their totals, for vouchers and settlement.

A dispatcher reads its own tenant's records, an operator the records of runs at its
enterprise's sites, the bureau and admins everything. Adjustments are records that carry
differences, so a total is the plain sum of originals and adjustments.

``from`` and ``to`` are each a day (``2026-03-01``: its midnight, Asia/Shanghai, as the policy's
dates are) or a moment with its time zone; a moment without one is refused, naming the field,
since a bill must not depend on the server's guess. ``to`` defaults to now and ``from`` to the
start of the Asia/Shanghai month ``to`` ends, so a bare ``GET /v1/usage`` is this month so far.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from jinsuan.contract.policytime import SHANGHAI, month_bounds, parse_moment
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow
from jinsuan.kernel.errors import Invalid

UsageReaders = Annotated[
    Principal, allow(Role.DISPATCHER, Role.OPERATOR, Role.BUREAU, Role.VIEWER, Role.ADMIN)
]
MAX_SPAN = timedelta(days=366)
_WHEN = ("a day, YYYY-MM-DD (its midnight, Asia/Shanghai), or a moment with its time zone,"
         " e.g. 2026-03-01T08:00:00+08:00 (in a URL, + is written %2B) or 2026-03-01T00:00:00Z")


class UsageRecord(BaseModel):
    id: int
    run_id: str
    job_id: str
    tenant: str
    project: str
    site: str
    model: str
    accelerators: int
    started_at: datetime | None
    ended_at: datetime | None
    accelerator_hours: Decimal
    fp16_pflop_hours: Decimal
    energy_kwh: Decimal | None
    energy_method: str
    yuan_per_accelerator_hour: Decimal
    cost_yuan: Decimal
    adjusts: int | None
    reason: str
    recorded_at: datetime
    claimed_started_at: datetime | None = Field(
        description="The start the site reported; started_at is what was billed.")
    claimed_ended_at: datetime | None = Field(
        description="The end the site reported (none when it ended without a report).")
    bounded_by: str = Field(
        description="Why the billed times differ from the claims; empty when they do not.")


class UsageTotals(BaseModel):
    records: int
    accelerator_hours: Decimal
    fp16_pflop_hours: Decimal
    energy_kwh: Decimal
    cost_yuan: Decimal


class UsageReport(BaseModel):
    records: list[UsageRecord]
    totals: UsageTotals


def usage_router() -> APIRouter:
    api = APIRouter(tags=["usage"])

    @api.get("/v1/usage", response_model=UsageReport)
    def usage(
        conn: ConnDep,
        principal: UsageReaders,
        start_text: Annotated[str | None, Query(
            alias="from", description=f"Start (inclusive): {_WHEN}. Default: the start of the"
            " Asia/Shanghai month that `to` ends.")] = None,
        end_text: Annotated[str | None, Query(
            alias="to", description=f"End (exclusive): {_WHEN}. Default: now.")] = None,
        tenant: Annotated[str | None, Query(description="Only this tenant's records.")] = None,
        site: Annotated[str | None, Query(description="Only runs at this site (name).")] = None,
        project: Annotated[str | None, Query(description="Only this project's.")] = None,
    ) -> UsageReport:
        """Usage records whose run ended in [from, to), oldest first, with their totals; with
        neither bound given, this Asia/Shanghai month so far."""
        end = _moment("to", end_text) if end_text is not None else datetime.now(UTC)
        start = _moment("from", start_text) if start_text is not None else _month_start(end)
        if end <= start:
            raise Invalid("'to' must be after 'from'", field="to")
        if end - start > MAX_SPAN:
            raise Invalid(f"a query spans at most {MAX_SPAN.days} days", field="to")
        where = ["u.ended_at >= %s", "u.ended_at < %s"]
        params: list[object] = [start, end]
        if principal.role is Role.DISPATCHER:
            where.append("u.tenant = %s")
            params.append(principal.tenant)
        elif principal.role is Role.OPERATOR:
            where.append("s.enterprise_id = %s")
            params.append(principal.enterprise_id)
        for column, value in (("u.tenant", tenant), ("s.name", site), ("u.project", project)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        rows = conn.execute(
            "SELECT u.id, u.run_id, u.job_id, u.tenant, u.project, s.name, u.model,"
            " u.accelerators, u.started_at, u.ended_at, u.accelerator_hours,"
            " u.fp16_pflop_hours, u.energy_kwh, u.energy_method, u.yuan_per_accelerator_hour,"
            " u.cost_yuan, u.adjusts, u.reason, u.recorded_at, u.claimed_started_at,"
            " u.claimed_ended_at, u.bounded_by"
            " FROM usage_records u JOIN sites s ON s.id = u.site_id"
            f" WHERE {' AND '.join(where)} ORDER BY u.ended_at, u.id",
            params,
        ).fetchall()
        records = [UsageRecord(**dict(zip(UsageRecord.model_fields, row, strict=True)))
                   for row in rows]
        zero = Decimal(0)
        totals = UsageTotals(
            records=len(records),
            accelerator_hours=sum((r.accelerator_hours for r in records), zero),
            fp16_pflop_hours=sum((r.fp16_pflop_hours for r in records), zero),
            energy_kwh=sum((r.energy_kwh or zero for r in records), zero),
            cost_yuan=sum((r.cost_yuan for r in records), zero),
        )
        return UsageReport(records=records, totals=totals)

    return api


def _moment(name: str, text: str) -> datetime:
    """A day (its midnight, Asia/Shanghai) or a moment that carries its time zone."""
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise Invalid(f"{text!r} {exc}: give {_WHEN}", field=name) from None


def _month_start(end: datetime) -> datetime:
    """The start of the Asia/Shanghai month holding the last instant before ``end``."""
    last = (end - timedelta(microseconds=1)).astimezone(SHANGHAI)
    return month_bounds(last.year, last.month)[0]
