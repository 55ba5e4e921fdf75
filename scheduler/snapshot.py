"""Read the placement input from the store: sites with live capacity, the queue, tenants' use.

Live capacity of a pool (one model at one site) = its *connected* accelerators (the latest
``accelerator_up`` sample within ``site_stale_s`` is 1, the definition ``collectors.state``
uses) minus the accelerators held by the site's live runs (placed, leased, running). A site is
*reporting* when one of its agents reported within ``site_stale_s``, and *leasing* when one of
them asked for work within ``lease_stale_s`` announcing the executor registered for the site
(``agent_leases``, stamped with the platform's clock when the request arrived): telemetry alone
does not make a site placeable, since an agent whose lease loop died, or whose executor is not
the one registered, still reports. Its PUE is the store's one definition over the last 24
hours (migration 0013: the hours in which both IT and facility energy were measured), the figure
the dashboards and ``/v1/pue/annual`` compute over theirs.

A site's *slots*, how many more runs its agents take, are the free slots its leasing agents
announced in their latest lease requests (less the runs leased to them since:
``scheduler.leases``) minus its runs placed and not yet leased. They are read fresh every
cycle, with the live runs, and not kept in the cached :class:`Inventory`: they change with
every lease request. An agent that never said (a row from before they were recorded) leaves its
site uncapped (``None``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache

import psycopg

from scheduler.config import SchedulerConfig
from scheduler.placement import (
    ModelInfo,
    Pool,
    QueuedJob,
    Reservation,
    SiteView,
    Snapshot,
    TenantUsage,
)
from scheduler.spec import Constraints

# An agent ``g`` of site ``s`` asks for work, by its latest lease request ``l``: not revoked,
# asked within lease_stale_s, announcing the executor registered for the site.
_LEASING = ("g.revoked_at IS NULL AND l.executor = s.executor"
            " AND l.last_lease_at > %(lease_fresh)s")

_SITES = f"""
SELECT s.id, s.name, s.city, s.in_province, s.executor,
       coalesce(a.reported > %(fresh)s, false),
       (SELECT pue_ratio(sum(p.facility_kwh), sum(p.it_kwh)) FROM pue_site_hourly p
        WHERE p.site_id = s.id AND p.hour >= %(day_ago)s),
       coalesce(a.leasing, false),
       CASE WHEN a.asked > %(lease_fresh)s AND a.announced IS DISTINCT FROM s.executor
            THEN a.announced END,
       coalesce(h.silent_losses, 0), h.last_loss_at
FROM sites s
LEFT JOIN LATERAL (
    SELECT max(g.last_report_at) AS reported,
           bool_or({_LEASING}) AS leasing,
           max(l.last_lease_at) AS asked,
           (array_agg(l.executor ORDER BY l.last_lease_at DESC)
                FILTER (WHERE l.agent_id IS NOT NULL))[1] AS announced
    FROM agents g LEFT JOIN agent_leases l ON l.agent_id = g.id
    WHERE g.site_id = s.id AND g.revoked_at IS NULL) a ON true
LEFT JOIN site_lease_health h ON h.site_id = s.id
"""

_POOLS = """
SELECT a.site_id, a.model, min(a.vendor), bool_and(a.domestic), min(a.fp16_tflops),
       min(a.memory_total_bytes), count(*)
FROM accelerators a
JOIN series s ON s.site_id = a.site_id AND s.metric = 'accelerator_up' AND s.device = a.uuid
CROSS JOIN LATERAL samples_last(s.id, %(fresh)s + interval '1 microsecond',
                                 %(now)s + interval '1 microsecond', 1) latest  -- (fresh, now]
WHERE latest.value = 1
GROUP BY a.site_id, a.model
"""

_LIVE_RUNS = """
SELECT r.site_id, r.model, r.accelerators,
       coalesce(r.started_at, r.leased_at, r.placed_at) + make_interval(secs => j.max_runtime_s),
       r.state = 'placed'
FROM runs r JOIN jobs j ON j.id = r.job_id
WHERE r.state IN ('placed', 'leased', 'running')
"""

# The free slots of each site's leasing agents, NULL when one of them never said (a row from
# before the slots were recorded): no cap. A site without a leasing agent has none.
_SLOTS = f"""
SELECT s.id, CASE WHEN bool_and(l.free_slots IS NOT NULL) THEN sum(l.free_slots) END
FROM sites s JOIN agents g ON g.site_id = s.id JOIN agent_leases l ON l.agent_id = g.id
WHERE {_LEASING}
GROUP BY s.id
"""

_QUEUE = """
SELECT j.id, j.tenant, j.priority, j.submitted_at, j.tasks, j.accelerators_per_task,
       j.max_runtime_s, j.constraints,
       CASE WHEN j.tries > 0 THEN (SELECT array_agg(r.site_id) FROM runs r
                                   WHERE r.job_id = j.id AND r.state IN ('failed', 'lost')) END,
       j.spec -> 'payload' ->> 'image' IS NOT NULL
