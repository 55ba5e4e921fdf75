"""Who takes part: applicants (by unified social credit code) and the tenants that act for
them, providers' credit codes, and the register of affiliated entities."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.errors import Conflict, Invalid, NotFound
from jinsuan.kernel.sites import checked_credit_code

KINDS = ("company", "university", "research_institute")


@dataclass(frozen=True, slots=True)
class Applicant:
    id: int
    credit_code: str
    name: str
    kind: str
    in_province: bool


def register_applicant(conn: psycopg.Connection, *, code: str, name: str, kind: str,
                       in_province: bool) -> Applicant:
    checked = checked_credit_code(code)
    if kind not in KINDS:
        raise Invalid(f"kind {kind!r} is not one of {', '.join(KINDS)}", field="kind")
    if not name.strip():
        raise Invalid("an applicant has a name", field="name")
    row = conn.execute(
        "INSERT INTO voucher_applicants (credit_code, name, kind, in_province)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (credit_code) DO NOTHING RETURNING id",
        (checked, name, kind, in_province)).fetchone()
    if row is None:
        raise Conflict(f"an applicant with credit code {checked} is already registered",
                       field="credit_code")
    return Applicant(row[0], checked, name, kind, in_province)


def applicant(conn: psycopg.Connection, applicant_id: int) -> Applicant:
    row = conn.execute("SELECT id, credit_code, name, kind, in_province FROM voucher_applicants"
                       " WHERE id = %s", (applicant_id,)).fetchone()
    if row is None:
        raise NotFound(f"no applicant {applicant_id}", field="applicant")
    return Applicant(*row)


def applicant_of_tenant(conn: psycopg.Connection, tenant: str) -> Applicant | None:
    row = conn.execute(
        "SELECT a.id, a.credit_code, a.name, a.kind, a.in_province FROM voucher_applicants a"
        " JOIN voucher_applicant_tenants t ON t.applicant_id = a.id WHERE t.tenant = %s",
        (tenant,)).fetchone()
    return Applicant(*row) if row else None


def acting_applicant(conn: psycopg.Connection, principal: Principal) -> Applicant | None:
    """The applicant a key acts for: an applicant key's own; a dispatcher's, through the
    tenant it submits for; None for anyone else."""
    if principal.role is Role.APPLICANT and principal.applicant_id is not None:
        return applicant(conn, principal.applicant_id)
    if principal.role is Role.DISPATCHER:
        return applicant_of_tenant(conn, principal.tenant or "")
    return None


def bind_tenant(conn: psycopg.Connection, applicant_id: int, tenant: str) -> None:
    """Let ``tenant``'s dispatchers act for the applicant; a tenant acts for one applicant."""
    applicant(conn, applicant_id)
    row = conn.execute(
        "INSERT INTO voucher_applicant_tenants (tenant, applicant_id) VALUES (%s, %s)"
        " ON CONFLICT (tenant) DO NOTHING RETURNING tenant", (tenant, applicant_id)).fetchone()
    if row is None:
        raise Conflict(f"tenant {tenant!r} already acts for an applicant", field="tenant")


def set_enterprise_code(conn: psycopg.Connection, enterprise_id: int, code: str) -> str:
    """Record a provider enterprise's credit code (for the same-entity and affiliation rules)."""
    checked = checked_credit_code(code)
    try:
        conn.execute("UPDATE enterprises SET credit_code = %s WHERE id = %s",
                     (checked, enterprise_id))
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"another enterprise has credit code {checked}",
                       field="credit_code") from None
    return checked


def affiliate(conn: psycopg.Connection, principal: Principal, code_a: str, code_b: str,
              note: str) -> None:
    """Register two entities as affiliated: neither may claim on the other's contracts."""
    first, second = sorted((checked_credit_code(code_a, "code_a"),
                            checked_credit_code(code_b, "code_b")))
    if first == second:
        raise Invalid("an entity is not affiliated with itself", field="code_b")
    if not note.strip():
        raise Invalid("say how they are affiliated", field="note")
    conn.execute(
        "INSERT INTO voucher_affiliations (code_a, code_b, note, recorded_by)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (first, second, note, principal.key_id))


def affiliation(conn: psycopg.Connection, code_a: str, code_b: str) -> str | None:
    """The register entry linking two credit codes, described, or None."""
    first, second = sorted((code_a, code_b))
    row = conn.execute("SELECT note, recorded_at FROM voucher_affiliations"
                       " WHERE code_a = %s AND code_b = %s", (first, second)).fetchone()
    return None if row is None else (f"affiliation register entry {first} ~ {second}"
                                     f" ({row[0]}, recorded {row[1]:%Y-%m-%d})")
