"""End-to-end ingest throughput against a raw COPY baseline, measured in the same run.

What it measures: signed, gzip'd report batches from several agents (one sender thread each,
one report in flight per agent, as real agents send; each body signed and gzip'd by the agent's
own ``agents.uploader.seal``), posted over HTTP on loopback to a real platform process
(``jinsuan serve``), verified, validated and written with COPY, their bodies kept, into a fresh
PostgreSQL database. A *sample* is one value of one series at one time (Prometheus' meaning).
The baseline is a binary COPY of the same rows (same series ids, values and report id column,
timestamps a day earlier so they land in a partition of their own) into the same table of the
same database, from this process: one COPY per agent's rows, each in one transaction on a
connection of its own, all at once (the parallelism the intake gets from the agents), encoded
by the intake's own encoder (``collectors.writer.encode_samples``, struct-packed binary rows
written with ``copy.write``): the store's own ceiling. The figure that matters is the ratio.

Each round posts new batches end to end, then copies the same rows raw; rounds alternate so
that load from other processes on a shared machine hits both sides alike. Every round is
printed, then the medians. Batches are built and signed before the clock starts, so the
agents' own cost (measured in bench/agent.py) does not count against the platform's. The CPU
time of this process (the senders) and of the platform process during the end-to-end phase
is printed too, to show which one is the bottleneck.

At the end, after ``VACUUM``, what the store holds per end-to-end sample: the samples table
(heap and indexes; its rows are end-to-end and baseline rows alike, so per row; on TimescaleDB
also the end-to-end rows' chunks once compressed), and the ``reports`` rows and kept bodies
(``report_bodies``, TOAST and index included) per sample the reports carried.

    python bench/ingest.py [--sites 4] [--accelerators 256] [--cycles-per-batch 6]
                           [--batches 12] [--rounds 3] [--flavours plain,timescale,citus]

PostgreSQL: $JINSUAN_BENCH_PG (an admin URL) or 127.0.0.1:5432; a database is created for the
run and dropped after it, and the store takes the flavour the server offers. With --flavours,
the same benchmark runs once per store flavour named, one after the other, each on its own
server, and a table compares them at the end: plain PostgreSQL on $JINSUAN_BENCH_PG,
TimescaleDB on $JINSUAN_BENCH_TIMESCALE_PG (default 127.0.0.1:5440,
../shared/vendor/timescaledb.sh) and Citus on $JINSUAN_BENCH_CITUS_PG (default
127.0.0.1:5450, a coordinator with its workers registered, ../shared/vendor/citus.sh; the
run's database is made on every node). On Citus the sizes are summed over the workers' shards
(``citus_total_relation_size``), and the end-to-end rows' daily partitions are then converted
to columnar, as the partition upkeep does a week on, to give their size in that form.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from agents.uploader import seal, unseal
from collectors.validation import Samples
from collectors.writer import COPY_SAMPLES, encode_samples
from jinsuan.cli.server import without_secrets
from jinsuan.contract import signing
from jinsuan.contract.wire import (
    AGENT_HEADER,
    SIGNATURE_HEADER,
    Batch,
    EnrolRequest,
    EnrolResponse,
    Inventory,
    Series,
)
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.sites import create_enrolment_token, create_site
from jinsuan.kernel.store import Database, citus
from jinsuan.kernel.store.migrate import Flavour

ADMIN_URL = os.environ.get("JINSUAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_URLS = {
    Flavour.PLAIN: ADMIN_URL,
    Flavour.TIMESCALE: os.environ.get("JINSUAN_BENCH_TIMESCALE_PG",
                                      "postgresql://postgres@127.0.0.1:5440/postgres"),
    Flavour.CITUS: os.environ.get("JINSUAN_BENCH_CITUS_PG",
                                  "postgresql://postgres@127.0.0.1:5450/postgres"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Plan:
    """One agent's signed bodies per round, and the same samples as columns for the baseline."""

    agent_id: str
    site_id: int
    bodies: list[list[tuple[bytes, str, int]]]  # per round: (gzip body, signature, samples)
    samples: list[list[Samples]]  # per round, per batch


