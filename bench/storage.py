"""Bytes per stored sample: plain PostgreSQL against TimescaleDB with compression, same rows.

What it measures: a realistic mix of series (the simulated sites of the tests and the demo:
per accelerator power, energy counter, utilisation, memory, temperature, SM clock, up; per
meter power and energy counter; racks) sampled every ``--interval`` seconds for ``--days``
days, written with the intake's own binary COPY encoder (``collectors.writer``) into the
``samples`` table of a freshly migrated database of each flavour:

* plain PostgreSQL (daily partitions, the ``(series_id, ts)`` index): heap + indexes + TOAST of
  every partition, after ``VACUUM``;
* TimescaleDB (daily chunks): ``hypertable_size`` before compression, then every chunk
  compressed by the migration's own settings (segmented by series) and measured again.

Two value mixes, because compression depends on how much the values move between reads:
``simulated`` is the simulator as it is (values change once a minute, at sensor resolution);
``noisy`` adds what a real sensor adds to every read (NVML's power in milliwatts, ±1 % around
the simulated level; temperature ±1 °C; utilisation ±2 points), so it is the honest upper
bound. The baseline is plain PostgreSQL's figure from the same run: the ratio is what
compression buys.

    python bench/storage.py [--sites 2] [--accelerators 64] [--days 2] [--interval 10]

PostgreSQL: $JINSUAN_BENCH_PG or 127.0.0.1:5432; TimescaleDB: $JINSUAN_BENCH_TIMESCALE or
127.0.0.1:5440 (``../shared/vendor/timescaledb.sh``). A database is created on each for the
run and dropped after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import os
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from collectors.validation import Samples
from collectors.writer import COPY_SAMPLES, encode_samples
from jinsuan.kernel.store.migrate import migrate
from jinsuan.kernel.store.partitions import Partitions

PLAIN = os.environ.get("JINSUAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TIMESCALE = os.environ.get("JINSUAN_BENCH_TIMESCALE",
                           "postgresql://postgres@127.0.0.1:5440/postgres")
START = datetime(2025, 6, 1, tzinfo=UTC)

# What a real sensor adds to each read, by metric: (relative noise, absolute noise, decimals).
NOISE = {
    "accelerator_power_watts": (0.01, 0.0, 3),
    "meter_power_watts": (0.005, 0.0, 1),
    "accelerator_temperature_celsius": (0.0, 1.0, 0),
    "accelerator_utilization_ratio": (0.0, 0.02, 2),
}


@dataclass(frozen=True, slots=True)
class Size:
    rows: int
    total_bytes: int

    @property
    def per_sample(self) -> float:
        return self.total_bytes / self.rows


@contextmanager
def fresh_database(admin_url: str, timescale: bool) -> Iterator[psycopg.Connection]:
    name = f"jinsuan_storage_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(admin_url)
    params["dbname"] = name
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(**params), autocommit=True) as conn:
            got = migrate(conn, want_timescale=timescale)
            if got != timescale:
                raise SystemExit(f"{admin_url}: TimescaleDB is not available there")
            yield conn
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def readings(args: argparse.Namespace, noisy: bool) -> Iterator[tuple[int, list[tuple]]]:
    """Per site and cycle: ``(site index, [(unix_ms, metric, device, value), ...])``."""
    sites = [SimulatedSite(SimulatedSiteConfig(seed=i + 1, fleet={"NVIDIA H800":
                                                                 args.accelerators}),
                           name=f"site-{i}") for i in range(args.sites)]
    jitter = random.Random(7)
    steps = int(args.days * 86_400 // args.interval)
    for step in range(steps):
        now = START + timedelta(seconds=step * args.interval)
        ms = int(now.timestamp() * 1000)
        for index, site in enumerate(sites):
            rows = []
            for point in site.read(now).points:
                value = point.value
                if noisy and point.metric in NOISE:
                    relative, absolute, decimals = NOISE[point.metric]
                    value = round(value * (1 + jitter.uniform(-relative, relative))
                                  + jitter.uniform(-absolute, absolute), decimals)
                    value = max(value, 0.0)
                rows.append((ms, point.metric, point.device, value))
            yield index, rows


def load(conn: psycopg.Connection, args: argparse.Namespace, noisy: bool,
         timescale: bool) -> int:
    """Write the run's samples; return how many."""
    ent = conn.execute("INSERT INTO enterprises (name) VALUES ('bench') RETURNING id").fetchone()
    site_ids = [conn.execute("INSERT INTO sites (enterprise_id, name, city) VALUES (%s, %s, %s)"
                             " RETURNING id", (ent[0], f"site-{i}", "太原")).fetchone()[0]
                for i in range(args.sites)]
    partitions = Partitions(timescale)
    partitions.ensure(conn, {(START + timedelta(days=d)).date()
                             for d in range(int(args.days) + 1)})
    series: dict[tuple[int, str, str], int] = {}
    written = 0
    pending: list[tuple[int, list[tuple]]] = []

    def flush() -> None:
        nonlocal written
        for site, rows in pending:
            rows.sort(key=lambda r: (r[1], r[2], r[0]))
            metrics, devices, counts, times, values = [], [], [], [], []
            ids: list[int] = []
            for ms, metric, device, value in rows:
                key = (site_ids[site], metric, device)
                if key not in series:
                    series[key] = conn.execute(
                        "INSERT INTO series (site_id, metric, device) VALUES (%s, %s, %s)"
                        " RETURNING id", key).fetchone()[0]
                if metrics and metrics[-1] == metric and devices[-1] == device:
                    counts[-1] += 1
                else:
                    metrics.append(metric)
                    devices.append(device)
                    counts.append(1)
                    ids.append(series[key])
                times.append(ms)
                values.append(value)
            with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_SAMPLES) as copy:
                copy.write(encode_samples(ids, Samples(metrics, devices, counts, times, values)))
            written += len(times)
        pending.clear()

    per_site: dict[int, list[tuple]] = {}
    for cycle, (site, rows) in enumerate(readings(args, noisy)):
        per_site.setdefault(site, []).extend(rows)
        if cycle % (args.sites * 360) == args.sites * 360 - 1:  # an hour of 10 s cycles
            pending.extend(per_site.items())
            per_site = {}
            flush()
    pending.extend(per_site.items())
    flush()
    return written