FROM jobs j WHERE j.state = 'queued'
"""

_TENANTS = """
SELECT j.tenant, r.model, sum(r.accelerators)::float8, 'running'
FROM runs r JOIN jobs j ON j.id = r.job_id
WHERE r.state IN ('placed', 'leased', 'running')
GROUP BY j.tenant, r.model
UNION ALL
SELECT u.tenant, u.model, sum(u.accelerator_hours)::float8, 'recent'
FROM usage_records u WHERE u.ended_at > %(window)s
GROUP BY u.tenant, u.model
"""


@lru_cache(maxsize=4096)
def parse_constraints(text: str) -> Constraints:
    """Jobs from one template share constraints: each distinct text is parsed once."""
    return Constraints.model_validate_json(text)


@dataclass(frozen=True, slots=True)
class Inventory:
    """What the sites have, as their agents last reported it: sites, healthy pools, prices."""

    sites: list[tuple]
    pools: list[tuple]
    prices: dict[tuple[int, str], Decimal]
    read_at: float


def load_inventory(conn: psycopg.Connection, cfg: SchedulerConfig, now: datetime) -> Inventory:
    fresh = now - timedelta(seconds=cfg.site_stale_s)
    params = {"fresh": fresh, "now": now, "day_ago": now - timedelta(hours=24),
              "lease_fresh": now - timedelta(seconds=cfg.lease_stale_s)}
    prices = {(site_id, model): price for site_id, model, price in conn.execute(
        "SELECT site_id, model, yuan_per_accelerator_hour FROM site_prices")}
    return Inventory(conn.execute(_SITES, params).fetchall(),
                     conn.execute(_POOLS, params).fetchall(), prices, time.monotonic())


class InventoryCache:
    """Reuse the inventory for ``max_age_s``: it changes at the pace of agents' reports, while
    triggered cycles can come many times a second. Live runs and slots are always read fresh."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._last: Inventory | None = None

    def get(self, conn: psycopg.Connection, cfg: SchedulerConfig, now: datetime) -> Inventory:
        last = self._last
        if last is None or time.monotonic() - last.read_at > self.max_age_s:
            last = self._last = load_inventory(conn, cfg, now)
        return last


def load_sites(conn: psycopg.Connection, cfg: SchedulerConfig, now: datetime,
               inventory: Inventory | None = None) -> list[SiteView]:
    inventory = inventory or load_inventory(conn, cfg, now)
    prices = inventory.prices
    sites = {
        row[0]: SiteView(row[0], row[1], row[2], row[3], row[4], row[5],
                         float(row[6]) if row[6] is not None else None, {}, *row[7:])
        for row in inventory.sites
    }
    for site_id, model, vendor, domestic, tflops, memory, count in inventory.pools:
        if site_id not in sites:
            continue
        info = ModelInfo(vendor, domestic, tflops, memory / 1e9 if memory else None)
        sites[site_id].pools[model] = Pool(model, info, count, 0, prices.get((site_id, model)))
    lease_fresh = now - timedelta(seconds=cfg.lease_stale_s)
    free_slots = dict(conn.execute(_SLOTS, {"lease_fresh": lease_fresh}).fetchall())
    for site in sites.values():
        site.slots = free_slots.get(site.id, 0)  # None (no cap) when the query says so
    for site_id, model, accelerators, ends, placed in conn.execute(_LIVE_RUNS):
        site = sites.get(site_id)
        if site is None:
            continue
        site.awaiting_lease += placed
        pool = site.pools.get(model)
        if pool is None:  # the model's devices went away: keep the hold visible as a 0-size pool
            pool = site.pools[model] = Pool(model, ModelInfo("", False, None, None), 0, 0,
                                            prices.get((site_id, model)))
        pool.reserved += accelerators
        pool.releases.append((ends, accelerators))
    for site in sites.values():
        if site.slots is not None:
            site.slots -= site.awaiting_lease
    return list(sites.values())


def load_queue(conn: psycopg.Connection, job_id: str | None = None) -> list[QueuedJob]:
    sql, params = _QUEUE, ()
    if job_id is not None:
        sql, params = _QUEUE + " AND j.id = %s", (job_id,)
    return [
        QueuedJob(row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                  parse_constraints(row[7]), row[7], frozenset(row[8] or ()), row[9])
        for row in conn.execute(sql, params)
    ]


def load_tenants(conn: psycopg.Connection, cfg: SchedulerConfig, now: datetime
                 ) -> dict[str, TenantUsage]:
    tenants: dict[str, TenantUsage] = {
        name: TenantUsage(float(weight))
        for name, weight in conn.execute("SELECT tenant, weight FROM tenant_shares")
    }
    window = now - timedelta(hours=cfg.fair_window_h)
    for tenant, model, amount, kind in conn.execute(_TENANTS, {"window": window}):
        usage = tenants.setdefault(tenant, TenantUsage())
        target = usage.running if kind == "running" else usage.recent_hours
        target[model] = target.get(model, 0) + (int(amount) if kind == "running" else amount)
    return tenants


def load_reservations(conn: psycopg.Connection) -> dict[tuple[int, str], Reservation]:
    return {
        (site_id, model): Reservation(job_id, site_id, model, start)
        for site_id, model, job_id, start in conn.execute(
            "SELECT site_id, model, job_id, expected_start FROM pool_reservations")
    }


def load_snapshot(conn: psycopg.Connection, cfg: SchedulerConfig, now: datetime,
                  inventory: InventoryCache | None = None) -> Snapshot:
    sites = load_sites(conn, cfg, now, inventory.get(conn, cfg, now) if inventory else None)
    return Snapshot(now, load_queue(conn), sites, load_tenants(conn, cfg, now),
                    load_reservations(conn))
