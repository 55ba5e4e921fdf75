"""The scheduler's HTTP routes: jobs for dispatchers, site scheduling for operators, and the
agent-signed lease endpoints (``jinsuan.contract.leasewire``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

import anyio
import anyio.to_thread
import psycopg
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from jinsuan.contract.leasewire import (
    AGENT_HEADER,
    EXECUTOR_CAPABILITIES,
    LEASES_PATH,
    MAX_LEASE_WAIT_S,
    REPLAY_WINDOW_S,
    SIGNATURE_HEADER,
    Capability,
    EventAck,
    ExecutorKind,
    LeaseReply,
    LeaseRequest,
    RunEvent,
)
from jinsuan.contract.money import price_problem
from jinsuan.kernel.agentauth import SignedBy, verify_agent_request
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow, public
from jinsuan.kernel.errors import Forbidden, Invalid
from jinsuan.kernel.openapi import signed_body
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.sites import check_manages, check_sees, get_site
from scheduler import metrics
from scheduler.feasibility import Obstacle, permanent_obstacles
from scheduler.jobs import (
    JobDetail,
    JobSummary,
    WhyNot,
    cancel_job,
    job_detail,
    list_jobs,
    withhold_contents,
)
from scheduler.leasedesk import Woken
from scheduler.leases import handle_event, handle_lease
from scheduler.placement import Snapshot, TenantUsage, explain
from scheduler.service import SchedulerService, service_for
from scheduler.snapshot import load_queue, load_reservations, load_sites, load_tenants
from scheduler.spec import Constraints, JobSpec
from scheduler.states import JobState
from scheduler.submits import IDEMPOTENCY_HEADER, MAX_IDEMPOTENCY_KEY
from scheduler.usage_api import usage_router

_SIGNED = "authenticated by the agent's Ed25519 signature over the body"
_MAX_LEASE_BODY = 1 << 20
_MAX_EVENT_BODY = 256 << 10

Submitters = Annotated[Principal, allow(Role.DISPATCHER, Role.ADMIN)]
Readers = Annotated[Principal, allow(Role.DISPATCHER, Role.BUREAU, Role.VIEWER, Role.ADMIN)]
SiteManagers = Annotated[Principal, allow(Role.OPERATOR, Role.ADMIN)]
Anyone = Annotated[Principal, allow(Role.OPERATOR, Role.DISPATCHER, Role.BUREAU, Role.VIEWER,
                                          Role.ADMIN)]
Admins = Annotated[Principal, allow(Role.ADMIN)]


class Submitted(BaseModel):
    id: str
    state: JobState


class Accepted(Submitted):
    warnings: list[Obstacle] = Field(
        description="What no registered site offers the job (scheduler.feasibility): while any"
        " is listed, the job waits until a site is registered or changes its settings.")


class SiteScheduling(BaseModel):
    executor: ExecutorKind | None = None
    prices: dict[str, Decimal] = Field(
        default_factory=dict, description="Yuan per accelerator-hour, by accelerator model.")


class SiteSchedulingShown(SiteScheduling):
    capabilities: list[Capability] = Field(
        default_factory=list,
        description="What the registered executor does beyond running a command once"
                    " (leasewire.EXECUTOR_CAPABILITIES): jobs that need more go elsewhere.")
    agent_executor: ExecutorKind | None = Field(
        default=None,
        description="The executor the site's agent announced in its latest lease request. While"
                    " it is not ``executor``, the agent's requests are refused and nothing is"
                    " placed here.")
    last_lease_at: datetime | None = Field(
        default=None, description="When the platform last received a lease request from the"
                                  " site's agents (placement needs one within lease_stale_s).")


class TenantShare(BaseModel):
    # the column keeps 3 decimals and must stay above 0: a smaller weight would round to 0
    weight: Decimal = Field(ge=Decimal("0.001"), le=Decimal(1000))


def _own_tenant(principal: Principal) -> str | None:
    """A dispatcher sees only its tenant; None means every tenant."""
    return principal.tenant if principal.role is Role.DISPATCHER else None


def _json(model: BaseModel, status: int = 200) -> Response:
    """The model as the response, serialised once: a route on the hot path returns this instead
    of the model, which FastAPI would otherwise dump, validate again and serialise (the declared
    ``response_model`` still documents it)."""
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


async def _body(request: Request, limit: int) -> bytes:
    body = await request.body()
    if len(body) > limit:
        raise Invalid(f"body is {len(body)} bytes; at most {limit}", field="body")
    return body


IdempotencyKey = Annotated[str | None, Header(
    alias=IDEMPOTENCY_HEADER, min_length=1, max_length=MAX_IDEMPOTENCY_KEY,
    pattern=r"^[\x21-\x7e]+$",
    description="Names this submit: a resend under the same key is the same job, never a"
                f" second (printable ASCII, no spaces, at most {MAX_IDEMPOTENCY_KEY} characters).")]


def jobs_router(service: SchedulerService) -> APIRouter:
    api = APIRouter(tags=["jobs"])

    @api.post("/v1/jobs", status_code=201, response_model=Accepted,
              responses={409: {"description": "the idempotency key named another job"}})
    async def submit(spec: JobSpec, principal: Submitters,
                     idempotency_key: IdempotencyKey = None) -> Response:
        """Queue a job; its id comes back at once and placement follows within a cycle. The
        answer's ``warnings`` name what no registered site offers it; a job pinned to a site
        that is not registered is refused. Sent again with the same ``Idempotency-Key`` (say,
        after an answer lost to a timeout), the same job is answered and nothing new queued;
        the key with a different job is refused (409). A key names one job of its tenant for
        as long as the job is kept."""
        tenant = spec.tenant
        if principal.role is Role.DISPATCHER:
            if tenant is not None and tenant != principal.tenant:
                raise Forbidden(f"this key submits for tenant {principal.tenant!r} only",
                                field="tenant")
            tenant = principal.tenant
        if tenant is None:
            raise Invalid("the spec must name a tenant", field="tenant")
        receipt = await service.submits.submit(spec, tenant, datetime.now(UTC),
                                               idempotency_key)
        return _json(Accepted(id=receipt.job_id, state=receipt.state,
                              warnings=receipt.warnings), status=201)

    @api.get("/v1/jobs", response_model=list[JobSummary])
    def jobs(conn: ConnDep, principal: Readers, state: JobState | None = None,
             tenant: str | None = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobSummary]:
        own = _own_tenant(principal)
        if own is not None:
            if tenant is not None and tenant != own:
                raise Forbidden(f"this key sees tenant {own!r} only", field="tenant")
            tenant = own
        return list_jobs(conn, tenant=tenant, state=state, limit=limit)

    @api.get("/v1/jobs/{job_id}", response_model=JobDetail)
    def job(job_id: str, conn: ConnDep, principal: Readers) -> JobDetail:
        """The job, its runs and transitions, and while it waits: why not placed, per site, and
        what no registered site could ever offer it (``permanent``). Its environment's values
        and its output are shown to its own tenant only."""
        own = _own_tenant(principal)
        detail = job_detail(conn, job_id, tenant=own)
        if own is None:  # an overseer: no environment values, no output
            detail = withhold_contents(detail)
        if detail.state is JobState.QUEUED:
            detail.why_not = why_not(conn, service, job_id)
            detail.permanent = permanent_obstacles(
                conn, Constraints.model_validate(detail.spec["constraints"]),
                detail.tasks * detail.accelerators_per_task)
        return detail

    @api.post("/v1/jobs/{job_id}/cancel", response_model=Submitted)
    def cancel(job_id: str, conn: ConnDep, principal: Submitters) -> Submitted:
        state = cancel_job(conn, job_id, datetime.now(UTC), tenant=_own_tenant(principal))
        return Submitted(id=job_id, state=state)

    return api


def why_not(conn: psycopg.Connection, service: SchedulerService, job_id: str) -> list[WhyNot]:
    """Explain a queued job against the sites as they are now (the cycle's own filters)."""
    now = datetime.now(UTC)
    queued = load_queue(conn, job_id)
    if not queued:
        return []
    tenants = load_tenants(conn, service.cfg, now)
    for (tenant,) in conn.execute("SELECT DISTINCT tenant FROM jobs WHERE state = 'queued'"):
        tenants.setdefault(tenant, TenantUsage())
    snapshot = Snapshot(now, [], load_sites(conn, service.cfg, now), tenants,
                        load_reservations(conn))
    return [WhyNot(site_id=v.site_id, site=v.site, constraint=v.constraint, reason=v.reason)
            for v in explain(queued[0], snapshot, service.cfg)]


def sites_router() -> APIRouter:
    api = APIRouter(tags=["sites"])

    @api.get("/v1/sites/{site_id}/scheduling", response_model=SiteSchedulingShown)
    def scheduling(site_id: int, conn: ConnDep, principal: Anyone) -> SiteSchedulingShown:
        """A site's executor, what it can run, and prices: for dispatchers choosing where to
        run, the bureau and admins; an operator sees its own enterprise's sites only. Also what
        the site's agent last announced when it asked for work, and when."""
        check_sees(principal, get_site(conn, site_id))
        executor, announced, asked = conn.execute(
            "SELECT s.executor, l.executor, l.last_lease_at FROM sites s"
            " LEFT JOIN LATERAL (SELECT x.executor, x.last_lease_at FROM agent_leases x"
            "  JOIN agents g ON g.id = x.agent_id WHERE g.site_id = s.id"
            "  AND g.revoked_at IS NULL ORDER BY x.last_lease_at DESC LIMIT 1) l ON true"
            " WHERE s.id = %s", (site_id,)).fetchone()
        prices = dict(conn.execute("SELECT model, yuan_per_accelerator_hour FROM site_prices"
                                   " WHERE site_id = %s ORDER BY model", (site_id,)).fetchall())
        capabilities = sorted(EXECUTOR_CAPABILITIES[ExecutorKind(executor)]) if executor else []
        return SiteSchedulingShown(executor=executor, prices=prices, capabilities=capabilities,
                                   agent_executor=announced, last_lease_at=asked)

    @api.put("/v1/sites/{site_id}/scheduling", response_model=SiteScheduling)
    def register(site_id: int, body: SiteScheduling, conn: ConnDep,
                 principal: SiteManagers) -> SiteScheduling:
        """Set the site's executor and its prices (the prices given replace all others)."""
        check_manages(principal, get_site(conn, site_id))
        for model, price in body.prices.items():
            problem = price_problem(price)
            if problem is not None:
                raise Invalid(f"price {problem}", field=f"prices.{model}")
        with conn.transaction():
            conn.execute("UPDATE sites SET executor = %s WHERE id = %s",
                         (body.executor, site_id))
            conn.execute("DELETE FROM site_prices WHERE site_id = %s", (site_id,))
            for model, price in body.prices.items():
                conn.execute("INSERT INTO site_prices (site_id, model, yuan_per_accelerator_hour)"
                             " VALUES (%s, %s, %s)", (site_id, model, price))
        return body

    @api.put("/v1/tenants/{tenant}/share", response_model=TenantShare)
    def share(tenant: str, body: TenantShare, conn: ConnDep, _: Admins) -> TenantShare:
        """A tenant's fair-share weight (1 when never set)."""
        conn.execute("INSERT INTO tenant_shares (tenant, weight) VALUES (%s, %s)"
                     " ON CONFLICT (tenant) DO UPDATE SET weight = EXCLUDED.weight",
                     (tenant, body.weight))
        return body

    return api


def leases_router(platform: Platform, service: SchedulerService) -> APIRouter:
    api = APIRouter(tags=["leases"])
    answering = anyio.CapacityLimiter(service.cfg.lease_workers)

    @api.post(LEASES_PATH, response_model=LeaseReply, dependencies=[public(_SIGNED)],
              responses={401: {}, 409: {}, 422: {}}, openapi_extra=signed_body(LeaseRequest))
    async def lease(request: Request) -> Response:
        """An agent's lease request and heartbeat (``leasewire.LeaseRequest``); held up to
        ``wait_s`` while there is nothing new for the agent (long poll). Judged as of its
        arrival, before it waits for a lease worker (``scheduler.leases``)."""
        received_at = datetime.now(UTC)
        body = await _body(request, _MAX_LEASE_BODY)
        agent, req, seen, reply = await anyio.to_thread.run_sync(
            _lease, platform, service, request.headers, body, received_at, limiter=answering)
        deadline = time.monotonic() + min(req.wait_s, MAX_LEASE_WAIT_S, service.cfg.lease_ttl_s / 3)
        while not (reply.new or reply.cancel or reply.lost):
            left = deadline - time.monotonic()
            if left <= 0 or not await service.wakeups.wait(agent.site_id, seen, left):
                break
            if await request.is_disconnected():  # nobody to hand new runs to
                break
            seen = service.wakeups.generation(agent.site_id)  # before looking for work
            new = await service.desk.lease(Woken(agent, req.executor, req.free_slots,
                                                 received_at))
            reply = reply.model_copy(update={"new": new})
        return _json(reply)

    @api.post("/v1/runs/{run_id}/events", response_model=EventAck,
              dependencies=[public(_SIGNED)], responses={401: {}, 404: {}, 409: {}, 422: {}},
              openapi_extra=signed_body(RunEvent))
    async def event(run_id: str, request: Request) -> EventAck:
        """One state change of one run, under the run's fencing token."""
        body = await _body(request, _MAX_EVENT_BODY)
        return await run_in_threadpool(_event, platform, service, run_id, request.headers, body)

    return api


def _lease(platform: Platform, service: SchedulerService, headers, body: bytes,
           received_at: datetime) -> tuple[SignedBy, LeaseRequest, tuple[int, int], LeaseReply]:
    """Verify and answer a lease request; also the site's wake-up generation, read before the
    answer looked for work, for a long poll to wait on."""
    now = datetime.now(UTC)
    with platform.db.pool.connection() as conn:
        agent, req = verify_agent_request(
            conn, body, agent_header=headers.get(AGENT_HEADER),
            signature=headers.get(SIGNATURE_HEADER), model=LeaseRequest, now=now,
            window_s=REPLAY_WINDOW_S)
        if req.wait_s > 0:
            service.listener.ensure_started()
        seen = service.wakeups.generation(agent.site_id)
        return agent, req, seen, handle_lease(conn, agent, req, service.cfg, now, received_at)


def _event(platform: Platform, service: SchedulerService, run_id: str, headers,
           body: bytes) -> EventAck:
    now = datetime.now(UTC)
    with platform.db.pool.connection() as conn:
        agent, event = verify_agent_request(
            conn, body, agent_header=headers.get(AGENT_HEADER),
            signature=headers.get(SIGNATURE_HEADER), model=RunEvent, now=now,
            window_s=REPLAY_WINDOW_S)
        ack = handle_event(conn, agent, run_id, event, service.cfg, now)
    if ack.status == "recorded" and event.state != "running":
        service.trigger()  # capacity freed, or a failed job queued again
    return ack


def routers(platform: Platform) -> list[APIRouter]:
    service = service_for(platform)
    metrics.register(platform)  # once per app, as the routes are
    return [jobs_router(service), sites_router(), leases_router(platform, service),
            usage_router()]
