"""End-to-end ingest throughput against a raw COPY baseline, measured in the same run.

What it measures: signed, gzip'd report batches from several agents, posted over HTTP on
loopback to a real platform process (``jinsuan serve``), verified, validated and written with
COPY into a fresh PostgreSQL database. A *sample* is one value of one series at one time
(Prometheus' meaning). The baseline is a binary COPY of the same number of (ts, series_id,
value) rows into the same table of the same database, from this process: the store's own
ceiling. The figure that matters is the ratio.

Batches are built and signed before the clock starts, so the agents' own cost (measured in
bench/agent.py) does not count against the platform's.

    python bench/ingest.py [--sites 4] [--accelerators 256] [--cycles-per-batch 6]
                           [--batches 12] [--senders 4]

PostgreSQL: $JINSUAN_BENCH_PG (an admin URL) or 127.0.0.1:5432; a database is created for the
run and dropped after it.
"""

from __future__ import annotations

import argparse
import gzip
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from jinsuan import signing
from jinsuan.settings import Settings
from jinsuan.sites import create_enrolment_token, create_site
from jinsuan.store import Database
from jinsuan.wire import (
    AGENT_HEADER,
    SIGNATURE_HEADER,
    Batch,
    EnrolRequest,
    EnrolResponse,
    Inventory,
    Series,
)

ADMIN_URL = os.environ.get("JINSUAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url(name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def _batches(agent_id: str, key, site: SimulatedSite, start: datetime, args) -> list[tuple]:
    """Signed, gzip'd bodies for one agent: ``args.batches`` of ``args.cycles_per_batch``."""
    bodies = []
    interval = 10.0
    for b in range(args.batches):
        points: dict[tuple[str, str], list[tuple[int, float]]] = {}
        inventory = None
        for c in range(args.cycles_per_batch):
            now = start + timedelta(seconds=interval * (b * args.cycles_per_batch + c))
            reading = site.read(now)
            ms = int(now.timestamp() * 1000)
            for p in reading.points:
                points.setdefault((p.metric, p.device), []).append((ms, p.value))
            inventory = Inventory(racks=reading.racks, accelerators=reading.accelerators,
                                  meters=reading.meters, edge=reading.edge)
        batch = Batch(
            agent_id=agent_id, seq=b + 1, created_at=datetime.now(UTC), interval_s=interval,
            inventory=inventory,
            series=[Series(metric=m, device=d, points=pts) for (m, d), pts in points.items()],
        )
        body = batch.model_dump_json().encode()
        bodies.append((gzip.compress(body, 1), signing.sign(key, body), batch.sample_count()))
    return bodies


def _post_all(url: str, agent_id: str, bodies: list[tuple], results: list[int]) -> None:
    with httpx.Client(timeout=120) as client:
        for gz, signature, samples in bodies:
            response = client.post(
                f"{url}/v1/reports", content=gz,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json",
                         AGENT_HEADER: agent_id, SIGNATURE_HEADER: signature},
            )
            response.raise_for_status()
            assert response.json()["status"] == "stored", response.text
            results.append(samples)


def _raw_copy(url: str, rows: int, series_ids: list[int], start: datetime) -> float:
    """Seconds to COPY ``rows`` rows of the same shape into the same table."""
    stamps = [start + timedelta(seconds=10 * i) for i in range(rows // len(series_ids) + 1)]
    with psycopg.connect(url, autocommit=True) as conn:
        began = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, cur.copy(
            "COPY samples (ts, series_id, value) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["timestamptz", "int4", "float8"])
            n = 0
            for ts in stamps:
                for sid in series_ids:
                    copy.write_row((ts, sid, 123.5))
                    n += 1
                    if n == rows:
                        break
                if n == rows:
                    break
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--accelerators", type=int, default=256)
    parser.add_argument("--cycles-per-batch", type=int, default=6)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()

    name = f"jinsuan_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _database_url(name)
    port = _free_port()
    server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(database_url=url, data_dir=Path(tmp), run_background_jobs=False)
            db = Database.open(settings)
            tokens = []
            with db.pool.connection() as conn:
                for i in range(args.sites):
                    site = create_site(conn, enterprise="Bench Co.", name=f"bench-{i}",
                                       city="太原")
                    tokens.append(create_enrolment_token(conn, site.id, created_by=None))
                # Partitions for the bench's hours and the baseline's, outside the timing.
                today = datetime.now(UTC).date()
                db.partitions.ensure(conn, [today - timedelta(days=d) for d in range(3)])
            db.close()

            env = dict(os.environ, DATABASE_URL=url, JINSUAN_RUN_BACKGROUND_JOBS="false",
                       JINSUAN_DATA_DIR=tmp, JINSUAN_POOL_MAX_SIZE="8")
            server = subprocess.Popen(
                [sys.executable, "-m", "jinsuan.cli", "serve", "--port", str(port)], env=env
            )
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the platform did not start")
                time.sleep(0.2)

            start = datetime.now(UTC) - timedelta(hours=2)
            plans = []
            for i, token in enumerate(tokens):
                key = signing.new_private_key()
                enrolled = EnrolResponse.model_validate(httpx.post(
                    f"{base}/v1/agents/enrol",
                    json=EnrolRequest(token=token, public_key=signing.public_key_b64(key),
                                      hostname=f"bench-{i}").model_dump(),
                ).raise_for_status().json())
                site = SimulatedSite(SimulatedSiteConfig(
                    seed=i, fleet={"NVIDIA H800": args.accelerators // 2,
                                   "Ascend910B3": args.accelerators - args.accelerators // 2}))
                plans.append((enrolled.agent_id, _batches(enrolled.agent_id, key, site, start,
                                                          args)))
            total = sum(s for _, bodies in plans for _, _, s in bodies)

            results: list[int] = []
            threads = [threading.Thread(target=_post_all, args=(base, a, b, results))
                       for a, b in plans]
            began = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            e2e_s = time.perf_counter() - began
            assert sum(results) == total, "not every batch was stored"

            with psycopg.connect(url) as conn:
                stored = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
                series_ids = [r[0] for r in conn.execute("SELECT id FROM series ORDER BY id")]
            assert stored == total, f"{stored} samples stored, {total} sent"
            raw_s = _raw_copy(url, total, series_ids, start - timedelta(days=1))

        e2e = total / e2e_s
        raw = total / raw_s
        print(f"samples: {total:,} in {sum(len(b) for _, b in plans)} batches "
              f"from {args.sites} agents")
        print(f"end to end (HTTP, verify, validate, COPY): {e2e:,.0f} samples/s")
        print(f"raw COPY baseline, same rows, same table:  {raw:,.0f} samples/s")
        print(f"ratio: {e2e / raw:.2f}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
