"""``/v1/vouchers/...``: applicants, applications, review, vouchers, draws and settlements.

Who may do what: an admin registers applicants, binds tenants to them and records providers'
credit codes; a dispatcher applies for the applicant its tenant acts for and reads that
applicant's applications, vouchers and draws; an operator reads the vouchers and statement of
its own enterprise as a provider; the bureau reviews (one key recommends, another approves),
keeps the affiliation register, revokes, claws back and settles. Another party's voucher (or
statement) is answered as missing. Statements come as JSON and as CSV, XLSX and PDF files
(:mod:`rewards.vouchers.exports`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow
from jinsuan.kernel.errors import NotFound
from jinsuan.kernel.sites import enterprise_id
from rewards.vouchers import drawing, exports, issuing, parties, settling

Admin = Annotated[Principal, allow(Role.ADMIN)]
Bureau = Annotated[Principal, allow(Role.BUREAU)]
BureauOrAdmin = Annotated[Principal, allow(Role.BUREAU, Role.ADMIN)]
Appliers = Annotated[Principal, allow(Role.DISPATCHER, Role.APPLICANT)]
Parties = Annotated[Principal, allow(Role.DISPATCHER, Role.APPLICANT, Role.OPERATOR, Role.BUREAU,
                                           Role.VIEWER, Role.ADMIN)]
Applicants = Annotated[Principal, allow(Role.DISPATCHER, Role.APPLICANT, Role.BUREAU,
                                              Role.VIEWER, Role.ADMIN)]
Providers = Annotated[Principal, allow(Role.OPERATOR, Role.BUREAU, Role.VIEWER, Role.ADMIN)]
Enterprise = Annotated[str, Query(max_length=200)]
Day = Annotated[date, Query(description="Any day of the period.")]
FILES = {200: {"content": {media: {} for media in exports.MEDIA_TYPES.values()}}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApplicantIn(_Body):
    credit_code: str = Field(max_length=40)
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(description=", ".join(parties.KINDS))
    in_province: bool


class TenantIn(_Body):
    tenant: str = Field(min_length=1, max_length=128)


class CreditCodeIn(_Body):
    credit_code: str = Field(max_length=40)


class AffiliationIn(_Body):
    code_a: str = Field(max_length=40)
    code_b: str = Field(max_length=40)
    note: str = Field(min_length=1, max_length=500)


class ApplicationIn(_Body):
    provider: str = Field(min_length=1, max_length=200)
    contract_id: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(gt=0, max_digits=14, decimal_places=2)
    starts_on: date
    ends_on: date
    special: bool = False
    special_basis: str = Field(default="", max_length=500)
    evidence: list[dict[str, Any]] = Field(max_length=50)


class ReasonIn(_Body):
    reason: str = Field(min_length=1, max_length=2000)


class SettleIn(_Body):
    provider: str = Field(min_length=1, max_length=200)
    day: date = Field(description="Any day of the period to settle.")


class PayIn(_Body):
    reference: str = Field(min_length=1, max_length=200)


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/vouchers", tags=["vouchers"])

    @api.post("/applicants", status_code=201)
    def register(body: ApplicantIn, conn: ConnDep, _: Admin) -> dict[str, Any]:
        made = parties.register_applicant(conn, code=body.credit_code, name=body.name,
                                          kind=body.kind, in_province=body.in_province)
        return {"id": made.id, "credit_code": made.credit_code}

    @api.post("/applicants/{applicant_id}/tenants", status_code=201)
    def bind(applicant_id: int, body: TenantIn, conn: ConnDep, _: Admin) -> dict[str, str]:
        parties.bind_tenant(conn, applicant_id, body.tenant)
        return {"tenant": body.tenant}

    @api.put("/providers/{enterprise}/credit-code")
    def provider_code(enterprise: str, body: CreditCodeIn, conn: ConnDep, _: Admin
                      ) -> dict[str, str]:
        code = parties.set_enterprise_code(conn, enterprise_id(conn, enterprise),
                                           body.credit_code)
        return {"credit_code": code}

    @api.post("/affiliations", status_code=201)
    def affiliations(body: AffiliationIn, conn: ConnDep, principal: Bureau) -> dict[str, str]:
        parties.affiliate(conn, principal, body.code_a, body.code_b, body.note)
        return {"status": "recorded"}

    @api.post("/applications", status_code=201)
    def apply(body: ApplicationIn, conn: ConnDep, principal: Appliers) -> dict[str, int]:
        """Apply for a voucher against a compute service contract with a Shanxi provider."""
        number = issuing.apply(conn, principal, issuing.Contract(
            provider=body.provider, contract_id=body.contract_id, amount=body.amount,
            starts_on=body.starts_on, ends_on=body.ends_on, special=body.special,
            special_basis=body.special_basis, evidence=body.evidence))
        return {"id": number}

    @api.get("/applications")
    def applications(conn: ConnDep, principal: Parties) -> list[dict[str, Any]]:
        where, params = _scope(conn, principal, "a.applicant_id", "a.provider_id")
        rows = conn.execute(
            "SELECT a.id, p.name, e.name, a.contract_id, a.contract_amount, a.starts_on,"
            " a.ends_on, a.special, a.status, a.reason, a.submitted_at"
            " FROM voucher_applications a JOIN voucher_applicants p ON p.id = a.applicant_id"
            " JOIN enterprises e ON e.id = a.provider_id WHERE " + where + " ORDER BY a.id",
            params).fetchall()
        keys = ("id", "applicant", "provider", "contract_id", "amount", "starts_on", "ends_on",
                "special", "status", "reason", "submitted_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    @api.post("/applications/{application_id}/recommend")
    def recommend(application_id: int, conn: ConnDep, principal: Bureau) -> dict[str, str]:
        """The maker's step of the review."""
        issuing.recommend(conn, principal, application_id)
        return {"status": "recommended"}

    @api.post("/applications/{application_id}/approve")
    def approve(application_id: int, conn: ConnDep, principal: Bureau) -> dict[str, Any]:
        """The checker's step, by another bureau key: the voucher is issued."""
        issued = issuing.approve(conn, principal, application_id)
        return {"voucher": issued.voucher_id, "face_value": issued.face_value,
                "asked": issued.asked, "why": issued.why}

    @api.post("/applications/{application_id}/decline")
    def decline(application_id: int, body: ReasonIn, conn: ConnDep, principal: Bureau
                ) -> dict[str, str]:
        issuing.decline(conn, principal, application_id, body.reason)
        return {"status": "declined"}

    @api.get("")
    def vouchers(conn: ConnDep, principal: Parties) -> list[dict[str, Any]]:
        where, params = _scope(conn, principal, "v.applicant_id", "v.provider_id")
        ids = [r[0] for r in conn.execute(
            "SELECT v.id FROM vouchers v WHERE " + where + " ORDER BY v.id", params)]
        return [_without_draws(settling.voucher_statement(conn, i)) for i in ids]

    @api.get("/{voucher_id}")
    def voucher(voucher_id: int, conn: ConnDep, principal: Parties) -> dict[str, Any]:
        """A voucher's statement: issued, each draw with its job and usage record (and each
        record that drew nothing, with why), balance."""
        found = settling.voucher_statement(conn, voucher_id)
        where, params = _scope(conn, principal, "v.applicant_id", "v.provider_id")
        if not conn.execute("SELECT 1 FROM vouchers v WHERE v.id = %(voucher)s AND " + where,
                            {**params, "voucher": voucher_id}).fetchone():
            raise NotFound(f"no voucher {voucher_id}", field="voucher")
        return found

    @api.post("/{voucher_id}/revoke")
    def revoke(voucher_id: int, body: ReasonIn, conn: ConnDep, principal: Bureau
               ) -> dict[str, Decimal]:
        """Revoke a voucher: its unspent balance returns to the pool."""
        return {"returned_to_pool": issuing.revoke(conn, principal, voucher_id, body.reason)}

    @api.post("/{voucher_id}/clawback")
    def clawback(voucher_id: int, body: ReasonIn, conn: ConnDep, principal: Bureau
                 ) -> dict[str, Decimal]:
        """After fraud: reverse the voucher's draws and revoke it."""
        return {"reversed": issuing.clawback(conn, principal, voucher_id, body.reason)}

    @api.post("/draws/run")
    def run_draws(conn: ConnDep, _: BureauOrAdmin) -> dict[str, int]:
        """Decide the draws of usage records not decided yet, now (the platform also does it
        in the background)."""
        return {"decided": drawing.draw_pending(conn)}

    @api.get("/draws/by-job/{job_id}")
    def job_draws(job_id: str, conn: ConnDep, principal: Parties) -> list[dict[str, Any]]:
        """What each usage record of a job drew from its voucher, or why nothing."""
        job = conn.execute(
            "SELECT j.tenant, array_agg(s.enterprise_id) FROM jobs j"
            " LEFT JOIN runs r ON r.job_id = j.id LEFT JOIN sites s ON s.id = r.site_id"
            " WHERE j.id = %s GROUP BY j.tenant", (job_id,)).fetchone()
        applicant = parties.applicant_of_tenant(conn, job[0]) if job is not None else None
        if job is None or (principal.role is Role.DISPATCHER and job[0] != principal.tenant) \
                or (principal.role is Role.OPERATOR and principal.enterprise_id not in job[1]) \
                or (principal.role is Role.APPLICANT
                    and (applicant is None or applicant.id != principal.applicant_id)):
            raise NotFound(f"no job {job_id}", field="job")
        rows = conn.execute(
            "SELECT usage_record_id, voucher_id, amount, reason, drawn_at FROM voucher_draws"
            " WHERE job_id = %s ORDER BY usage_record_id", (job_id,)).fetchall()
        keys = ("usage_record", "voucher", "amount", "reason", "drawn_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    @api.get("/statements/provider")
    def provider_statement(conn: ConnDep, principal: Providers, enterprise: Enterprise,
                           day: Day) -> dict[str, Any]:
        """What the bureau owes a provider for the settlement period holding ``day``."""
        return settling.provider_statement(conn, _provider(conn, principal, enterprise), day)

    @api.get("/statements/provider.{kind}", response_class=Response, responses=FILES)
    def provider_statement_file(kind: exports.Format, conn: ConnDep, principal: Providers,
                                enterprise: Enterprise, day: Day) -> Response:
        """The provider's statement for the settlement period holding ``day`` as CSV, XLSX or
        PDF: each draw traced to its usage record, run, job, voucher and applicant, settled or
        not, and the totals. An operator gets its own enterprise's only."""
        made = exports.provider_statement(conn, _provider(conn, principal, enterprise), day)
        return _download(made, kind)

    @api.get("/statements/applicant.{kind}", response_class=Response, responses=FILES)
    def applicant_statement_file(kind: exports.Format, conn: ConnDep, principal: Applicants,
                                 applicant: Annotated[int, Query()]) -> Response:
        """An applicant's statement as CSV, XLSX or PDF: every voucher (issued, drawn,
        balance), each usage record decided against it (drawn, or nothing and why). A
        dispatcher gets the applicant its tenant acts for only."""
        if principal.role in (Role.DISPATCHER, Role.APPLICANT):
            mine = parties.acting_applicant(conn, principal)
            if mine is None or mine.id != applicant:
                raise NotFound(f"no applicant {applicant}", field="applicant")
        return _download(exports.applicant_statement(conn, applicant), kind)

    @api.post("/settlements", status_code=201)
    def settle(body: SettleIn, conn: ConnDep, principal: Bureau) -> dict[str, int]:
        return {"id": settling.settle(conn, principal, enterprise_id(conn, body.provider),
                                      body.day)}

    @api.post("/settlements/{settlement_id}/pay")
    def pay(settlement_id: int, body: PayIn, conn: ConnDep, principal: Bureau
            ) -> dict[str, Decimal]:
        return {"paid": settling.mark_paid(conn, principal, settlement_id, body.reference)}

    return api


def _scope(conn: psycopg.Connection, principal: Principal, applicant_column: str,
           provider_column: str) -> tuple[str, dict[str, Any]]:
    """The SQL condition limiting rows to what the caller may see."""
    if principal.role in (Role.DISPATCHER, Role.APPLICANT):
        who = parties.acting_applicant(conn, principal)
        return f"{applicant_column} = %(applicant)s", {"applicant": who.id if who else -1}
    if principal.role is Role.OPERATOR:
        return f"{provider_column} = %(provider)s", {"provider": principal.enterprise_id}
    return "true", {}


def _provider(conn: psycopg.Connection, principal: Principal, enterprise: str) -> int:
    """The provider's id; to an operator, another enterprise is missing."""
    provider = enterprise_id(conn, enterprise)
    if principal.role is Role.OPERATOR and principal.enterprise_id != provider:
        raise NotFound(f"no enterprise named {enterprise!r}", field="enterprise")
    return provider


def _download(statement: exports.Statement, kind: exports.Format) -> Response:
    """The statement as a file to save; its name is plain ASCII (ids, dates)."""
    content = exports.render(statement, kind, generated=datetime.now(UTC))
    return Response(content, media_type=exports.MEDIA_TYPES[kind], headers={
        "Content-Disposition": f'attachment; filename="{statement.filename}.{kind}"'})


def _without_draws(statement: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in statement.items() if k != "draws"}
