"""Enterprises, their sites, and the enrolment of a site's agents.

Enrolment: an operator (or admin) creates a one-time token for a site; the agent generates its
Ed25519 key pair and spends the token to register its public key. The token is stored hashed,
expires, and can be spent once: a second use, even with a different key, is refused.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg.rows import class_row

from jinsuan.contract.creditcode import CreditCodeError, validate_credit_code
from jinsuan.contract.signing import BadKey, load_public_key
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated


@dataclass(frozen=True, slots=True)
class Site:
    id: int
    name: str
    city: str
    enterprise_id: int
    enterprise: str
    in_province: bool
    data_centre: str


_SITE_SELECT = (
    "SELECT s.id, s.name, s.city, s.enterprise_id, e.name AS enterprise, s.in_province,"
    " s.data_centre"
    " FROM sites s JOIN enterprises e ON e.id = s.enterprise_id"
)


def ensure_enterprise(conn: psycopg.Connection, name: str) -> int:
    row = conn.execute(
        "INSERT INTO enterprises (name) VALUES (%s)"
        " ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        (name,),
    ).fetchone()
    assert row is not None
    return row[0]


def enterprise_id(conn: psycopg.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM enterprises WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no enterprise named {name!r}", field="enterprise")
    return row[0]


def create_site(
    conn: psycopg.Connection, *, enterprise: str, name: str, city: str, in_province: bool = True,
    data_centre: str | None = None,
) -> Site:
    """Create a site; it is a data centre of its own unless ``data_centre`` names one."""
    with conn.transaction():
        ent = ensure_enterprise(conn, enterprise)
        row = conn.execute(
            "INSERT INTO sites (enterprise_id, name, city, in_province, data_centre)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
            (ent, name, city, in_province, data_centre),
        ).fetchone()
    if row is None:
        raise Conflict(f"a site named {name!r} already exists", field="name")
    return get_site(conn, row[0])


def update_site(
    conn: psycopg.Connection, site_id: int, *, city: str | None = None,
    data_centre: str | None = None,
) -> Site:
    """Change a site's city or data centre (what is None stays); never its enterprise nor its
    name. Raises :class:`NotFound` when there is no such site."""
    conn.execute(
        "UPDATE sites SET city = coalesce(%s, city), data_centre = coalesce(%s, data_centre)"
        " WHERE id = %s",
        (city, data_centre, site_id),
    )
    return get_site(conn, site_id)


def get_site(conn: psycopg.Connection, site_id: int) -> Site:
    with conn.cursor(row_factory=class_row(Site)) as cur:
        site = cur.execute(_SITE_SELECT + " WHERE s.id = %s", (site_id,)).fetchone()
    if site is None:
        raise NotFound(f"no site with id {site_id}", field="site")
    return site


def site_by_name(conn: psycopg.Connection, name: str) -> Site:
    with conn.cursor(row_factory=class_row(Site)) as cur:
        site = cur.execute(_SITE_SELECT + " WHERE s.name = %s", (name,)).fetchone()
    if site is None:
        raise NotFound(f"no site named {name!r}", field="site")
    return site


def visible_enterprise(principal: Principal) -> int | None:
    """The only enterprise an operator may see; None means every enterprise."""
    return principal.enterprise_id if principal.role is Role.OPERATOR else None


def check_sees(principal: Principal, site: Site) -> None:
    """An operator sees only its enterprise's sites; another's is answered as missing, in the
    very words of a site that does not exist, so that a refusal tells a stranger nothing."""
    allowed = visible_enterprise(principal)
    if allowed is not None and site.enterprise_id != allowed:
        raise NotFound(f"no site with id {site.id}", field="site")


def check_manages(principal: Principal, site: Site) -> None:
    check_sees(principal, site)
    if principal.role not in (Role.ADMIN, Role.OPERATOR):
        raise Forbidden(f"role {principal.role.value!r} manages no site", field="site")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_enrolment_token(
    conn: psycopg.Connection,
    site_id: int,
    *,
    created_by: int | None,
    valid_for: timedelta = timedelta(hours=24),
) -> str:
    token = "jse_" + secrets.token_urlsafe(24)
    conn.execute(
        "INSERT INTO enrolment_tokens (token_sha256, site_id, created_by, expires_at)"
        " VALUES (%s, %s, %s, now() + %s)",
        (_token_hash(token), site_id, created_by, valid_for),
    )
    return token


def enrol_agent(
    conn: psycopg.Connection, *, token: str, public_key: str, hostname: str
) -> tuple[str, Site]:
    """Spend ``token`` to register an agent's public key; return the new agent id and site."""
    try:
        load_public_key(public_key)
    except BadKey as exc:
        raise Invalid(str(exc), field="public_key") from None
    agent_id = "agt_" + secrets.token_hex(8)
    with conn.transaction():
        row = conn.execute(
            "UPDATE enrolment_tokens SET used_at = now(), agent_id = %s"
            " WHERE token_sha256 = %s AND used_at IS NULL AND expires_at > now()"
            " RETURNING site_id",
            (agent_id, _token_hash(token)),
        ).fetchone()
        if row is None:
            raise Unauthenticated("enrolment token unknown, expired or already used",
                                  field="token")
        conn.execute(
            "INSERT INTO agents (id, site_id, public_key, hostname) VALUES (%s, %s, %s, %s)",
            (agent_id, row[0], public_key, hostname),
        )
    return agent_id, get_site(conn, row[0])


def revoke_agent(conn: psycopg.Connection, agent_id: str) -> bool:
    """Revoke an agent's enrolment, at once: its reports (the intake's writer checks it in the
    transaction that would store them) and its lease requests and run events (signatures are
    checked against unrevoked agents only) are refused from the next one on. Its stored data
    stays. False when there is no such unrevoked agent."""
    cur = conn.execute(
        "UPDATE agents SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (agent_id,))
    return cur.rowcount == 1


def checked_credit_code(text: str, field: str = "credit_code") -> str:
    """``text`` as a valid unified social credit code (GB 32100-2015), or :class:`Invalid`
    saying what is wrong and where, naming ``field``."""
    try:
        return validate_credit_code(text)
    except CreditCodeError as exc:
        raise Invalid(f"not a unified social credit code: {exc.reason}", field=field) from None