def _plan(agent_id: str, site_id: int, key, site: SimulatedSite, start: datetime,
          args) -> Plan:
    """``args.rounds`` x ``args.batches`` signed, gzip'd bodies of ``args.cycles_per_batch``."""
    plan = Plan(agent_id, site_id, [], [])
    interval = 10.0
    seq = cycle = 0
    for _ in range(args.rounds):
        bodies, samples = [], []
        for _ in range(args.batches):
            points: dict[tuple[str, str], list[tuple[int, float]]] = {}
            inventory = None
            for _ in range(args.cycles_per_batch):
                now = start + timedelta(seconds=interval * cycle)
                cycle += 1
                reading = site.read(now)
                ms = int(now.timestamp() * 1000)
                for p in reading.points:
                    points.setdefault((p.metric, p.device), []).append((ms, p.value))
                inventory = Inventory(racks=reading.racks, accelerators=reading.accelerators,
                                      meters=reading.meters, edge=reading.edge)
            seq += 1
            batch = Batch(
                agent_id=agent_id, seq=seq, created_at=datetime.now(UTC), interval_s=interval,
                inventory=inventory,
                series=[Series(metric=m, device=d, points=pts) for (m, d), pts in points.items()],
            )
            sealed = unseal(seal(agent_id, key, batch.model_dump_json().encode()))
            bodies.append((sealed.gzip_body, sealed.signature, batch.sample_count()))
            samples.append(Samples.of(batch.series))
        plan.bodies.append(bodies)
        plan.samples.append(samples)
    return plan


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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _end_to_end(base: str, plans: list[Plan], rnd: int, server_pid: int) -> tuple[float, ...]:
    """Wall seconds to post round ``rnd`` from every agent; senders' and server's CPU seconds."""
    results: list[int] = []
    threads = [threading.Thread(target=_post_all, args=(base, p.agent_id, p.bodies[rnd],
                                                        results))
               for p in plans]
    server_cpu = _cpu_seconds(server_pid)
    client_cpu = time.process_time()
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    sent = sum(s for p in plans for _, _, s in p.bodies[rnd])
    assert sum(results) == sent, "not every batch was stored"
    return wall, time.process_time() - client_cpu, _cpu_seconds(server_pid) - server_cpu


def _baseline_rows(url: str, plans: list[Plan],
                   rnd: int) -> list[tuple[list[int], Samples, int]]:
    """Round ``rnd``'s rows per agent: series ids, columns (timestamps a day earlier) and the
    agent's latest report id, so that each row is the size of the intake's."""
    with psycopg.connect(url) as conn:
        ids = {(site, m, d): i for site, m, d, i in
               conn.execute("SELECT site_id, metric, device, id FROM series")}
        reports = dict(conn.execute("SELECT agent_id, max(id) FROM reports GROUP BY 1"))
    rows = []
    for plan in plans:
        series_ids: list[int] = []
        columns = Samples([], [], [], [], [])
        for samples in plan.samples[rnd]:
            series_ids += [ids[(plan.site_id, m, d)]
                           for m, d in zip(samples.metrics, samples.devices, strict=True)]
            columns.metrics.extend(samples.metrics)
            columns.devices.extend(samples.devices)
            columns.counts.extend(samples.counts)
            columns.times.extend(t - 86_400_000 for t in samples.times)
            columns.values.extend(samples.values)
        rows.append((series_ids, columns, reports[plan.agent_id]))
    return rows


def _raw_copy(url: str, rows: list[tuple[list[int], Samples, int]]) -> float:
    """Seconds to encode and COPY each agent's rows at once, each on its own connection."""
    connections = [psycopg.connect(url) for _ in rows]
    start = threading.Barrier(len(rows) + 1)

    def load(conn: psycopg.Connection, series_ids: list[int], samples: Samples,
             report_id: int) -> None:
        start.wait()
        with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_SAMPLES) as copy:
            copy.write(encode_samples(series_ids, samples, report_id))

    threads = [threading.Thread(target=load, args=(conn, *r))
               for conn, r in zip(connections, rows, strict=True)]
    try:
        for t in threads:
            t.start()
        start.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - began
    finally:
        for conn in connections:
            conn.close()


@dataclass
class Sizes:
    """What the store holds per sample after ``VACUUM``: the samples table per row, its
    end-to-end rows' days once compressed (TimescaleDB) or columnar (Citus), and the reports
    and kept bodies per end-to-end sample."""

    samples: float
    packed: float | None
    reports: float
    bodies: float


