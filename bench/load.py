"""A real platform on loopback under thousands of concurrent connections, valid and made-up keys.

What it measures: a platform (``jinsuan.app`` under uvicorn, as ``jinsuan serve`` runs it, with
the default pool of 8) on a fresh database; first one request at a time (the baseline latency);
then ``--connections`` requests at once to ``GET /v1/sites``, half with a real key and half with a
made-up one, each on its own connection; it prints the answers by status, p50/p95/max latency
against the baseline, and the recovery time: how long after the burst a single request takes.

    python bench/load.py [--connections 2000]

PostgreSQL: $JINSUAN_BENCH_PG or 127.0.0.1:5432 (a database is made for the run, then dropped).
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), str(_HERE.parent / "tests")] + [
    p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import asyncio
import os
import resource
import statistics
import time
import uuid
from collections import Counter

import httpx
import psycopg
from servers import serving

from jinsuan.app import create_app
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database

ADMIN = os.environ.get("JINSUAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MADE_UP = "jsk_000000000000_" + "x" * 40


async def one(url: str, key: str, timeout: float) -> tuple[object, float]:
    began = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:  # its own connection
            reply = await client.get(f"{url}/v1/sites",
                                     headers={"Authorization": f"Bearer {key}"})
        return reply.status_code, time.perf_counter() - began
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - began


async def run(url: str, key: str, connections: int) -> None:
    baseline = statistics.median([(await one(url, key, 10))[1] for _ in range(20)])
    print(f"baseline: one request at a time, median {baseline * 1000:.1f} ms")
    began = time.perf_counter()
    results = await asyncio.gather(*[one(url, key if i % 2 else MADE_UP, 60)
                                     for i in range(connections)])
    took = time.perf_counter() - began
    codes = Counter(code for code, _ in results)
    latencies = sorted(t for _, t in results)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"{connections} at once (half made-up keys): answers {dict(codes)} in {took:.1f} s")
    print(f"  latency p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms,"
          f" max {latencies[-1] * 1000:.0f} ms ({p95 / baseline:.0f}× the baseline at p95)")
    recovered = (await one(url, key, 10))[1]
    print(f"recovery: the next single request took {recovered * 1000:.1f} ms"
          f" ({recovered / baseline:.1f}× the baseline)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.connections)), hard))
    name = f"jinsuan_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(database_url=psycopg.conninfo.make_conninfo(ADMIN, dbname=name),
                            run_background_jobs=False)
        db = Database.open(settings)
        try:
            with db.pool.connection() as conn:
                key = create_key(conn, Role.BUREAU)
            with serving(create_app(Platform(settings=settings, db=db))) as url:
                asyncio.run(run(url, key, args.connections))
        finally:
            db.close()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
