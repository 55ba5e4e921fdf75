"""The collectors' HTTP routes, assembled for the app factory (``jinsuan.app.create_app``)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from collectors import (
    annual,
    enrolment,
    exposition,
    federation_routes,
    intake,
    management,
    readapi,
)
from jinsuan.kernel.platform import Platform


def routers(platform: Platform) -> list[APIRouter]:
    """Every collectors router; per-process state (caches, metrics) is made here, per app."""
    sites = CollectorRegistry()  # per-site figures: served to an authenticated scraper only
    sites.register(exposition.FleetCollector(platform.db))
    return [
        intake.router(intake.Intake(platform)),
        enrolment.router(),
        management.router(),
        readapi.router(),
        annual.router(),
        federation_routes.router(),
        exposition.router(sites),
    ]