def _samples_bytes(conn: psycopg.Connection, flavour: Flavour,
                   since: datetime | None = None) -> int:
    """Bytes of the samples table, indexes and TOAST included; on Citus summed over the
    workers' shards, of the days ending after ``since`` when given."""
    if flavour is Flavour.TIMESCALE:
        return conn.execute("SELECT hypertable_size('samples')").fetchone()[0]
    if flavour is Flavour.CITUS:
        return conn.execute(
            "SELECT coalesce(sum(citus_total_relation_size(partition)), 0) FROM time_partitions"
            " WHERE parent_table = 'samples'::regclass AND to_value::timestamptz > %s",
            (since or datetime.min.replace(tzinfo=UTC),)).fetchone()[0]
    return conn.execute("SELECT sum(pg_total_relation_size(relid))"
                        " FROM pg_partition_tree('samples')").fetchone()[0]


def _bytes_per_sample(url: str, flavour: Flavour, end_to_end: int, since: datetime) -> Sizes:
    """Print and return what the store holds per sample, after ``VACUUM``; ``since`` is the
    first end-to-end sample's time."""
    packed = None
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
        samples = _samples_bytes(conn, flavour)
        reports, bodies = conn.execute(
            "SELECT pg_total_relation_size('reports'),"
            " pg_total_relation_size('report_bodies')").fetchone()
        if flavour is Flavour.TIMESCALE:  # the daily chunks holding end-to-end rows (and no
            # others, but for a run that crosses midnight UTC), compressed
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('samples') c")
            first = conn.execute(
                "SELECT min(range_start) FROM timescaledb_information.chunks"
                " WHERE hypertable_name = 'samples' AND range_end > %s", (since,)).fetchone()[0]
            compressed = conn.execute(
                "SELECT sum(after_compression_total_bytes) FROM chunk_compression_stats('samples')"
                " s JOIN timescaledb_information.chunks c ON c.chunk_name = s.chunk_name"
                " WHERE c.range_start >= %s", (first,)).fetchone()[0]
        elif flavour is Flavour.CITUS:  # the daily partitions holding end-to-end rows,
            # columnar, as the upkeep makes them a week on
            first = conn.execute(
                "SELECT min(from_value::timestamptz) FROM time_partitions"
                " WHERE parent_table = 'samples'::regclass AND to_value::timestamptz > %s",
                (since,)).fetchone()[0]
            conn.execute(
                "SELECT alter_table_set_access_method(partition, 'columnar') FROM time_partitions"
                " WHERE parent_table = 'samples'::regclass AND from_value::timestamptz >= %s",
                (first,))
            compressed = _samples_bytes(conn, flavour, first)
        if flavour is not Flavour.PLAIN:
            packed_rows = conn.execute("SELECT count(*) FROM samples WHERE ts >= %s",
                                       (first,)).fetchone()[0]
            packed = compressed / packed_rows
    where = " (summed over the workers)" if flavour is Flavour.CITUS else ""
    print(f"store after VACUUM: samples {samples / rows:.2f} bytes/sample ({rows:,} rows){where};"
          f" reports {reports / end_to_end:.2f} and kept bodies {bodies / end_to_end:.2f}"
          f" bytes per end-to-end sample ({end_to_end:,})")
    if packed is not None:
        form = "compressed" if flavour is Flavour.TIMESCALE else "columnar"
        print(f"samples once {form}: {packed:.2f} bytes/sample ({packed_rows:,} rows of the"
              " days the end-to-end rows are in)")
    return Sizes(samples / rows, packed, reports / end_to_end, bodies / end_to_end)


@dataclass
class Result:
    flavour: Flavour
    end_to_end: float  # samples/s, median of the rounds
    raw: float
    ratio: float
    sizes: Sizes


