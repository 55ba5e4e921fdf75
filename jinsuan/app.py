"""The FastAPI app factory: assembles the platform's rooms around one Platform object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jinsuan import __version__
from jinsuan.kernel import audit
from jinsuan.kernel.audit import AuditLog, AuditWriter
from jinsuan.kernel.auth import KeyCache
from jinsuan.kernel.deps import check_key_first
from jinsuan.kernel.errors import (
    Conflict,
    Forbidden,
    Invalid,
    JinsuanError,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from jinsuan.kernel.gate import ConnectionGate
from jinsuan.kernel.limits import BodyLimit
from jinsuan.kernel.openapi import document_errors
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.ratelimit import RateLimit, RateLimiter

log = logging.getLogger(__name__)

_STATUS: dict[type[JinsuanError], int] = {
    Invalid: 422,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unavailable: 503,
}


def error_response(status: int, code: str, reason: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "field": field, "reason": reason}}
    )


def _loc(loc: tuple[object, ...]) -> str:
    """Render a pydantic error location as ``series[3].points[17]``."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def create_app(platform: Platform) -> FastAPI:
    from collectors.jobs import start_background_jobs
    from collectors.routes import routers as collector_routers
    from rewards import jobs as money_jobs
    from rewards import ledger_routes
    from rewards import routes as rewards_routes
    from rewards.vouchers import routes as voucher_routes
    from scheduler.routes import routers as scheduler_routers
    from scheduler.service import service_for

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        background = platform.settings.run_background_jobs
        jobs = start_background_jobs(platform) if background else None
        if jobs is not None:
            money_jobs.schedule(jobs, platform.db)
        placement = service_for(platform)
        if background:
            placement.start()
        try:
            yield
        finally:
            placement.shutdown(wait=True)  # also ends the lease wake-up listener, if started
            if jobs is not None:
                jobs.shutdown(wait=True)
            app.state.audit.close()

    app = FastAPI(
        title="jinsuan 晋算",
        version=__version__,
        summary="Shanxi integrated compute scheduling and monitoring platform",
        lifespan=lifespan,
    )
    app.state.platform = platform
    settings = platform.settings
    app.add_middleware(BodyLimit, limit=platform.settings.max_request_bytes)
    app.state.rate_limiter = RateLimiter(
        per_key=settings.rate_per_key, per_address=settings.rate_per_address,
        burst=settings.rate_burst, max_failures=settings.wrong_secrets_before_lockout,
        lockout_s=settings.lockout_s)
    app.add_middleware(RateLimit, limiter=app.state.rate_limiter)
    app.state.audit = AuditWriter(platform.db.url)
    app.add_middleware(AuditLog, writer=app.state.audit)  # outermost: sees every answer
    app.state.key_cache = KeyCache()  # verified API keys, see jinsuan.kernel.auth.KEY_CACHE_TTL_S
    # Requests share the pool but for the connections kept for the placement cycle.
    app.state.gate = ConnectionGate(platform.db.pool,
                                    settings.pool_max_size - settings.pool_reserved,
                                    settings.request_wait_s)

    @app.exception_handler(JinsuanError)
    async def domain_error(_: Request, exc: JinsuanError) -> JSONResponse:
        status = next((_STATUS[c] for c in type(exc).__mro__ if c in _STATUS), 400)
        response = error_response(status, exc.code, exc.reason, exc.field)
        if isinstance(exc, Unavailable):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(psycopg.DataError)
    async def unstorable_value(_: Request, exc: psycopg.DataError) -> JSONResponse:
        """A value the store cannot hold (a NUL character in text, a number out of its column's
        range) that no check refused first: the caller's input, so 422, never a 500."""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("refused a value the store cannot hold: %s", reason)
        return error_response(422, "invalid", f"a value cannot be stored: {reason}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            await check_key_first(request)
        except JinsuanError as refused:
            return await domain_error(request, refused)
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return error_response(422, "invalid", f"the body is not valid JSON:"
                                  f" {first['ctx']['error']} at character {first['loc'][-1]}",
                                  "body")
        return error_response(422, "invalid", first["msg"], _loc(tuple(first["loc"])))

    @app.exception_handler(StarletteHTTPException)
    async def framework_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """The framework's own refusals (no such path, a method the path does not take) in the
        platform's error body, like every other error."""
        codes = {404: "not_found", 405: "method_not_allowed"}
        response = error_response(exc.status_code, codes.get(exc.status_code, "error"),
                                  str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    # The scheduler's first: FastAPI tries routes in order, and submits and lease requests are
    # the busiest (no two routes share a path, so the order changes nothing else).
    money = [rewards_routes.router(), voucher_routes.router(), ledger_routes.router()]
    app.include_router(audit.router())
    for router in [*scheduler_routers(platform), *collector_routers(platform), *money]:
        app.include_router(router)
    document_errors(app)
    return app
