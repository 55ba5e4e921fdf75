"""Managing keys, agents, enterprises and sites through the API (``jinsuan keys``, ``jinsuan
agents``, ``jinsuan sites``).

Keys are the admin's alone: create (the secret is answered once, only its hash is kept), list
(never a secret nor a hash), revoke, and rotate (a new key of the same role, owner, label and
expiry; the old one revoked in the same transaction, the new secret answered once). A revoked
or rotated-away key is refused from this process's next request on, and by the platform's other
processes within ``jinsuan.kernel.auth.KEY_CACHE_TTL_S`` (5 s), the time they trust a key they
verified; an expired key, by every process within 5 s of its expiry.

Agents: an operator lists and revokes its enterprise's sites' agents (another enterprise's agent
is answered as missing, 404, in the words of one that does not exist); the bureau's keys list
every agent; an admin lists and revokes any. A revocation is effective at once for the agent's
reports, lease requests and run events (``jinsuan.kernel.sites.revoke_agent``).

Enterprises: an admin creates them, with a unified social credit code when it is known (checked
by ``jinsuan.contract.creditcode``: a wrong one is refused, naming ``credit_code``); admins, the
bureau and viewers list them all, an operator its own.

Sites: an admin creates a site for any enterprise (created too when new, as ``jinsuan sites
create`` always did); an operator creates sites for its own enterprise only: it may leave the
enterprise out, and naming any other, existing or not, is refused (403) in words that tell
nothing of it. An admin or the site's operator changes its city or data centre, never its
enterprise nor its name (another enterprise's site answers 404, as a missing one does). Sites are
read through ``collectors.readapi`` and their enrolment tokens made by ``collectors.enrolment``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import psycopg
from fastapi import APIRouter, Request
from psycopg.rows import class_row
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from jinsuan.kernel.auth import (
    KeyCache,
    Principal,
    Role,
    create_key,
    prefix_of,
    revoke_key,
    rotate_key,
)
from jinsuan.kernel.deps import ConnDep, allow
from jinsuan.kernel.errors import Conflict, Forbidden, Invalid, NotFound
from jinsuan.kernel.sites import (
    Site,
    check_manages,
    checked_credit_code,
    create_site,
    enterprise_id,
    get_site,
    revoke_agent,
    update_site,
    visible_enterprise,
)

Admin = Annotated[Principal, allow(Role.ADMIN)]
Managers = Annotated[Principal, allow(Role.OPERATOR, Role.ADMIN)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class KeyRequest(BaseModel):
    role: Role
    enterprise: str | None = Field(default=None, description="An operator key's enterprise.")
    tenant: str | None = Field(default=None, description="A dispatcher key's tenant.")
    applicant_id: int | None = Field(
        default=None, description="An applicant key's voucher applicant (GET /v1/vouchers/...).")
    label: str = Field(default="", max_length=200, description="Who holds the key.")
    expires_at: AwareDatetime | None = Field(
        default=None, description="Refused from then on, as a revoked key is; never by default.")


class KeyOut(BaseModel):
    prefix: str = Field(description="The part after jsk_: what names the key here.")
    role: Role
    enterprise: str | None
    tenant: str | None
    applicant_id: int | None
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class NewKey(KeyOut):
    key: str = Field(description="Shown once; only its hash is stored.")


class RotatedKey(NewKey):
    replaces: str = Field(description="The prefix of the key it replaces, revoked now.")


class AgentOut(BaseModel):
    id: str
    site_id: int
    site: str
    enterprise: str
    hostname: str
    enrolled_at: datetime
    last_report_at: datetime | None
    last_seq: int
    revoked_at: datetime | None


class EnterpriseRequest(BaseModel):
    name: Name
    credit_code: str | None = Field(
        default=None, max_length=40,
        description="The unified social credit code (统一社会信用代码), 18 characters.")


class EnterpriseOut(BaseModel):
    id: int
    name: str
    credit_code: str | None
    sites: int
    created_at: datetime


class SiteRequest(BaseModel):
    name: Name
    enterprise: Name | None = Field(
        default=None, description="Required with an admin's key; an operator's is its own.")
    city: Name
    in_province: bool | None = Field(
        default=None, description="Admins only (whether a site is in Shanxi decides what the"
        " policy pays on it): False for a site outside Shanxi; an operator's site is in it.")
    data_centre: Name | None = Field(
        default=None, description="The data centre the site is part of (PUE and racks are"
        " judged per data centre); by default one of its own, named after the site.")


class SiteChange(BaseModel):
    """What may change of a site; any other field (its enterprise, its name) is refused."""

    model_config = ConfigDict(extra="forbid")

    city: Name | None = None
    data_centre: Name | None = None


class ManagedSite(BaseModel):
    id: int
    name: str
    city: str
    enterprise_id: int
    enterprise: str
    in_province: bool
    data_centre: str

    @classmethod
    def of(cls, site: Site) -> ManagedSite:
        return cls.model_validate(site, from_attributes=True)


_KEY_SELECT = (
    "SELECT k.prefix, k.role, e.name AS enterprise, k.tenant, k.applicant_id, k.label,"
    " k.created_at,"
    " k.expires_at, k.revoked_at FROM api_keys k LEFT JOIN enterprises e ON e.id = k.enterprise_id"
)
_AGENT_SELECT = (
    "SELECT a.id, a.site_id, s.name AS site, e.name AS enterprise, a.hostname, a.enrolled_at,"
    " a.last_report_at, a.last_seq, a.revoked_at"
    " FROM agents a JOIN sites s ON s.id = a.site_id JOIN enterprises e ON e.id = s.enterprise_id"
)


_ENTERPRISE_SELECT = (
    "SELECT e.id, e.name, e.credit_code, count(s.id)::int AS sites, e.created_at"
    " FROM enterprises e LEFT JOIN sites s ON s.enterprise_id = e.id"
)


def _enterprises(conn: psycopg.Connection, *, only: int | None = None) -> list[EnterpriseOut]:
    """Enterprises by name, or the one whose id is ``only``."""
    with conn.cursor(row_factory=class_row(EnterpriseOut)) as cur:
        return cur.execute(
            _ENTERPRISE_SELECT + " WHERE (%(id)s::bigint IS NULL OR e.id = %(id)s)"
            " GROUP BY e.id ORDER BY e.name", {"id": only}).fetchall()


def _create_enterprise(conn: psycopg.Connection, name: str, credit_code: str | None) -> int:
    code = None if credit_code is None else checked_credit_code(credit_code)
    row = conn.execute(  # no conflict target: a taken name and a taken code both do nothing
        "INSERT INTO enterprises (name, credit_code) VALUES (%s, %s)"
        " ON CONFLICT DO NOTHING RETURNING id", (name, code)).fetchone()
    if row is not None:
        return row[0]
    if conn.execute("SELECT 1 FROM enterprises WHERE name = %s", (name,)).fetchone():
        raise Conflict(f"an enterprise named {name!r} already exists", field="name")
    raise Conflict(f"an enterprise with credit code {code} already exists", field="credit_code")


def _site_enterprise(conn: psycopg.Connection, principal: Principal, named: str | None) -> str:
    """The enterprise a new site is for: an admin names any; an operator its own or none."""
    own = visible_enterprise(principal)
    if own is None:
        if named is None:
            raise Invalid("an admin names the site's enterprise", field="enterprise")
        return named
    row = conn.execute("SELECT name FROM enterprises WHERE id = %s", (own,)).fetchone()
    assert row is not None  # an operator key's enterprise is a foreign key
    if named is not None and named != row[0]:
        raise Forbidden("an operator creates sites for its own enterprise only",
                        field="enterprise")
    return row[0]


def _key(conn: psycopg.Connection, prefix: str) -> KeyOut:
    with conn.cursor(row_factory=class_row(KeyOut)) as cur:
        key = cur.execute(_KEY_SELECT + " WHERE k.prefix = %s", (prefix,)).fetchone()
    if key is None:
        raise NotFound(f"no key with prefix {prefix!r}", field="prefix")
    return key


def _agent(conn: psycopg.Connection, agent_id: str) -> AgentOut:
    with conn.cursor(row_factory=class_row(AgentOut)) as cur:
        agent = cur.execute(_AGENT_SELECT + " WHERE a.id = %s", (agent_id,)).fetchone()
    if agent is None:
        raise _no_agent(agent_id)
    return agent


def _no_agent(agent_id: str) -> NotFound:
    return NotFound(f"no agent {agent_id!r}", field="agent")


def _cache(request: Request) -> KeyCache:
    return request.app.state.key_cache


def router() -> APIRouter:
    api = APIRouter(tags=["management"])

    @api.post("/v1/keys", status_code=201)
    def create(body: KeyRequest, conn: ConnDep, _: Admin) -> NewKey:
        """Create a key bound to a role and its owner (an operator's enterprise, a dispatcher's
        tenant, an applicant's voucher applicant); its secret is answered this once."""
        owner = enterprise_id(conn, body.enterprise) if body.enterprise is not None else None
        if body.applicant_id is not None and conn.execute(
                "SELECT 1 FROM voucher_applicants WHERE id = %s",
                (body.applicant_id,)).fetchone() is None:
            raise NotFound(f"no applicant {body.applicant_id}", field="applicant_id")
        key = create_key(conn, body.role, enterprise_id=owner, tenant=body.tenant,
                         label=body.label, expires_at=body.expires_at,
                         applicant_id=body.applicant_id)
        return NewKey(key=key, **_key(conn, prefix_of(key)).model_dump())

    @api.get("/v1/keys")
    def list_keys(conn: ConnDep, _: Admin) -> list[KeyOut]:
        """Every key, newest first: its prefix, role, owner, label and dates; never a secret."""
        with conn.cursor(row_factory=class_row(KeyOut)) as cur:
            return cur.execute(_KEY_SELECT + " ORDER BY k.created_at DESC, k.id DESC").fetchall()

    @api.post("/v1/keys/{prefix}/revoke")
    def revoke(prefix: str, conn: ConnDep, request: Request, _: Admin) -> KeyOut:
        """Revoke a key: refused at once here, by the platform's other processes within 5 s."""
        key_id = revoke_key(conn, prefix)
        if key_id is None:
            _key(conn, prefix)  # 404 when there is no such key at all
            raise Conflict(f"the key with prefix {prefix!r} is already revoked", field="prefix")
        _cache(request).forget(key_id)
        return _key(conn, prefix)

    @api.post("/v1/keys/{prefix}/rotate", status_code=201)
    def rotate(prefix: str, conn: ConnDep, request: Request, _: Admin) -> RotatedKey:
        """Replace a key by a new one of the same role, owner, label and expiry, and revoke it;
        the new secret is answered this once."""
        rotated = rotate_key(conn, prefix)
        if rotated is None:
            _key(conn, prefix)  # 404 when there is no such key at all
            raise Conflict(f"the key with prefix {prefix!r} is revoked or expired; create a new"
                           " one instead", field="prefix")
        old_id, key = rotated
        _cache(request).forget(old_id)
        return RotatedKey(key=key, replaces=prefix, **_key(conn, prefix_of(key)).model_dump())

    @api.get("/v1/agents")
    def list_agents(
        conn: ConnDep,
        principal: Annotated[Principal, allow(Role.OPERATOR, Role.BUREAU, Role.VIEWER,
                                              Role.ADMIN)],
    ) -> list[AgentOut]:
        """Enrolled agents, revoked ones included: an operator's are its enterprise's sites'."""
        with conn.cursor(row_factory=class_row(AgentOut)) as cur:
            return cur.execute(
                _AGENT_SELECT + " WHERE (%(ent)s::bigint IS NULL OR s.enterprise_id = %(ent)s)"
                " ORDER BY s.name, a.enrolled_at, a.id",
                {"ent": visible_enterprise(principal)},
            ).fetchall()

    @api.post("/v1/agents/{agent_id}/revoke")
    def revoke_an_agent(
        agent_id: str,
        conn: ConnDep,
        principal: Annotated[Principal, allow(Role.OPERATOR, Role.ADMIN)],
    ) -> AgentOut:
        """Revoke an agent of a site the caller manages: its next report, lease request or run
        event is refused; what it reported stays."""
        agent = _agent(conn, agent_id)
        try:
            check_manages(principal, get_site(conn, agent.site_id))
        except NotFound:  # another enterprise's agent, told as one that does not exist
            raise _no_agent(agent_id) from None
        if not revoke_agent(conn, agent_id):
            raise Conflict(f"agent {agent_id!r} is already revoked", field="agent")
        return _agent(conn, agent_id)

    @api.post("/v1/enterprises", status_code=201)
    def create_enterprise(body: EnterpriseRequest, conn: ConnDep, _: Admin) -> EnterpriseOut:
        """Create an enterprise, with its unified social credit code when it is known."""
        [made] = _enterprises(conn, only=_create_enterprise(conn, body.name, body.credit_code))
        return made

    @api.get("/v1/enterprises")
    def list_enterprises(
        conn: ConnDep,
        principal: Annotated[Principal, allow(Role.OPERATOR, Role.BUREAU, Role.VIEWER,
                                              Role.ADMIN)],
    ) -> list[EnterpriseOut]:
        """Enterprises by name, with their credit code and number of sites: an operator's own."""
        return _enterprises(conn, only=visible_enterprise(principal))

    @api.post("/v1/sites", status_code=201)
    def create_a_site(body: SiteRequest, conn: ConnDep, principal: Managers) -> ManagedSite:
        """Register a site: an admin's for any enterprise (created when new), an operator's for
        its own; a data centre of its own unless ``data_centre`` names one."""
        if body.in_province is not None and principal.role is not Role.ADMIN:
            raise Forbidden("only an admin says whether a site is in Shanxi: it decides what"
                            " the policy pays on the site", field="in_province")
        site = create_site(conn, enterprise=_site_enterprise(conn, principal, body.enterprise),
                           name=body.name, city=body.city,
                           in_province=body.in_province is not False,
                           data_centre=body.data_centre)
        return ManagedSite.of(site)

    @api.patch("/v1/sites/{site_id}")
    def change_site(site_id: int, body: SiteChange, conn: ConnDep, principal: Managers
                    ) -> ManagedSite:
        """Change the city or the data centre of a site the caller manages; never its
        enterprise nor its name. An empty change answers the site as it is."""
        check_manages(principal, get_site(conn, site_id))
        return ManagedSite.of(update_site(conn, site_id, city=body.city,
                                          data_centre=body.data_centre))

    return api
