"""The platform's own Prometheus exposition: ingest counters, and fleet gauges per site.

The platform's operation is registered on ``platform.registry`` (one registry per app, never the
global default) and served at ``/metrics``; the fleet gauges per site, on a registry of their own
served at ``/metrics/sites`` to an authenticated scraper only. They are computed at scrape time
from ``collectors.state.site_states``, so a scrape shows the store's current truth rather than
what this process happened to ingest.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from collectors.state import SiteState, site_states
from jinsuan.kernel.auth import Role
from jinsuan.kernel.deps import ConnDep, PlatformDep, allow, public
from jinsuan.kernel.errors import Unavailable
from jinsuan.kernel.store import Database
from jinsuan.kernel.store.readiness import label, missing_migrations


class IngestMetrics:
    """Counters and the latency histogram of ``POST /v1/reports``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter(
            "jinsuan_ingest_batches", "Report batches stored.", registry=registry
        )
        self.samples = Counter(
            "jinsuan_ingest_samples", "Samples stored.", registry=registry
        )
        self.duplicates = Counter(
            "jinsuan_ingest_duplicates",
            "Report batches acknowledged as duplicates or replays; nothing written.",
            registry=registry,
        )
        self.rejected = Counter(
            "jinsuan_ingest_rejected", "Report batches refused, by reason.", ["reason"],
            registry=registry,
        )
        self.counter_resets = Counter(
            "jinsuan_ingest_counter_resets",
            "Cumulative counters seen going backwards (a reset; the rollups handle it).",
            registry=registry,
        )
        self.latency = Histogram(
            "jinsuan_ingest_duration_seconds",
            "Time to handle one report, from request to acknowledgement.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )


_LABELS = ["site", "city", "enterprise"]

_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("fp16_pflops_connected", "jinsuan_site_fp16_pflops_connected",
     "Nameplate dense FP16 PFlops of connected, healthy accelerators."),
    ("accelerators_connected", "jinsuan_site_accelerators_connected",
     "Accelerators whose latest health sample in the last minutes is 1."),
    ("accelerators_reporting", "jinsuan_site_accelerators_reporting",
     "Accelerators that sent a health sample in the last minutes."),
    ("racks", "jinsuan_site_racks", "Physical racks in the site's inventory."),
    ("pue", "jinsuan_site_pue_last_hour",
     "Facility energy / IT energy over the last hour (ISO/IEC 30134-2)."),
    ("it_kw", "jinsuan_site_it_power_kilowatts", "Latest IT power, summed over IT meters."),
    ("facility_kw", "jinsuan_site_facility_power_kilowatts",
     "Latest facility power, summed over facility meters."),
)


class FleetCollector(Collector):
    """Per-site gauges, read from the store at each scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so registering does not query the store."""
        yield from fleet_families([])

    def collect(self) -> Iterator[Metric]:
        with self.db.pool.connection() as conn:
            states = site_states(conn)
        yield from fleet_families(states)


def fleet_families(states: list[SiteState]) -> Iterator[Metric]:
    for attribute, name, documentation in _GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=_LABELS)
        for state in states:
            value = getattr(state, attribute)
            if value is not None:
                family.add_metric([state.site, state.city, state.enterprise], float(value))
        yield family


def router(sites: CollectorRegistry) -> APIRouter:
    """``/metrics``: the platform's own operation (intake, scheduler, rollups), open to any
    scraper, naming no site, enterprise or figure the API would refuse a caller.
    ``/metrics/sites``: the per-site gauges (``sites``), which are exactly what the API refuses
    another enterprise's operator, and the other rooms' figures the API shows only some callers
    (``platform.restricted_registry``: the queue by tenant), to a bearer key of the ``metrics``
    role (or the bureau's or an admin's)."""
    api = APIRouter(tags=["operations"])

    @api.get(
        "/metrics",
        dependencies=[public("Prometheus scrape target: the platform's own operation, no site"
                             " figures")],
        response_class=Response,
    )
    def metrics(platform: PlatformDep) -> Response:
        return Response(generate_latest(platform.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get(
        "/metrics/sites",
        dependencies=[allow(Role.METRICS, Role.BUREAU, Role.VIEWER, Role.ADMIN)],
        response_class=Response,
        responses={401: {}, 403: {}},
    )
    def site_metrics(platform: PlatformDep) -> Response:
        text = generate_latest(sites) + generate_latest(platform.restricted_registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @api.get("/healthz", dependencies=[public("liveness probe for load balancers")])
    async def healthz() -> dict[str, str]:
        """The process answers: no database, no worker thread, so it answers under any load."""
        return {"status": "ok"}

    @api.get("/readyz", dependencies=[public("readiness probe: the store answers and holds"
                                             " every migration of this version")],
             responses={503: {}})
    def readyz(conn: ConnDep, platform: PlatformDep) -> dict[str, str]:
        """Ready to take traffic: the store answers and its schema has every migration this
        code ships. Otherwise 503, naming what is missing; ``/healthz`` stays the liveness
        check, so a replica waiting for its database is kept, not restarted."""
        try:
            missing = missing_migrations(conn, platform.db.flavour)
        except psycopg.OperationalError:
            raise Unavailable("the store does not answer", retry_after_s=5) from None
        if missing:
            raise Unavailable("the database lacks migrations this version needs: "
                              + ", ".join(label(step) for step in missing)
                              + " (run `jinsuan migrate`)", retry_after_s=5)
        return {"status": "ready"}

    return api
