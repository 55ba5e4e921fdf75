"""``/v1/rewards/...``: declarations, the other-support register, assessments, awards and their
approval, explanations, and the year's awards as CSV, XLSX and a PDF summary.

Who may do what: an operator declares facts for its own enterprise and reads its own awards and
their explanations; the bureau reviews declarations, keeps the register, runs assessments and
moves awards (one bureau key proposes, another approves); an admin reads everything and may
declare for a named enterprise. Another enterprise's award or declaration is answered as
missing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow
from jinsuan.kernel.errors import NotFound
from jinsuan.kernel.sites import enterprise_id, visible_enterprise
from rewards import approval, declarations, exports
from rewards.explain import explain
from rewards.store import CALCULATIONS, assess

Bureau = Annotated[Principal, allow(Role.BUREAU)]
Readers = Annotated[Principal, allow(Role.OPERATOR, Role.BUREAU, Role.VIEWER, Role.ADMIN)]
Declarers = Annotated[Principal, allow(Role.OPERATOR, Role.ADMIN)]
Year = Annotated[int, Query(ge=2024, le=2100, description="Asia/Shanghai policy year.")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeclarationIn(_Body):
    kind: str = Field(description=", ".join(declarations.KINDS))
    data_centre: str | None = Field(default=None, max_length=200)
    value: dict[str, Any]
    evidence: list[dict[str, Any]] = Field(max_length=50)
    enterprise: str | None = Field(default=None, description="Admins only: whose it is.")


class ReviewIn(_Body):
    accept: bool
    reason: str = Field(min_length=1, max_length=2000)


class OtherSupportIn(_Body):
    enterprise: str
    measure: str = Field(max_length=10)
    fund: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(ge=0, max_digits=14, decimal_places=2)
    granted_on: date


class AssessIn(_Body):
    year: int = Field(ge=2024, le=2100)
    measure: str | None = Field(default=None, description="One of " + ", ".join(CALCULATIONS)
                                + "; all by default.")


class PayIn(_Body):
    reference: str = Field(min_length=1, max_length=200)


class AdjustIn(_Body):
    delta: Decimal = Field(max_digits=14, decimal_places=2)
    reason: str = Field(min_length=1, max_length=2000)


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/rewards", tags=["rewards"])

    @api.post("/declarations", status_code=201)
    def declare(body: DeclarationIn, conn: ConnDep, principal: Declarers) -> dict[str, int]:
        """Declare a fact the agents cannot measure, with its evidence; pending until the
        bureau reviews it."""
        owner = enterprise_id(conn, body.enterprise) if (
            body.enterprise and principal.role is Role.ADMIN) else None
        number = declarations.declare(conn, principal, kind=body.kind,
                                      data_centre=body.data_centre, value=body.value,
                                      evidence=body.evidence, enterprise_id=owner)
        return {"id": number}

    @api.get("/declarations")
    def list_declarations(conn: ConnDep, principal: Readers) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT d.id, e.name, d.data_centre, d.kind, d.value, d.evidence, d.status,"
            " d.declared_at, d.reviewed_at, d.reason FROM reward_declarations d"
            " JOIN enterprises e ON e.id = d.enterprise_id"
            " WHERE %(ent)s::bigint IS NULL OR d.enterprise_id = %(ent)s ORDER BY d.id",
            {"ent": visible_enterprise(principal)}).fetchall()
        keys = ("id", "enterprise", "data_centre", "kind", "value", "evidence", "status",
                "declared_at", "reviewed_at", "reason")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    @api.post("/declarations/{declaration_id}/review")
    def review(declaration_id: int, body: ReviewIn, conn: ConnDep, principal: Bureau
               ) -> dict[str, str]:
        declarations.review(conn, principal, declaration_id, accept=body.accept,
                            reason=body.reason)
        return {"status": "accepted" if body.accept else "rejected"}

    @api.post("/other-support", status_code=201)
    def other_support(body: OtherSupportIn, conn: ConnDep, principal: Bureau
                      ) -> dict[str, int]:
        """Record support another provincial fund already gave: an award it covers is
        refused, naming the entry."""
        number = declarations.record_other_support(
            conn, principal, enterprise_id=enterprise_id(conn, body.enterprise),
            measure=body.measure, fund=body.fund, amount=body.amount,
            granted_on=body.granted_on)
        return {"id": number}

    @api.post("/assessments")
    def run_assessment(body: AssessIn, conn: ConnDep, principal: Bureau
                       ) -> list[dict[str, Any]]:
        """Assess a year: found unchanged (``created: false``) when neither the data, the
        policy nor the code changed; else a new assessment with its differences listed."""
        measures = [body.measure] if body.measure else list(CALCULATIONS)
        return [vars_of(a) for a in assess(conn, body.year, measures, by_key=principal.key_id)]

    @api.get("/awards")
    def awards(conn: ConnDep, principal: Readers, year: Year,
               measure: Annotated[str | None, Query(max_length=10)] = None,
               ) -> list[dict[str, Any]]:
        """The awards of the latest assessment of each measure for ``year``."""
        rows = conn.execute(
            "SELECT a.id, a.assessment_id, a.measure, a.year, e.name, a.data_centre, a.amount,"
            " a.eligible, a.state, a.payment_reference, a.detail->'reasons',"
            " a.detail->'assumptions'"
            " FROM reward_awards a JOIN enterprises e ON e.id = a.enterprise_id"
            " WHERE a.year = %(year)s AND (%(measure)s::text IS NULL OR a.measure = %(measure)s)"
            " AND (%(ent)s::bigint IS NULL OR a.enterprise_id = %(ent)s)"
            " AND a.assessment_id = (SELECT max(id) FROM reward_assessments s"
            "   WHERE s.year = a.year AND s.measure = a.measure)"
            " ORDER BY a.measure, e.name, a.data_centre NULLS FIRST",
            {"year": year, "measure": measure, "ent": visible_enterprise(principal)},
        ).fetchall()
        keys = ("id", "assessment", "measure", "year", "enterprise", "data_centre", "amount",
                "eligible", "state", "payment_reference", "reasons", "assumptions")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    @api.post("/awards/{award_id}/propose")
    def propose(award_id: int, conn: ConnDep, principal: Bureau) -> dict[str, Any]:
        return vars_of(approval.propose(conn, award_id, principal))

    @api.post("/awards/{award_id}/approve")
    def approve(award_id: int, conn: ConnDep, principal: Bureau) -> dict[str, Any]:
        """Approve with another bureau key than the one that proposed (maker-checker)."""
        return vars_of(approval.approve(conn, award_id, principal))

    @api.post("/awards/{award_id}/pay")
    def pay(award_id: int, body: PayIn, conn: ConnDep, principal: Bureau) -> dict[str, Any]:
        return vars_of(approval.pay(conn, award_id, principal, body.reference))

    @api.post("/awards/{award_id}/adjust", status_code=201)
    def adjust(award_id: int, body: AdjustIn, conn: ConnDep, principal: Bureau
               ) -> dict[str, int]:
        """Correct an approved or paid award by a signed amount, with a reason."""
        return {"adjustment": approval.adjust(conn, award_id, principal, body.delta,
                                              body.reason)}

    @api.get("/explain")
    def explanation(conn: ConnDep, principal: Readers, year: Year,
                    enterprise: Annotated[str, Query(max_length=200)],
                    measure: Annotated[str, Query(max_length=10)],
                    assessment: int | None = None, hours: bool = False) -> dict[str, Any]:
        """An award traced to its sites, hours, rollup rows, declarations and parameters."""
        visible = visible_enterprise(principal)
        if visible is not None and enterprise_id_or_none(conn, enterprise) != visible:
            raise NotFound(f"no award for {enterprise!r}", field="enterprise")
        return explain(conn, enterprise=enterprise, measure=measure, year=year,
                       assessment_id=assessment, with_hours=hours)

    def year_awards(conn: Any, principal: Principal, year: int) -> exports.YearAwards:
        """The rows of :func:`awards` (who sees which award is decided there) with their
        figures and the year's assessments."""
        return exports.year_awards(conn, year, awards(conn, principal, year),
                                   enterprise_id=visible_enterprise(principal))

    @api.get("/awards.csv", response_class=Response,
             responses={200: {"content": {exports.CSV_TYPE: {}}}})
    def awards_csv(conn: ConnDep, principal: Readers, year: Year) -> Response:
        """The awards of ``year`` as CSV (UTF-8 with a BOM, for Excel); an operator gets its
        own enterprise's only."""
        return _file(exports.awards_csv(year_awards(conn, principal, year)), exports.CSV_TYPE,
                     f"jinsuan-rewards-{year}-awards.csv")

    @api.get("/awards.xlsx", response_class=Response,
             responses={200: {"content": {exports.XLSX_TYPE: {}}}})
    def awards_xlsx(conn: ConnDep, principal: Readers, year: Year) -> Response:
        """The awards of ``year`` as an XLSX workbook, with the assessments, the policy
        parameters and the figures behind each amount; an operator gets its own only."""
        return _file(exports.awards_xlsx(year_awards(conn, principal, year)),
                     exports.XLSX_TYPE, f"jinsuan-rewards-{year}-awards.xlsx")

    @api.get("/report.pdf", response_class=Response,
             responses={200: {"content": {exports.PDF_TYPE: {}}}})
    def report(conn: ConnDep, principal: Readers, year: Year) -> Response:
        """The year's summary as PDF: a page per measure with a chart and a table of awards,
        and the assumptions they rest on. An operator's copy is restricted to its enterprise
        and says so on its title page."""
        from rewards.report import report_pdf  # here: the platform starts without matplotlib

        pdf = report_pdf(year_awards(conn, principal, year), generated=datetime.now(UTC))
        return _file(pdf, exports.PDF_TYPE, f"jinsuan-rewards-{year}-report.pdf")

    return api


def _file(content: bytes, media_type: str, filename: str) -> Response:
    """A download: ``filename`` is plain ASCII, so it needs no RFC 5987 encoding."""
    return Response(content, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def enterprise_id_or_none(conn: Any, name: str) -> int | None:
    row = conn.execute("SELECT id FROM enterprises WHERE name = %s", (name,)).fetchone()
    return row[0] if row else None


def vars_of(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}