def plain_size(conn: psycopg.Connection, rows: int) -> Size:
    conn.execute("VACUUM ANALYZE samples")
    total = conn.execute(
        "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('samples')"
        " WHERE isleaf").fetchone()[0]
    return Size(rows, int(total))


def timescale_sizes(conn: psycopg.Connection, rows: int) -> tuple[Size, Size]:
    conn.execute("VACUUM ANALYZE samples")
    before = conn.execute("SELECT hypertable_size('samples')").fetchone()[0]
    conn.execute("SELECT compress_chunk(c) FROM show_chunks('samples') c")
    conn.execute("VACUUM ANALYZE samples")
    after = conn.execute("SELECT hypertable_size('samples')").fetchone()[0]
    return Size(rows, int(before)), Size(rows, int(after))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--accelerators", type=int, default=64, help="per site")
    parser.add_argument("--days", type=float, default=2)
    parser.add_argument("--interval", type=float, default=10, help="seconds between reads")
    args = parser.parse_args()
    print(f"storage per sample: {args.sites} sites x {args.accelerators} accelerators, "
          f"{args.days:g} days at {args.interval:g} s")
    for mix in ("simulated", "noisy"):
        noisy = mix == "noisy"
        began = time.monotonic()
        with fresh_database(PLAIN, timescale=False) as conn:
            rows = load(conn, args, noisy, timescale=False)
            plain = plain_size(conn, rows)
        with fresh_database(TIMESCALE, timescale=True) as conn:
            ts_rows = load(conn, args, noisy, timescale=True)
            uncompressed, compressed = timescale_sizes(conn, ts_rows)
        assert ts_rows == rows
        print(f"\n{mix} values: {rows:,} samples ({time.monotonic() - began:.0f} s)")
        print(f"  baseline: plain PostgreSQL, heap + indexes   {plain.per_sample:7.2f} B/sample")
        print(f"  TimescaleDB, uncompressed chunks            {uncompressed.per_sample:7.2f}"
              f" B/sample  {uncompressed.per_sample / plain.per_sample:5.2f}x plain")
        print(f"  TimescaleDB, compressed (segment by series) {compressed.per_sample:7.2f}"
              f" B/sample  {compressed.per_sample / plain.per_sample:5.3f}x plain"
              f"  (aim <= 4: {'met' if compressed.per_sample <= 4 else 'not met'})")


if __name__ == "__main__":
    main()
