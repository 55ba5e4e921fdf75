"""Scheduler throughput and latency against a real PostgreSQL, with baselines from the same run.

1. **Placements per second through the real cycle.** 200 sites (two accelerator pools each),
   20 tenants, 50,000 queued jobs from a dozen constraint templates (models, domestic only,
   price caps, preferred cities, gangs of 2 and 4). ``scheduler.cycle.run_cycle`` runs until it
   places nothing more; each cycle is snapshot + decide + one committing transaction. Baseline:
   a raw INSERT of the same number of run rows, in one statement, into a copy of the runs
   table — the store's ceiling for writing placements.
2. **Submit-to-lease latency at a steady submit rate, on one and on two platform processes**
   (``--processes``). ``jinsuan serve`` processes on one database (loopback, the placement cycle
   in each) take POST /v1/jobs from 20 dispatcher keys at ``--rate`` per second for
   ``--seconds`` (their per-key request limit raised out of the way; open loop:
   ``--submitters`` processes of ``--threads`` threads, each on its own kept-alive
   connection, spread over the processes as a load balancer would); the 200 sites' agents ask
   for work on ``/v1/leases`` (signed), each letting the platform hold its request up to
   ``--wait-s`` (long poll; ``--wait-s 0 --poll-s 1`` polls every second instead) and renewing
   what it holds every heartbeat. Latency is the platform's own timestamps: job submitted →
   run placed, and → run leased to the agent. The rate achieved runs from the first send to
   the last answer. Baselines: the same submitters against a trivial endpoint served by
   uvicorn the same way (so the client is known not to be the limit: its rate there, and its
   capacity at 4× the rate), and the round trip of the submit POST itself. Then **capacity**:
   the same at ``--capacity-rate`` (more than a process takes) with small pools that fill up,
   for each process count; the ratio of what each takes to what the first takes. Every run ends
   with a check in one database snapshot that no pool holds more accelerators in live runs
   than it has (overcommit).
3. **Failover with the default settings.** A platform process with the scheduler's defaults
   and the 200 sites' agents behaving as ``agents.worker`` does with its defaults (a signed
   lease request every ``heartbeat_interval``, held runs renewed, a new run reported running
   at once, at most ``max_runs`` held). Two jobs pinned to each site run; then one site's agent
   dies (its lease loop stops; its telemetry goes on). Figure: from the dead agent's last lease
   request, as the platform received it, to each of its jobs reported running at another site.
   Baseline: submit → running of the same jobs when first submitted, same agents and cycle. Also
   counted: runs lost at the sites that stayed alive (false failovers; 0 expected).

    python bench/scheduler.py [--jobs 50000] [--sites 200] [--tenants 20] [--rate 500]
                              [--seconds 10] [--wait-s 10] [--poll-s 0] [--skip-placement]
                              [--skip-latency] [--skip-failover] [--failover-ttl S]
                              [--processes 1,2]

PostgreSQL: $JINSUAN_BENCH_PG (an admin URL) or 127.0.0.1:5432; databases are created for the
run and dropped after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# ``scheduler`` package it measures; put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import http.client
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import psycopg

from agents.worker import WorkerSettings, heartbeat_interval
from jinsuan.contract.leasewire import (
    AGENT_HEADER,
    LEASES_PATH,
    SIGNATURE_HEADER,
    HeldRun,
    LeaseReply,
    LeaseRequest,
    RunEvent,
    run_events_path,
)
from jinsuan.contract.signing import new_private_key, private_key_bytes, public_key_b64, sign
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database
from scheduler.config import SchedulerConfig
from scheduler.cycle import run_cycle
from scheduler.jobs import new_job_id
from scheduler.seed import PoolSpec, ask_for_work, report, seed_site
from scheduler.spec import Constraints, JobSpec

ADMIN_URL = os.environ.get("JINSUAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parent.parent
CITIES = ["Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong",
          "Yuncheng", "Xinzhou", "Linfen", "Lüliang"]
MODELS = [("H100", "NVIDIA", False, 989.0), ("A800", "NVIDIA", False, 312.0),
          ("910B", "Huawei", True, 320.0), ("MLU370", "Cambricon", True, 96.0)]
TEMPLATES = [
    Constraints(), Constraints(models=("H100",)), Constraints(models=("910B",)),
    Constraints(domestic_only=True), Constraints(max_price=Decimal("10.00")),
    Constraints(cities=("Taiyuan",)), Constraints(cities=("Datong", "Shuozhou")),
    Constraints(models=("A800", "H100"), max_price=Decimal("12.00")),
    Constraints(min_fp16_tflops=300), Constraints(vendor="Huawei"),
    Constraints(in_province_only=False), Constraints(domestic_only=True, cities=("Changzhi",)),
]


def _database(name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


class BenchDatabase:
    def __init__(self, label: str) -> None:
        self.name = f"jinsuan_bench_{label}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = _database(self.name)
        self.db = Database.open(Settings(database_url=self.url, run_background_jobs=False,
                                         data_dir=Path(tempfile.mkdtemp()), pool_max_size=4))

    def close(self) -> None:
        self.db.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def seed_sites(db: Database, count: int, per_pool: int, rng: random.Random
               ) -> list[tuple[int, str, object]]:
    now = datetime.now(UTC)
    out = []
    with db.pool.connection() as conn:
        for i in range(count):
            key = new_private_key()
            pools = [PoolSpec(m, per_pool, Decimal(rng.randint(600, 1400)) / 100, vendor=v,
                              domestic=d, fp16_tflops=t)
                     for m, v, d, t in rng.sample(MODELS, 2)]
            site_id, agent_id = seed_site(
                conn, db.partitions, name=f"site{i:03d}", city=CITIES[i % len(CITIES)],
                pools=pools, now=now, public_key=public_key_b64(key),
                in_province=i % 10 != 9)
            facility = Decimal(rng.randint(110, 160)) / 100
            conn.execute(
                "INSERT INTO rollup_site_hourly (site_id, hour, it_kwh, facility_kwh, pue,"
                " fp16_pflops, accelerators, racks, coverage_it, coverage_facility,"
                " coverage_accelerators) VALUES (%s, date_trunc('hour', now()) - interval '1h',"
                " 100, %s, %s, 0, 0, 0, 1, 1, 1)", (site_id, 100 * facility, facility))
            out.append((site_id, agent_id, key))
    return out


def queue_jobs(db: Database, jobs: int, tenants: int, rng: random.Random) -> None:
    now = datetime.now(UTC)
    rows = []
    for i in range(jobs):
        template = TEMPLATES[i % len(TEMPLATES)]
        size = rng.choice((1, 1, 1, 1, 1, 1, 1, 2, 2, 4))
        spec = JobSpec(project="bench", accelerators_per_task=size, constraints=template,
                       priority=rng.randint(0, 10), max_runtime_s=3600,
                       payload={"command": ["sleep", "1"]})
        rows.append((new_job_id(), f"tenant{i % tenants:02d}", "bench", "",
                     spec.model_dump_json(), spec.constraints_key(), 1, size, spec.priority,
                     3600, 0, "queued", now - timedelta(seconds=jobs - i), now))
    with db.pool.connection() as conn, conn.cursor() as cur, cur.copy(
            "COPY jobs (id, tenant, project, name, spec, constraints, tasks,"
            " accelerators_per_task, priority, max_runtime_s, retries, state, submitted_at,"
            " state_changed_at) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def bench_placements(args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(7)
    bench = BenchDatabase("place")
    try:
        site_ids = [site_id for site_id, _, _ in seed_sites(bench.db, args.sites, args.per_pool,
                                                             rng)]
        queue_jobs(bench.db, args.jobs, args.tenants, rng)
        cfg = SchedulerConfig()
        placed = cycles = 0
        longest = 0.0
        with bench.db.pool.connection() as conn:
            conn.execute("ANALYZE")
            started = time.perf_counter()
            while True:
                for site_id in site_ids:  # the sites' agents go on asking for work
                    ask_for_work(conn, site_id, datetime.now(UTC))
                result = run_cycle(conn, cfg)
                cycles += 1
                placed += result.placed
                longest = max(longest, result.seconds)
                if result.placed == 0:
                    break
            elapsed = time.perf_counter() - started
            waiting = conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'"
                                   ).fetchone()[0]
            baseline = raw_insert_rate(conn, placed)
        return {"placed": placed, "cycles": cycles, "seconds": elapsed, "longest": longest,
                "waiting": waiting, "rate": placed / elapsed, "baseline": baseline}
    finally:
        bench.close()


def raw_insert_rate(conn: psycopg.Connection, rows: int) -> float:
    """Rows per second of one INSERT of ``rows`` run-shaped rows into a copy of ``runs``."""
    conn.execute("CREATE TABLE runs_baseline (LIKE runs INCLUDING ALL)")
    conn.execute("DROP SEQUENCE IF EXISTS baseline_tokens")
    conn.execute("CREATE SEQUENCE baseline_tokens")
    ids = [f"run_b{i:08d}" for i in range(rows)]
    jobs = [f"job_b{i:08d}" for i in range(rows)]
    started = time.perf_counter()
    conn.execute(
        "INSERT INTO runs_baseline (id, job_id, attempt, site_id, model, accelerators,"
        " fencing_token, state, lease_expires_at, placed_at, tenant, submitted_at)"
        " SELECT u.id, u.job, 1, 1, 'H100', 1, nextval('baseline_tokens'), 'placed',"
        " now(), now(), 'tenant00', now() FROM unnest(%s::text[], %s::text[]) AS u(id, job)",
        (ids, jobs))
    return rows / (time.perf_counter() - started)


# ---- latency -----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The platform exactly as `jinsuan serve` runs it (uvicorn with uvloop and httptools, the
# collector tuned for ingest), on the port given.
_SERVE = [sys.executable, "-m", "jinsuan.cli", "serve", "--port"]

# The client's baseline: an endpoint that reads the body and answers 201, served by uvicorn
# exactly as the platform is.
_TRIVIAL = """
import sys
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"id":"job_0","state":"queued"}'})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _start_server(command: list[str], env: dict[str, str], url: str,
                  probe: str) -> subprocess.Popen:
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + probe, timeout=1)
            return server
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"{url} did not start") from None
            time.sleep(0.1)


