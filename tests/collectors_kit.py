"""Helpers for the collectors' tests: a platform app, API keys, enrolled agents, signed batches.

Agents here are real: each has its own Ed25519 key pair and is enrolled through the API with a
token an operator key made, exactly as a site's agent is.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jinsuan.app import create_app
from jinsuan.contract.signing import new_private_key, public_key_b64, sign
from jinsuan.contract.wire import (
    AGENT_HEADER,
    SIGNATURE_HEADER,
    AcceleratorInfo,
    Batch,
    Inventory,
    MeterInfo,
    MeterRole,
    Series,
)
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.sites import Site, create_site


def make_app(settings: Any, db: Any) -> tuple[FastAPI, Platform]:
    platform = Platform(settings=settings, db=db)
    return create_app(platform), platform


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Org:
    """An enterprise with one site and an operator key for it."""

    site: Site
    operator_key: str


def make_org(conn: psycopg.Connection, enterprise: str, site: str, city: str) -> Org:
    created = create_site(conn, enterprise=enterprise, name=site, city=city)
    key = create_key(conn, Role.OPERATOR, enterprise_id=created.enterprise_id)
    return Org(created, key)


def inventory(accelerators: int = 2, *, model: str = "NVIDIA H100 SXM5 80GB") -> Inventory:
    return Inventory(
        racks=["r01", "r02"],
        accelerators=[
            AcceleratorInfo(uuid=f"GPU-{i:04d}", model=model, vendor="NVIDIA",
                            rack="r01" if i % 2 == 0 else "r02")
            for i in range(accelerators)
        ],
        meters=[
            MeterInfo(id="fac", role=MeterRole.FACILITY, measures="utility_input"),
            MeterInfo(id="it", role=MeterRole.IT, measures="ups_output", racks=["r01", "r02"]),
        ],
    )


@dataclass
class Agent:
    id: str
    site_id: int
    key: Ed25519PrivateKey
    inventory: Inventory = field(default_factory=inventory)
    seq: int = 0

    def batch(self, series: list[Series], *, seq: int | None = None,
              inventory: Inventory | None = None) -> Batch:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return Batch(agent_id=self.id, seq=seq, created_at=datetime.now(UTC), interval_s=10,
                     inventory=inventory or self.inventory, series=series)

    def signed(self, body: bytes) -> dict[str, str]:
        return {AGENT_HEADER: self.id, SIGNATURE_HEADER: sign(self.key, body),
                "Content-Type": "application/json"}

    def post(self, client: TestClient, batch: Batch, *, compress: bool = False) -> httpx.Response:
        body = batch.model_dump_json().encode()
        headers = self.signed(body)
        if compress:
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body)
        return client.post("/v1/reports", content=body, headers=headers)


def enrol(client: TestClient, org: Org, hostname: str = "agent-host") -> Agent:
    """Enrol a fresh agent at ``org``'s site through the API, as an agent would."""
    made = client.post(f"/v1/sites/{org.site.id}/enrolment-tokens",
                       headers=bearer(org.operator_key))
    assert made.status_code == 201, made.text
    key = new_private_key()
    reply = client.post("/v1/agents/enrol", json={
        "token": made.json()["token"], "public_key": public_key_b64(key), "hostname": hostname,
    })
    assert reply.status_code == 200, reply.text
    return Agent(reply.json()["agent_id"], reply.json()["site_id"], key)


def steady_series(start_ms: int, points: int, *, accelerators: int = 2,
                  step_ms: int = 10_000) -> list[Series]:
    """A plausible few minutes of a small site: health, power, energy counters, meters."""
    times = [start_ms + i * step_ms for i in range(points)]
    out = []
    for i in range(accelerators):
        uuid = f"GPU-{i:04d}"
        out.append(Series(metric="accelerator_up", device=uuid, points=[(t, 1.0) for t in times]))
        out.append(Series(metric="accelerator_power_watts", device=uuid,
                          points=[(t, 500.0 + k) for k, t in enumerate(times)]))
        out.append(Series(metric="accelerator_energy_joules_total", device=uuid,
                          points=[(t, 1e6 + 5_000.0 * k) for k, t in enumerate(times)]))
    for meter, watts in (("it", 20_000.0), ("fac", 26_000.0)):
        out.append(Series(metric="meter_power_watts", device=meter,
                          points=[(t, watts) for t in times]))
        out.append(Series(metric="meter_energy_joules_total", device=meter,
                          points=[(t, 1e9 + watts * (t - times[0]) / 1000) for t in times]))
    return out


def counts(conn: psycopg.Connection) -> dict[str, int]:
    """Row counts of every table a report writes to."""
    tables = ("reports", "samples", "series", "racks", "accelerators", "meters", "rollup_dirty")
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
