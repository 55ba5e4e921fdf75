"""Enrolment routes: an operator makes a one-time token for a site; an agent spends it.

The token is the agent's only credential until its public key is recorded, so the enrol route
is public and authenticated by the token itself (see ``jinsuan.kernel.sites.enrol_agent``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from jinsuan.contract.wire import EnrolRequest, EnrolResponse
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow, public
from jinsuan.kernel.sites import check_manages, create_enrolment_token, enrol_agent, get_site


class TokenRequest(BaseModel):
    valid_for_hours: float = Field(default=24, gt=0, le=24 * 30)


class TokenResponse(BaseModel):
    token: str = Field(description="Shown once; give it to the site's agent (`--token`).")
    site_id: int
    site: str
    valid_for_hours: float


def router() -> APIRouter:
    api = APIRouter(tags=["enrolment"])

    @api.post("/v1/sites/{site_id}/enrolment-tokens", status_code=201)
    def create_token(
        site_id: int,
        conn: ConnDep,
        principal: Annotated[Principal, allow(Role.OPERATOR, Role.ADMIN)],
        request: Annotated[TokenRequest | None, Body()] = None,
    ) -> TokenResponse:
        """Make a one-time enrolment token for a site the caller manages."""
        site = get_site(conn, site_id)
        check_manages(principal, site)
        hours = (request or TokenRequest()).valid_for_hours
        token = create_enrolment_token(
            conn, site.id, created_by=principal.key_id, valid_for=timedelta(hours=hours)
        )
        return TokenResponse(token=token, site_id=site.id, site=site.name, valid_for_hours=hours)

    @api.post(
        "/v1/agents/enrol",
        dependencies=[public("authenticated by the one-time enrolment token in the body")],
    )
    def enrol(request: EnrolRequest, conn: ConnDep) -> EnrolResponse:
        """Register an agent's Ed25519 public key by spending an enrolment token."""
        agent_id, site = enrol_agent(
            conn, token=request.token, public_key=request.public_key, hostname=request.hostname
        )
        return EnrolResponse(agent_id=agent_id, site_id=site.id, site_name=site.name)

    return api