def _stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def _post(conn: http.client.HTTPConnection, path: str, body: bytes,
          headers: dict[str, str]) -> tuple[int, bytes]:
    """One POST on a kept-alive connection. The bench's clients use the standard library's
    HTTP client: it costs a quarter of httpx's CPU per request, and the clients share the
    machine's two cores with the platform they measure."""
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                    **headers})
    response = conn.getresponse()
    return response.status, response.read()


def _poll_agents(ports: list[int], agents: list[tuple[str, bytes]], wait_s: float,
                 every: float, renew_s: float, stop) -> None:
    """One process, a thread per agent: each asks for work (signed, like a real one), holding
    the request up to ``wait_s`` (long poll), and asks again as soon as it has its answer but no
    sooner than ``every`` seconds after it last asked. Like a real agent it renews the runs it
    holds every ``renew_s`` (``agents.worker``'s heartbeat); the requests in between carry only
    its free slots. (The bench's agents have room for hundreds of runs and never end one: were
    every request to renew them all, each would cost the platform hundreds of row updates that
    a real agent, holding its ``max_runs``, never asks for.) Agent ``i`` talks to
    ``ports[i % len(ports)]``, as a load balancer in front of several platform processes would
    spread them."""
    from jinsuan.contract.signing import private_key_from_bytes

    def loop(port: int, agent_id: str, raw: bytes) -> None:
        key = private_key_from_bytes(raw)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=wait_s + 30)
        held: dict[str, int] = {}
        renewed = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            renew = started - renewed >= renew_s
            body = LeaseRequest(agent_id=agent_id, sent_at=datetime.now(UTC),
                                executor="process", free_slots=512,
                                wait_s=min(wait_s, max(renew_s - (started - renewed), 0)),
                                held=[HeldRun(run_id=r, fencing_token=t)
                                      for r, t in held.items()] if renew else []
                                ).model_dump_json().encode()
            status, reply = _post(conn, LEASES_PATH, body, {
                AGENT_HEADER: agent_id, SIGNATURE_HEADER: sign(key, body)})
            if status != 200:
                raise RuntimeError(f"lease request refused: {status} {reply[:200]!r}")
            if renew:
                renewed = started
            answer = LeaseReply.model_validate_json(reply)
            held.update((lease.run_id, lease.fencing_token) for lease in answer.new)
            for run_id in answer.lost + answer.cancel:
                held.pop(run_id, None)
            stop.wait(max(every - (time.monotonic() - started), 0))
        conn.close()

    workers = [threading.Thread(target=loop, args=(ports[i % len(ports)], *agent))
               for i, agent in enumerate(agents)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _submit_process(ports: list[int], keys: list[str], rate: float, seconds: float,
                    threads: int, seed: int, out) -> None:
    """One process: ``threads`` submitters, each at ``rate / threads`` per second, open loop,
    thread ``i`` to ``ports[i % len(ports)]``. Puts (first send, last answer, round trips) on
    ``out``."""
    rtts: list[float] = []
    spans: list[tuple[float, float]] = []
    workers = [threading.Thread(target=_submit, args=(ports[i % len(ports)], keys,
                                                      rate / threads, seconds, rtts, spans,
                                                      random.Random(seed * 100 + i)))
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((min(a for a, _ in spans), max(b for _, b in spans), rtts))


def _submit(port: int, keys: list[str], rate: float, seconds: float, rtts: list[float],
            spans: list[tuple[float, float]], rng: random.Random) -> None:
    bodies = []
    for i in range(int(rate * seconds)):
        size = rng.choice((1, 1, 1, 2, 4))
        spec = JobSpec(project="bench", accelerators_per_task=size,
                       constraints=TEMPLATES[i % len(TEMPLATES)], max_runtime_s=600,
                       payload={"command": ["sleep", "1"]})
        key = keys[rng.randrange(len(keys))]
        bodies.append(({"Authorization": f"Bearer {key}"},
                       spec.model_dump_json(exclude_none=True).encode()))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.monotonic()
    for i, (headers, body) in enumerate(bodies):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.monotonic()
        status, reply = _post(conn, "/v1/jobs", body, headers)
        rtts.append(time.monotonic() - sent)
        if status != 201:
            raise RuntimeError(f"submit refused: {status} {reply[:200]!r}")
    spans.append((start, time.monotonic()))
    conn.close()


def _run_submitters(ports: list[int], keys: list[str], args: argparse.Namespace, rate: float,
                    seconds: float) -> tuple[float, list[float]]:
    """Submit at ``rate`` for ``seconds`` from ``args.submitters`` processes; the rate achieved
    (from the first send to the last answer) and the round trips."""
    mp = multiprocessing.get_context("spawn")
    results = mp.Queue()
    submitters = [mp.Process(target=_submit_process,
                             args=(ports, keys, rate / args.submitters, seconds, args.threads,
                                   n, results))
                  for n in range(args.submitters)]
    for p in submitters:
        p.start()
    parts = [results.get(timeout=seconds * 10 + 60) for _ in submitters]
    for p in submitters:
        p.join()
    rtts = [rtt for _, _, part in parts for rtt in part]
    span = max(end for _, end, _ in parts) - min(begin for begin, _, _ in parts)
    return len(rtts) / span, sorted(rtts)


def bench_client(args: argparse.Namespace) -> dict[str, float]:
    """The same submitters against a trivial endpoint: at the asked rate, and at 4× it (their
    capacity, when the server costs next to nothing)."""
    port = _free_port()
    server = _start_server([sys.executable, "-c", _TRIVIAL, str(port)], dict(os.environ),
                           f"http://127.0.0.1:{port}", "/")
    try:
        achieved, rtts = _run_submitters([port], ["jsk_x_y"], args, args.rate, args.seconds)
        capacity, _ = _run_submitters([port], ["jsk_x_y"], args, 4 * args.rate, 3)
    finally:
        _stop_server(server)
    return {"achieved": achieved, "capacity": capacity, "rtt_p50": _pct(rtts, 50),
            "rtt_p99": _pct(rtts, 99)}


def bench_latency(args: argparse.Namespace, processes: int, rate: float, seconds: float,
                  per_pool: int) -> dict[str, float]:
    """Submit at ``rate`` for ``seconds`` to ``processes`` platform processes on one database
    (clients and agents spread over them) while the agents long-poll; then the latencies from
    the platform's own timestamps and a check, in one database snapshot, that no pool holds
    more live runs than it has accelerators."""
    rng = random.Random(11)
    bench = BenchDatabase("lease")
    servers: list[subprocess.Popen] = []
    try:
        agents = seed_sites(bench.db, args.sites, per_pool, rng)
        with bench.db.pool.connection() as conn:
            keys = [create_key(conn, Role.DISPATCHER, tenant=f"tenant{t:02d}")
                    for t in range(args.tenants)]
        ports = [_free_port() for _ in range(processes)]
        for port in ports:
            env = {**os.environ, "DATABASE_URL": bench.url,
                   "JINSUAN_SCHED_CYCLE_EVERY_S": str(args.cycle_s),
                   "JINSUAN_SCHED_MIN_CYCLE_GAP_S": str(args.cycle_gap_s),
                   # What is measured is scheduling, not the per-key limit (50/s a process by
                   # default): at capacity one process's 20 keys reach it and are answered 429.
                   "JINSUAN_RATE_PER_KEY": str(10 * max(args.rate, args.capacity_rate)),
                   "JINSUAN_RATE_BURST": str(10 * max(args.rate, args.capacity_rate)),
                   "JINSUAN_DATA_DIR": tempfile.mkdtemp()}
            servers.append(_start_server([*_SERVE, str(port)], env,
                                         f"http://127.0.0.1:{port}", "/healthz"))
        mp = multiprocessing.get_context("spawn")
        stop = mp.Event()
        raw = [(agent_id, private_key_bytes(key)) for _, agent_id, key in agents]
        renew_s = heartbeat_interval(WorkerSettings(kind="process").heartbeat_s,
                                     SchedulerConfig().lease_ttl_s)
        pollers = [mp.Process(target=_poll_agents,
                              args=(ports, raw[i::args.pollers], args.wait_s, args.poll_s,
                                    renew_s, stop))
                   for i in range(args.pollers)]
        for p in pollers:
            p.start()
        with bench.db.pool.connection() as conn:  # the platform processes' pooled backends
            backends = [pid for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()")]
        before = {pid: _cpu_seconds(pid) for pid in [s.pid for s in servers] + backends}
        achieved, rtts = _run_submitters(ports, keys, args, rate, seconds)
        after = {pid: _cpu_seconds(pid) for pid in before}
        platform_cpu = sum(after[s.pid] - before[s.pid] for s in servers)
        database_cpu = sum(after[pid] - before[pid] for pid in backends)
        with bench.db.pool.connection() as conn:
            # Until every placed run is leased and the queue is empty or no longer shrinking
            # (with small pools the rest waits for room that never comes).
            wait_until, last = time.monotonic() + 15, None
            while time.monotonic() < wait_until:
                now = conn.execute("SELECT count(*) FILTER (WHERE state = 'queued'),"
                                   " count(*) FILTER (WHERE state = 'placed') FROM jobs"
                                   ).fetchone()
                if now[1] == 0 and (now[0] == 0 or now == last):
                    break
                last = now
                time.sleep(1)
            stop.set()
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                rows = conn.execute(
                    "SELECT extract(epoch FROM r.placed_at - j.submitted_at),"
                    " extract(epoch FROM r.leased_at - j.submitted_at)"
                    " FROM jobs j JOIN runs r ON r.job_id = j.id AND r.attempt = 1").fetchall()
                unplaced = conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'"
                                        ).fetchone()[0]
                overcommitted = conn.execute(_OVERCOMMITTED).fetchone()[0]
                live = conn.execute("SELECT count(*) FROM runs WHERE state IN"
                                    " ('placed', 'leased', 'running')").fetchone()[0]
        for p in pollers:
            p.join(timeout=args.wait_s + 30)
        placed = sorted(float(r[0]) for r in rows)
        leased = sorted(float(r[1]) for r in rows if r[1] is not None)
        return {"submitted": len(rtts), "achieved": achieved, "unplaced": unplaced,
                "placed_p50": _pct(placed, 50), "placed_p99": _pct(placed, 99),
                "leased_p50": _pct(leased, 50), "leased_p99": _pct(leased, 99),
                "leased": len(leased), "rtt_p50": _pct(rtts, 50), "rtt_p99": _pct(rtts, 99),
                "overcommitted": overcommitted, "live": live,
                "platform_ms": 1000 * platform_cpu / len(rtts),
                "database_ms": 1000 * database_cpu / len(rtts)}
    finally:
        for server in servers:
            _stop_server(server)
        bench.close()


# Pools holding more accelerators in live runs than they have (every accelerator is up here).
_OVERCOMMITTED = """
SELECT count(*) FROM (
    SELECT r.site_id, r.model, sum(r.accelerators) AS held
    FROM runs r WHERE r.state IN ('placed', 'leased', 'running') GROUP BY r.site_id, r.model
) live
JOIN (SELECT site_id, model, count(*) AS size FROM accelerators GROUP BY site_id, model) pool
  USING (site_id, model)
WHERE live.held > pool.size
"""


# ---- failover ----------------------------------------------------------------------------------

class _Agent(threading.Thread):
    """A site's agent as ``agents.worker`` behaves with its default settings, minus the
    executor: it asks for work every ``heartbeat_interval``, renewing the runs it holds and
    taking up to ``max_runs``, and reports each new run running at once. ``kill`` stops it
    after its request in flight (its lease loop dies; nothing is said)."""

    def __init__(self, port: int, agent_id: str, key, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.agent_id, self.key, self.stop = port, agent_id, key, stop
        self.kill = threading.Event()
        self.held: dict[str, int] = {}
        self.refused = 0
        self.settings = WorkerSettings(kind="process")

    def _send(self, conn: http.client.HTTPConnection, path: str, body: bytes
              ) -> tuple[int, bytes]:
        return _post(conn, path, body, {AGENT_HEADER: self.agent_id,
                                        SIGNATURE_HEADER: sign(self.key, body)})

    def run(self) -> None:
        interval = self.settings.heartbeat_s
        while not (self.stop.is_set() or self.kill.is_set()):
            started = time.monotonic()
            # A connection per heartbeat: the server closes idle ones after 5 s (uvicorn's
            # keep-alive), and the agent may wait longer than that between requests.
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            body = LeaseRequest(
                agent_id=self.agent_id, sent_at=datetime.now(UTC), executor="process",
                held=[HeldRun(run_id=r, fencing_token=t) for r, t in self.held.items()],
                free_slots=max(0, self.settings.max_runs - len(self.held)),
            ).model_dump_json().encode()
            status, answer = self._send(conn, LEASES_PATH, body)
            if status == 200:
                reply = LeaseReply.model_validate_json(answer)
                for run_id in reply.lost + reply.cancel:
                    self.held.pop(run_id, None)
                for lease in reply.new:
                    self.held[lease.run_id] = lease.fencing_token
                    now = datetime.now(UTC)
                    event = RunEvent(agent_id=self.agent_id, sent_at=now, state="running",
                                     fencing_token=lease.fencing_token, at=now)
                    self._send(conn, run_events_path(lease.run_id),
                               event.model_dump_json().encode())
                interval = heartbeat_interval(self.settings.heartbeat_s, reply.lease_ttl_s)
            else:
                self.refused += 1
            conn.close()
            self.kill.wait(max(interval - (time.monotonic() - started), 0))


def bench_failover(args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(13)
    bench = BenchDatabase("failover")
    server = None
    stop = threading.Event()
    agents: list[_Agent] = []
    try:
        sites = seed_sites(bench.db, args.sites, args.per_pool, rng)
        with bench.db.pool.connection() as conn:
            key = create_key(conn, Role.DISPATCHER, tenant="tenant00")
            names = dict(conn.execute("SELECT id, name FROM sites").fetchall())
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JINSUAN_SCHED_")}
        env |= {"DATABASE_URL": bench.url, "JINSUAN_PORT": str(port),
                "JINSUAN_DATA_DIR": tempfile.mkdtemp()}
        if args.failover_ttl is not None:
            env["JINSUAN_SCHED_LEASE_TTL_S"] = str(args.failover_ttl)
        server = _start_server([*_SERVE, str(port)], env, f"http://127.0.0.1:{port}",
                               "/healthz")
        agents = [_Agent(port, agent_id, agent_key, stop) for _, agent_id, agent_key in sites]
        for agent in agents:
            agent.start()
        # Every site's telemetry goes on throughout, the dead one's too: its devices report up.
        site_ids = [site_id for site_id, _, _ in sites]
        threading.Thread(target=_keep_reporting, args=(bench.db, site_ids, stop),
                         daemon=True).start()
        # A job pinned to each site keeps every agent busy; two free jobs go to the best site,
        # whose agent then dies. (An agent holds at most max_runs = 4: the site the two free
        # jobs move to holds its own and them.)
        submitter = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        free = []
        for pinned in [*[names[s] for s in site_ids], None, None]:
            spec = JobSpec(project="bench", accelerators_per_task=1, max_runtime_s=3600,
                           constraints=Constraints(site=pinned, in_province_only=False),
                           payload={"command": ["sleep", "3600"]})
            status, answer = _post(submitter, "/v1/jobs", spec.model_dump_json().encode(),
                                   {"Authorization": f"Bearer {key}"})
            if status != 201:
                raise RuntimeError(f"submit refused: {status} {answer[:200]!r}")
            if pinned is None:
                free.append(json.loads(answer)["id"])
        submitter.close()
        with bench.db.pool.connection() as conn:
            _wait(conn, "SELECT count(*) = %s FROM jobs WHERE state = 'running'",
                  (len(sites) + len(free),), 120)
            baseline = sorted(float(r[0]) for r in conn.execute(
                "SELECT extract(epoch FROM r.started_at - j.submitted_at) FROM jobs j"
                " JOIN runs r ON r.id = j.current_run_id"))
            victim_site = conn.execute("SELECT r.site_id FROM jobs j JOIN runs r"
                                       " ON r.id = j.current_run_id WHERE j.id = %s",
                                       (free[0],)).fetchone()[0]
            moving = [job_id for (job_id,) in conn.execute(
                "SELECT j.id FROM jobs j JOIN runs r ON r.id = j.current_run_id"
                " WHERE j.id = ANY(%s) AND r.site_id = %s", (free, victim_site))]
            victim = agents[site_ids.index(victim_site)]
            victim.kill.set()
            victim.join(timeout=60)
            last, expires = conn.execute(
                "SELECT l.last_lease_at, max(r.lease_expires_at) FROM agent_leases l"
                " JOIN runs r ON r.site_id = %s AND r.state = 'running'"
                " WHERE l.agent_id = %s GROUP BY l.last_lease_at",
                (victim_site, victim.agent_id)).fetchone()
            _wait(conn, "SELECT count(*) = %s FROM jobs j JOIN runs r ON r.id = j.current_run_id"
                        " WHERE j.id = ANY(%s) AND j.state = 'running' AND r.attempt = 2",
                  (len(moving), moving), 180)
            moved = conn.execute(
                "SELECT extract(epoch FROM r.started_at - %(last)s),"
                " extract(epoch FROM r.leased_at - %(last)s),"
                " extract(epoch FROM lost.ended_at - %(last)s)"
                " FROM runs r JOIN runs lost ON lost.job_id = r.job_id AND lost.attempt = 1"
                " WHERE r.attempt = 2 AND r.job_id = ANY(%(moving)s)",
                {"last": last, "moving": moving}).fetchall()
            false_failovers = conn.execute(
                "SELECT count(*) FROM runs WHERE state = 'lost' AND site_id <> %s",
                (victim_site,)).fetchone()[0]
        running = sorted(float(m[0]) for m in moved)
        return {"sites": len(sites), "jobs": len(moved),
                "ttl": (expires - last).total_seconds(),
                "found_max": max(float(m[2]) for m in moved),
                "leased_max": max(float(m[1]) for m in moved),
                "running_p50": _pct(running, 50), "running_max": running[-1],
                "baseline_p50": _pct(baseline, 50), "baseline_max": baseline[-1],
                "false_failovers": false_failovers,
                "refused": sum(agent.refused for agent in agents)}
    finally:
        stop.set()
        for agent in agents:
            agent.join(timeout=60)
        if server is not None:
            _stop_server(server)
        bench.close()


def _keep_reporting(db: Database, site_ids: list[int], stop: threading.Event) -> None:
    """Every site's telemetry (``accelerator_up``) every 10 s, without lease requests."""
    with db.pool.connection() as conn:
        while not stop.is_set():
            for site_id in site_ids:
                report(conn, db.partitions, site_id, datetime.now(UTC), leasing=False)
            stop.wait(10)


def _wait(conn: psycopg.Connection, sql: str, params: tuple, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not conn.execute(sql, params).fetchone()[0]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for: {sql}")
        time.sleep(0.05)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--per-pool", type=int, default=192, help="Accelerators per pool.")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--rate", type=float, default=500.0, help="Submits per second.")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--capacity-rate", type=float, default=2000.0,
                        help="Submits per second asked in the capacity part (more than one"
                             " process takes).")
    parser.add_argument("--capacity-seconds", type=float, default=6.0)
    parser.add_argument("--capacity-threads", type=int, default=32,
                        help="Threads per submitter in the capacity part: a thread waits for"
                             " each answer, so the clients' concurrency must not be the limit.")
    parser.add_argument("--capacity-per-pool", type=int, default=16,
                        help="Accelerators per pool in the capacity part: small, so pools fill"
                             " and the overcommit check means something.")
    parser.add_argument("--submitters", type=int, default=2, help="Submitting processes.")
    parser.add_argument("--threads", type=int, default=8, help="Threads per submitter.")
    parser.add_argument("--pollers", type=int, default=2, help="Agent-polling processes.")
    parser.add_argument("--wait-s", type=float, default=10.0,
                        help="How long an agent lets the platform hold its lease request.")
    parser.add_argument("--poll-s", type=float, default=0.0,
                        help="An agent asks again no sooner than this after it last asked.")
    parser.add_argument("--cycle-s", type=float, default=0.25)
    parser.add_argument("--cycle-gap-s", type=float, default=0.1)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-placement", action="store_true")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--processes", default="1,2",
                        help="Platform process counts to run, comma-separated; the first is the"
                             " baseline the others are compared with.")
    parser.add_argument("--failover-ttl", type=float, default=None,
                        help="The platform's lease TTL in the failover part (default: the"
                             " scheduler's own default).")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]

    if not args.skip_placement:
        p = bench_placements(args)
        print(f"placement: {p['placed']:,} of {args.jobs:,} jobs placed on {args.sites} sites"
              f" for {args.tenants} tenants in {p['cycles']} cycles, {p['seconds']:.2f} s"
              f" (longest cycle {p['longest']:.2f} s; {p['waiting']:,} left waiting: no room)")
        print(f"  placements/s through the cycle: {p['rate']:,.0f}")
        print(f"  baseline, raw INSERT of as many run rows: {p['baseline']:,.0f} rows/s")
        print(f"  ratio: {p['rate'] / p['baseline']:.3f}")
    if not args.skip_failover:
        f = bench_failover(args)
        print(f"failover: {f['sites']} sites' agents asking as agents.worker does by default;"
              f" one dies holding {f['jobs']} running jobs; lease TTL {f['ttl']:.0f} s")
        print(f"  last heartbeat → its runs found lapsed     max {f['found_max']:.1f} s")
        print(f"  last heartbeat → leased elsewhere          max {f['leased_max']:.1f} s")
        print(f"  last heartbeat → running elsewhere  p50 {f['running_p50']:.1f} s"
              f"  max {f['running_max']:.1f} s")
        print(f"  baseline, submit → running of the same jobs  p50 {f['baseline_p50']:.1f} s"
              f"  max {f['baseline_max']:.1f} s")
        print(f"  ratio, (failover max − TTL) / baseline max:"
              f" {(f['running_max'] - f['ttl']) / f['baseline_max']:.2f}")
        print(f"  runs lost at the sites that stayed alive: {f['false_failovers']};"
              f" lease requests refused: {f['refused']}")
    if args.skip_latency:
        return
    client = bench_client(args)
    print(f"client, against a trivial endpoint: {client['achieved']:.0f}/s (asked"
          f" {args.rate:.0f}/s), round trip p50 {client['rtt_p50'] * 1000:.1f} ms"
          f"  p99 {client['rtt_p99'] * 1000:.1f} ms; capacity {client['capacity']:.0f}/s"
          f" (asked {4 * args.rate:.0f}/s)")
    print(f"latency: agents long-polling up to {args.wait_s} s (asking at most every"
          f" {args.poll_s} s), cycle every {args.cycle_s} s or on submit (gap"
          f" {args.cycle_gap_s} s)")
    for processes in counts:
        run = bench_latency(args, processes, args.rate, args.seconds, args.per_pool)
        _print_run(f"{processes} platform process{'es' if processes > 1 else ''}", run,
                   args.rate)
        print(f"  ratio, submits/s achieved against the platform / against the trivial"
              f" endpoint: {run['achieved'] / client['achieved']:.2f}")
    print(f"capacity: asked {args.capacity_rate:.0f} submits/s for {args.capacity_seconds} s,"
          f" pools of {args.capacity_per_pool} (room for about"
          f" {args.sites * 2 * args.capacity_per_pool:,} accelerators: they fill up)")
    capacity = {}
    for processes in counts:
        capacity[processes] = run = bench_latency(
            argparse.Namespace(**{**vars(args), "threads": args.capacity_threads}), processes,
            args.capacity_rate, args.capacity_seconds, args.capacity_per_pool)
        _print_run(f"{processes} platform process{'es' if processes > 1 else ''}", run,
                   args.capacity_rate)
    base = counts[0]
    for processes in counts[1:]:
        many, one = capacity[processes], capacity[base]
        print(f"  ratio, submits/s taken by {processes} processes / by {base}:"
              f" {many['achieved'] / one['achieved']:.2f} (on {os.cpu_count()} cores shared"
              f" with PostgreSQL and the clients)")
        print(f"  platform CPU per submit, {processes} processes / {base}:"
              f" {many['platform_ms'] / one['platform_ms']:.2f} (1 means it scales with the"
              f" cores given to platform processes until PostgreSQL, at"
              f" {many['database_ms']:.2f} ms a submit, is the limit)")


def _print_run(label: str, run: dict[str, float], asked: float) -> None:
    print(f"  {label}: {run['submitted']:,} submits at {run['achieved']:.0f}/s (asked"
          f" {asked:.0f}/s); {run['unplaced']:,} queued at the end;"
          f" {run['overcommitted']} pools overcommitted ({run['live']:,} live runs, one"
          f" snapshot)")
    print(f"    submit → placed  p50 {run['placed_p50'] * 1000:.0f} ms"
          f"  p99 {run['placed_p99'] * 1000:.0f} ms")
    print(f"    submit → leased  p50 {run['leased_p50'] * 1000:.0f} ms"
          f"  p99 {run['leased_p99'] * 1000:.0f} ms  ({run['leased']:,} leased)")
    print(f"    submit POST round trip  p50 {run['rtt_p50'] * 1000:.1f} ms"
          f"  p99 {run['rtt_p99'] * 1000:.1f} ms")
    print(f"    CPU per submit (placing and leasing it included): platform processes"
          f" {run['platform_ms']:.2f} ms, their PostgreSQL backends {run['database_ms']:.2f} ms")

if __name__ == "__main__":
    main()