def _start_server(url: str, tmp: str, port: int, flavour: Flavour) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=url, JINSUAN_RUN_BACKGROUND_JOBS="false",
               JINSUAN_DATA_DIR=tmp, JINSUAN_POOL_MAX_SIZE="8",
               JINSUAN_USE_TIMESCALE=str(flavour is Flavour.TIMESCALE).lower(),
               JINSUAN_USE_CITUS=str(flavour is Flavour.CITUS).lower())
    server = subprocess.Popen(
        [sys.executable, "-m", "jinsuan.cli", "serve", "--port", str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.terminate()
            raise SystemExit("the platform did not start")
        time.sleep(0.2)


def bench(admin_url: str, want: Flavour | None, args: argparse.Namespace) -> Result:
    """One run on a new database of ``admin_url``'s server: the flavour ``want``, or (None)
    whichever the server offers."""
    name = f"jinsuan_bench_{uuid.uuid4().hex[:8]}"
    cluster = citus.nodes(admin_url)
    url = citus.create_database(cluster, name)
    port = _free_port()
    server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(database_url=url, data_dir=Path(tmp), run_background_jobs=False,
                                use_timescale=want in (None, Flavour.TIMESCALE),
                                use_citus=want in (None, Flavour.CITUS))
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
            flavour = db.flavour
            db.close()
            if want is not None and flavour is not want:
                raise SystemExit(f"{without_secrets(admin_url)} gave a {flavour} store,"
                                 f" not {want}")
            print(f"== {flavour}: {without_secrets(url)}", flush=True)

            server = _start_server(url, tmp, port, flavour)
            base = f"http://127.0.0.1:{port}"
            span = timedelta(seconds=10 * args.rounds * args.batches * args.cycles_per_batch)
            start = datetime.now(UTC) - span - timedelta(minutes=10)
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
                plans.append(_plan(enrolled.agent_id, enrolled.site_id, key, site, start, args))

            rounds = []
            stored = sent = 0
            for rnd in range(args.rounds):
                total = sum(s for p in plans for _, _, s in p.bodies[rnd])
                e2e_s, client_cpu, server_cpu = _end_to_end(base, plans, rnd, server.pid)
                stored += total
                sent += total
                with psycopg.connect(url) as conn:
                    count = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
                assert count == stored, f"{count} samples stored, {stored} sent"
                raw_s = _raw_copy(url, _baseline_rows(url, plans, rnd))
                stored += total
                e2e, raw = total / e2e_s, total / raw_s
                rounds.append((e2e, raw, e2e / raw))
                print(f"round {rnd + 1}: {total:,} samples in "
                      f"{sum(len(p.bodies[rnd]) for p in plans)} batches from {args.sites} "
                      f"agents; end to end {e2e:,.0f}/s ({e2e_s:.2f} s; CPU: platform "
                      f"{server_cpu:.2f} s, senders {client_cpu:.2f} s), raw COPY {raw:,.0f}/s "
                      f"({raw_s:.2f} s), ratio {e2e / raw:.2f}", flush=True)
            server.terminate()
            server.wait(timeout=30)
            server = None
            sizes = _bytes_per_sample(url, flavour, sent, start)

        e2e, raw, ratio = (statistics.median(r[i] for r in rounds) for i in range(3))
        print(f"median of {args.rounds} rounds:")
        print(f"end to end (HTTP, verify, validate, COPY): {e2e:,.0f} samples/s")
        print(f"raw COPY baseline, same rows, same table:  {raw:,.0f} samples/s")
        print(f"ratio: {ratio:.2f}", flush=True)
        return Result(flavour, e2e, raw, ratio, sizes)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        citus.drop_database(cluster, name)


def _flavours(text: str) -> list[Flavour]:
    try:
        return [Flavour(name.strip()) for name in text.split(",") if name.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}; the flavours are {', '.join(f.value for f in Flavour)}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--accelerators", type=int, default=256)
    parser.add_argument("--cycles-per-batch", type=int, default=6)
    parser.add_argument("--batches", type=int, default=12, help="per agent and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flavours", type=_flavours, default=None,
                        help="comma-separated store flavours to compare (plain, timescale,"
                             " citus), each on its own server (see the module's docstring)")
    args = parser.parse_args()
    if args.flavours is None:
        bench(ADMIN_URL, None, args)
        return
    results = [bench(ADMIN_URLS[f], f, args) for f in args.flavours]
    print(f"\n{'flavour':<10} {'end to end/s':>13} {'raw COPY/s':>11} {'ratio':>6}"
          f" {'samples B/sample':>17} {'packed':>7} {'bodies':>7} {'reports':>8}")
    for r in results:
        packed = "-" if r.sizes.packed is None else f"{r.sizes.packed:.2f}"
        print(f"{r.flavour.value:<10} {r.end_to_end:>13,.0f} {r.raw:>11,.0f} {r.ratio:>6.2f}"
              f" {r.sizes.samples:>17.2f} {packed:>7} {r.sizes.bodies:>7.2f}"
              f" {r.sizes.reports:>8.2f}")
    print("(packed: the end-to-end rows' days compressed on TimescaleDB, columnar on Citus;"
          " bodies and reports: bytes per end-to-end sample)")


if __name__ == "__main__":
    main()
