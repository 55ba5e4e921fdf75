"""FastAPI dependencies: the platform, a pooled connection, and the caller's role.

Every route declares who may call it with ``allow(...)``; tests/test_access.py checks that no
route is left without a declaration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jinsuan.kernel.auth import KeyCache, Principal, Role
from jinsuan.kernel.errors import Forbidden, Unauthenticated
from jinsuan.kernel.gate import ConnectionGate
from jinsuan.kernel.platform import Platform

_bearer = HTTPBearer(auto_error=False, description="An API key made by `jinsuan keys create`.")


async def get_platform(request: Request) -> Platform:
    # async, like every dependency here that does no I/O: FastAPI runs a plain function in a
    # worker thread, a hop that costs more than the function
    return request.app.state.platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


async def get_conn(request: Request) -> AsyncIterator[psycopg.Connection]:
    """A pooled connection for the request, waited for on the event loop, never in a worker
    thread (``jinsuan.kernel.gate``); a fast 503 when none comes in time."""
    gate: ConnectionGate = request.app.state.gate
    async with gate.connection() as conn:
        request.state.conn = conn  # for ``allow`` to share, should it need the store
        try:
            yield conn
        finally:
            del request.state.conn


ConnDep = Annotated[psycopg.Connection, Depends(get_conn)]


def allow(*roles: Role) -> Any:
    """A dependency that authenticates the caller's API key and admits only ``roles``.

    A key verified within ``KeyCache.ttl_s`` is admitted without asking the store (and without a
    worker thread); otherwise the store is asked in the thread pool, on the request's own
    connection when its route already holds one (never a second connection while holding one:
    with the pool exhausted, requests each holding one and waiting for another would deadlock).
    """

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        return await admitted(request, credentials, roles)

    check.allowed_roles = roles  # type: ignore[attr-defined]  # read by the access test
    return Depends(check)


async def admitted(request: Request, credentials: HTTPAuthorizationCredentials | None,
                   roles: tuple[Role, ...]) -> Principal:
    """The caller's principal when its key is valid and its role one of ``roles``; otherwise
    :class:`Unauthenticated` or :class:`Forbidden`."""
    if credentials is None:
        raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
    keys: KeyCache = request.app.state.key_cache
    principal = keys.get(credentials.credentials)
    if principal is None:
        principal = await _authenticate(request, keys, credentials.credentials)
    if principal is None:
        raise Unauthenticated("unknown or revoked API key")
    request.state.principal = principal  # for the audit log (jinsuan.kernel.audit)
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise Forbidden(f"role {principal.role.value!r} may not call this; allowed: {allowed}")
    return principal


async def check_key_first(request: Request) -> None:
    """Admit the caller of the matched route as :func:`allow` would, raising its error: called
    when the request's body failed to parse, so that a caller without a valid key learns
    nothing about the body (FastAPI parses the body before it runs dependencies)."""
    route = request.scope.get("route")
    roles = _declared_roles(route.dependant) if route is not None and hasattr(
        route, "dependant") else None
    if roles is not None:
        await admitted(request, await _bearer(request), roles)


def _declared_roles(dependant: Any) -> tuple[Role, ...] | None:
    for sub in dependant.dependencies:
        roles = getattr(sub.call, "allowed_roles", None)
        if roles is not None:
            return roles
        found = _declared_roles(sub)
        if found is not None:
            return found
    return None


async def _authenticate(request: Request, keys: KeyCache, presented: str) -> Principal | None:
    """Look the key up in the store, on the request's connection when it holds one (never a
    second while holding one), else through the gate like any request."""
    conn = getattr(request.state, "conn", None)
    if conn is not None:
        return await run_in_threadpool(keys.authenticate, conn, presented)
    gate: ConnectionGate = request.app.state.gate
    async with gate.connection() as own:
        return await run_in_threadpool(keys.authenticate, own, presented)


def public(why: str) -> Any:
    """Declare a route open to callers without an API key, and why (a signature, a token...)."""

    async def open_route() -> None:
        return None

    open_route.public_reason = why  # type: ignore[attr-defined]  # read by the access test
    return Depends(open_route)


def access_declaration(dependency: Callable[..., Any]) -> str | None:
    """What a route dependency declares about access, or None when it declares nothing."""
    roles = getattr(dependency, "allowed_roles", None)
    if roles is not None:
        return "roles: " + ", ".join(r.value for r in roles)
    return getattr(dependency, "public_reason", None)
