"""Managing API keys and enrolled agents through the API (``jinsuan keys``, ``jinsuan agents``).

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
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import psycopg
from fastapi import APIRouter, Request
from psycopg.rows import class_row
from pydantic import AwareDatetime, BaseModel, Field

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
from jinsuan.kernel.errors import Conflict, NotFound
from jinsuan.kernel.sites import (
    check_manages,
    enterprise_id,
    get_site,
    revoke_agent,
    visible_enterprise,
)

Admin = Annotated[Principal, allow(Role.ADMIN)]


class KeyRequest(BaseModel):
    role: Role
    enterprise: str | None = Field(default=None, description="An operator key's enterprise.")
    tenant: str | None = Field(default=None, description="A dispatcher key's tenant.")
    label: str = Field(default="", max_length=200, description="Who holds the key.")
    expires_at: AwareDatetime | None = Field(
        default=None, description="Refused from then on, as a revoked key is; never by default.")


class KeyOut(BaseModel):
    prefix: str = Field(description="The part after jsk_: what names the key here.")
    role: Role
    enterprise: str | None
    tenant: str | None
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


_KEY_SELECT = (
    "SELECT k.prefix, k.role, e.name AS enterprise, k.tenant, k.label, k.created_at,"
    " k.expires_at, k.revoked_at FROM api_keys k LEFT JOIN enterprises e ON e.id = k.enterprise_id"
)
_AGENT_SELECT = (
    "SELECT a.id, a.site_id, s.name AS site, e.name AS enterprise, a.hostname, a.enrolled_at,"
    " a.last_report_at, a.last_seq, a.revoked_at"
    " FROM agents a JOIN sites s ON s.id = a.site_id JOIN enterprises e ON e.id = s.enterprise_id"
)


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
        tenant); its secret is answered this once."""
        owner = enterprise_id(conn, body.enterprise) if body.enterprise is not None else None
        key = create_key(conn, body.role, enterprise_id=owner, tenant=body.tenant,
                         label=body.label, expires_at=body.expires_at)
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

    return api
