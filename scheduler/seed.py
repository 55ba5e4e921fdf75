"""Simulated sites for the demo, the benchmark and tests: what an enrolled, reporting agent
would have left in the store (agent, accelerator inventory, ``accelerator_up`` samples, and the
lease heartbeat of its lease loop asking for work with the site's executor), plus the site's
executor and prices. Real reports and lease requests go through the intake and the lease
protocol; this writes the same rows directly so hundreds of sites can be set up in a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg

from jinsuan.contract.signing import new_private_key, public_key_b64
from jinsuan.kernel.sites import ensure_enterprise
from jinsuan.kernel.store.partitions import Partitions


@dataclass(frozen=True, slots=True)
class PoolSpec:
    model: str
    count: int
    price: Decimal | None
    vendor: str = "NVIDIA"
    domestic: bool = False
    fp16_tflops: float = 312.0
    memory_gb: float = 80.0


def seed_site(conn: psycopg.Connection, partitions: Partitions, *, name: str, city: str,
              pools: list[PoolSpec], now: datetime, public_key: str | None = None,
              enterprise: str = "sim-enterprise", in_province: bool = True,
              executor: str | None = "process") -> tuple[int, str]:
    """Create a reporting site with its agent; return (site id, agent id)."""
    with conn.transaction():
        ent = ensure_enterprise(conn, enterprise)
        site_id = conn.execute(
            "INSERT INTO sites (enterprise_id, name, city, in_province, executor)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (ent, name, city, in_province, executor)).fetchone()[0]
        agent_id = f"agt_sim_{site_id}"
        key = public_key or public_key_b64(new_private_key())
        conn.execute(
            "INSERT INTO agents (id, site_id, public_key, hostname, last_report_at)"
            " VALUES (%s, %s, %s, %s, %s)", (agent_id, site_id, key, f"{name}-agent", now))
        devices = []
        for pool in pools:
            if pool.price is not None:
                conn.execute(
                    "INSERT INTO site_prices (site_id, model, yuan_per_accelerator_hour)"
                    " VALUES (%s, %s, %s)", (site_id, pool.model, pool.price))
            uuids = [f"{name}-{pool.model}-{i}" for i in range(pool.count)]
            devices += uuids
            conn.execute(
                "INSERT INTO accelerators (site_id, uuid, model, vendor, domestic,"
                " memory_total_bytes, fp16_tflops, first_seen, last_seen)"
                " SELECT %s, u, %s, %s, %s, %s, %s, %s, %s FROM unnest(%s::text[]) u",
                (site_id, pool.model, pool.vendor, pool.domestic, int(pool.memory_gb * 1e9),
                 pool.fp16_tflops, now, now, uuids))
        conn.execute(
            "INSERT INTO series (site_id, metric, device)"
            " SELECT %s, 'accelerator_up', d FROM unnest(%s::text[]) d", (site_id, devices))
    report(conn, partitions, site_id, now)
    return site_id, agent_id


def report(conn: psycopg.Connection, partitions: Partitions, site_id: int, now: datetime,
           *, up: float = 1.0, leasing: bool = True) -> None:
    """One heartbeat of the site's agent: every accelerator reports ``accelerator_up``, and,
    while its lease loop lives (``leasing``), it asks for work announcing the site's executor."""
    partitions.ensure(conn, [now.date()])
    with conn.transaction():
        conn.execute("UPDATE agents SET last_report_at = %s WHERE site_id = %s", (now, site_id))
        conn.execute(
            "INSERT INTO samples (ts, series_id, value) SELECT %s, id, %s FROM series"
            " WHERE site_id = %s AND metric = 'accelerator_up'", (now, up, site_id))
        if leasing:
            ask_for_work(conn, site_id, now)


def ask_for_work(conn: psycopg.Connection, site_id: int, now: datetime) -> None:
    """What a lease request from each of the site's agents leaves (``agent_leases``), announcing
    the site's registered executor (nothing when it has none: such an agent does not ask)."""
    conn.execute(
        "INSERT INTO agent_leases (agent_id, executor, last_lease_at)"
        " SELECT g.id, s.executor, %s FROM agents g JOIN sites s ON s.id = g.site_id"
        " WHERE g.site_id = %s AND s.executor IS NOT NULL"
        " ON CONFLICT (agent_id) DO UPDATE SET executor = EXCLUDED.executor,"
        " last_lease_at = EXCLUDED.last_lease_at", (now, site_id))

