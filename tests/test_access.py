"""Every route declares who may call it: ``allow(...)`` roles or ``public(why)``."""

from __future__ import annotations

import fastapi.routing
from collectors_kit import make_app
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from jinsuan.kernel.deps import access_declaration


def _api_routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """``(path, route)`` of every API route, through included routers."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    if iterate is None:  # FastAPI before lazy router inclusion: app.routes is already flat
        return [(r.path, r) for r in app.routes if isinstance(r, APIRoute)]
    return [(c.path, c.original_route) for c in iterate(app.routes)
            if isinstance(c.original_route, APIRoute)]


def _declarations(dependant: Dependant) -> list[str]:
    found = []
    for sub in dependant.dependencies:
        if sub.call is not None:
            declared = access_declaration(sub.call)
            if declared is not None:
                found.append(declared)
        found.extend(_declarations(sub))
    return found


def test_every_api_route_declares_its_access(settings, db):
    app, _ = make_app(settings, db)
    routes = _api_routes(app)
    assert {"/v1/reports", "/v1/sites", "/metrics", "/healthz"} <= {path for path, _ in routes}

    undeclared = [f"{sorted(route.methods)} {path}" for path, route in routes
                  if not _declarations(route.dependant)]

    assert undeclared == []


def test_collectors_public_routes_are_the_expected_few(settings, db):
    """A collectors route made public by mistake shows up here."""
    app, _ = make_app(settings, db)
    public = sorted(
        path for path, route in _api_routes(app)
        if route.endpoint.__module__.startswith("collectors.")
        and not any(d.startswith("roles:") for d in _declarations(route.dependant))
    )
    assert public == ["/healthz", "/metrics", "/readyz", "/v1/agents/enrol",
                      "/v1/federation/hourly", "/v1/reports"]
