"""A store filled from the agents' simulator, through the real intake, then rolled up.

Each site is enrolled through the API with its own key pair, as a site's agent is; its
``SimulatedSite`` is read at every step of the range, and the readings go to ``/v1/reports`` as
signed, gzip-compressed batches of several steps each, built as ``jinsuan demo --history-days``
builds them (``jinsuan.demo.history``). The hourly rollups are then run as the
platform runs them. Nothing here writes a telemetry table directly, so a dashboard query checked
against this store is checked against what the platform really stores.

One site goes quiet before the end of the range (its agent stopped), so "stale" has an example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from conftest import fresh_database
from fastapi.testclient import TestClient

from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from collectors.rollup import run_rollups
from jinsuan.demo.history import STEPS_PER_BATCH, post_report, simulated_batches
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.sites import create_site
from jinsuan.kernel.store import Database
from tests.collectors_kit import Agent, Org, enrol, make_app


@dataclass(frozen=True, slots=True)
class FleetSite:
    name: str
    city: str
    enterprise: str
    data_centre: str
    fleet: dict[str, int]
    pue_design: float
    quiet_for: timedelta = timedelta(0)  # stops reporting this long before the range ends


#: Four sites in two cities and three data centres; two halls share 太原一号 data centre.
SMALL_FLEET: tuple[FleetSite, ...] = (
    FleetSite("taiyuan-hall-a", "太原", "晋能智算", "太原一号数据中心",
              {"NVIDIA H800": 4, "Ascend910B3": 4}, 1.22),
    FleetSite("taiyuan-hall-b", "太原", "晋能智算", "太原一号数据中心",
              {"NVIDIA H20": 4}, 1.22),
    FleetSite("datong-cloud", "大同", "云冈数据", "大同云冈数据中心",
              {"NVIDIA L20": 4, "NVIDIA A800-SXM4-80GB": 2}, 1.15),
    FleetSite("datong-edge", "大同", "云冈数据", "大同边缘站",
              {"NVIDIA GeForce RTX 4090": 2}, 1.45, quiet_for=timedelta(hours=3)),
)


@dataclass(frozen=True, slots=True)
class FilledSite:
    spec: FleetSite
    id: int
    enterprise_id: int
    agent: Agent


@dataclass(frozen=True, slots=True)
class SimulatedFleet:
    sites: dict[str, FilledSite]
    start: datetime
    end: datetime
    step: timedelta

    @property
    def cities(self) -> list[str]:
        return sorted({s.spec.city for s in self.sites.values()})


def fill(
    conn: psycopg.Connection,
    settings: Any,
    db: Any,
    *,
    start: datetime,
    end: datetime,
    step: timedelta = timedelta(minutes=5),
    steps_per_batch: int = STEPS_PER_BATCH,
    sites: Sequence[FleetSite] = SMALL_FLEET,
) -> SimulatedFleet:
    """Report ``sites`` from ``start`` to ``end`` through the intake, then run the rollups."""
    app, _ = make_app(settings, db)
    filled: dict[str, FilledSite] = {}
    with TestClient(app) as client:
        for index, spec in enumerate(sites):
            site = create_site(conn, enterprise=spec.enterprise, name=spec.name,
                               city=spec.city, data_centre=spec.data_centre)
            key = create_key(conn, Role.OPERATOR, enterprise_id=site.enterprise_id)
            agent = enrol(client, Org(site, key), hostname=f"{spec.name}-agent")
            filled[spec.name] = FilledSite(spec, site.id, site.enterprise_id, agent)
            simulator = SimulatedSite(SimulatedSiteConfig(
                seed=index + 1, fleet=spec.fleet, accelerators_per_rack=4,
                pue_design=spec.pue_design), name=spec.name)
            for batch in simulated_batches(agent.id, simulator, start=start,
                                           end=end - spec.quiet_for, step=step,
                                           steps_per_batch=steps_per_batch):
                answer = post_report(client, agent.key, batch)
                assert answer.status_code == 200, answer.text
    run_rollups(db, settings, now=end + timedelta(hours=1))
    return SimulatedFleet(filled, start, end, step)


@contextmanager
def simulated_store(
    pg_admin_url: str,
    template_db: str,
    data_dir: Path,
    *,
    start: datetime,
    end: datetime,
    step: timedelta = timedelta(minutes=5),
    then: Callable[[psycopg.Connection, Database, SimulatedFleet], None] | None = None,
) -> Iterator[tuple[str, SimulatedFleet]]:
    """A fresh database filled by :func:`fill` (and ``then``); yields its URL; dropped after."""
    with fresh_database(pg_admin_url, template_db) as url:
        settings = Settings(database_url=url, data_dir=data_dir, run_background_jobs=False)
        database = Database.open(settings)
        try:
            with database.pool.connection() as conn:
                fleet = fill(conn, settings, database, start=start, end=end, step=step)
                if then is not None:
                    then(conn, database, fleet)
        finally:
            database.close()
        yield url, fleet
