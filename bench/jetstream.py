"""What buffering ingest in NATS JetStream adds and costs, against today's HTTP intake, in one run.

The same signed, gzip'd report batches as ``bench/ingest.py`` builds (its own ``_plan``: one
simulated site per agent, each batch signed and gzip'd by ``agents.uploader.seal``) go into
a fresh PostgreSQL database by two paths, one after the other, each on a database of its own:

A (today): each agent POSTs its bodies to a ``jinsuan serve`` process, one report in flight
   per agent, as real agents send. Measured: samples/s end to end, the latency of each POST
   (what an agent waits for: verified, validated and committed), the platform's CPU.

B (buffered): each agent publishes its bodies to a JetStream stream (file storage, one subject
   per site, headers: agent id, signature, content encoding, ``Nats-Msg-Id`` so that a retried
   publish is stored once) and waits for the stream's acknowledgement, one publish in flight
   per agent. A consumer process (this file, ``--consume``) pulls from a durable pull consumer
   in batches (up to ``--fetch`` messages held at a time) and hands each body to the intake's
   own code path in-process (``collectors.intake.Intake.accept``, what ``POST /v1/reports``
   calls after reading the body: verify, validate, COPY), ``--workers`` bodies at once on a
   thread pool as the HTTP server's thread pool does, with the garbage collector tuned as
   ``jinsuan serve`` tunes it. It acknowledges a message once its batch is committed
   (at-least-once; the intake is idempotent on (agent, seq)), terminates one the intake
   refuses (as a 4xx tells an agent not to retry) and asks again later for one the store
   failed (as a 503 does).
   First a *backlog* round is published while the consumer waits (an outage of the store, as
   JetStream would absorb it): the publish rate and ack latency with nothing else running, the
   stream's size, then the consumer's drain rate into the store. Then the *live* rounds,
   publishers and consumer at once: publish-ack latency (what an agent would wait for),
   samples/s from the first publish to the last commit, and the delay of each batch from its
   publish to its commit (the publisher's clock in a bench-only header, the consumer's after
   the commit; one machine, one clock).

Each path ends with one *paced* round, offered to both at ``--pace`` (0.5) of A's flood rate,
each agent's bodies evenly spread: what an agent waits and the delay to commit when the store
keeps up, as it does in service, where the flood rounds show them under overload.

Both: the CPU of the platform side per sample (A: the server; B: the consumer and nats-server,
read from ``/proc``), and a table of B against A with the ratios. The stream's bytes per
sample are its stored bytes as nats-server counts them (``StreamState.bytes``: each record's
body, headers, subject and 30 bytes of framing and hash, which is what its file store writes,
less its small index files), set against the gzip'd body's own bytes per sample.

    python bench/jetstream.py [--sites 4] [--accelerators 256] [--cycles-per-batch 6]
                              [--batches 12] [--rounds 3] [--workers 4] [--fetch 8]

PostgreSQL: $JINSUAN_BENCH_PG (an admin URL) or 127.0.0.1:5432, one database per path made
for the run and dropped after it. NATS with JetStream: $JINSUAN_BENCH_NATS or
nats://127.0.0.1:4222; a stream named for the run is deleted at the end. nats-server's CPU
is read from ``/proc/<pid>/stat``, the pid found by its command name (``--nats-pid`` when
several run). Needs ``nats-py`` (``pip install nats-py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
# Run as a script, bench/ is first on sys.path; bench/dashboards.py would hide the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import asyncio
import json
import math
import os
import queue
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nats
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from bench.ingest import ADMIN_URL, Plan, _cpu_seconds, _free_port, _plan, _start_server
from collectors.intake import Intake, Rejected
from jinsuan.cli.server import without_secrets
from jinsuan.contract import signing
from jinsuan.contract.wire import AGENT_HEADER, SIGNATURE_HEADER
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.sites import create_enrolment_token, create_site, enrol_agent
from jinsuan.kernel.store import Database, citus
from jinsuan.kernel.store.migrate import Flavour
from jinsuan.serve import tune_gc_for_ingest

NATS_URL = os.environ.get("JINSUAN_BENCH_NATS", "nats://127.0.0.1:4222")
DURABLE = "intake"
SENT_HEADER = "Jinsuan-Bench-Sent-Ns"  # bench only: the publisher's clock at publish
WAIT_S = 120  # longest wait for a round to be stored before the run is called failed


# -- shared set-up --------------------------------------------------------------------------


@dataclass
class Store:
    """A fresh database with ``args.sites`` sites, one enrolled agent each."""

    url: str
    flavour: Flavour
    data_dir: str
    agents: list[tuple[str, int, Ed25519PrivateKey]]  # agent id, site id, signing key


@contextmanager
def fresh_store(args: argparse.Namespace) -> Iterator[Store]:
    """Make the database, its sites and agents (enrolled in-process, as the enrol route does);
    drop it on leaving."""
    name = f"jinsuan_bench_{uuid.uuid4().hex[:8]}"
    cluster = citus.nodes(ADMIN_URL)
    url = citus.create_database(cluster, name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(database_url=url, data_dir=Path(tmp), run_background_jobs=False)
            db = Database.open(settings)
            agents = []
            try:
                with db.pool.connection() as conn:
                    for i in range(args.sites):
                        site = create_site(conn, enterprise="Bench Co.", name=f"bench-{i}",
                                           city="太原")
                        token = create_enrolment_token(conn, site.id, created_by=None)
                        key = signing.new_private_key()
                        agent_id, _ = enrol_agent(conn, token=token,
                                                  public_key=signing.public_key_b64(key),
                                                  hostname=f"bench-{i}")
                        agents.append((agent_id, site.id, key))
                    today = datetime.now(UTC).date()
                    db.partitions.ensure(conn, [today - timedelta(days=d) for d in range(2)])
                flavour = db.flavour
            finally:
                db.close()
            yield Store(url, flavour, tmp, agents)
    finally:
        citus.drop_database(cluster, name)


def plans(store: Store, args: argparse.Namespace, rounds: int) -> list[Plan]:
    """``rounds`` rounds of signed bodies per agent, built before any clock starts."""
    shape = argparse.Namespace(rounds=rounds, batches=args.batches,
                               cycles_per_batch=args.cycles_per_batch)
    span = timedelta(seconds=10 * rounds * args.batches * args.cycles_per_batch)
    start = datetime.now(UTC) - span - timedelta(minutes=10)
    out = []
    for i, (agent_id, site_id, key) in enumerate(store.agents):
        site = SimulatedSite(SimulatedSiteConfig(
            seed=i, fleet={"NVIDIA H800": args.accelerators // 2,
                           "Ascend910B3": args.accelerators - args.accelerators // 2}))
        out.append(_plan(agent_id, site_id, key, site, start, shape))
    return out


def samples_in(plans_: list[Plan], rnd: int) -> int:
    return sum(s for p in plans_ for _, _, s in p.bodies[rnd])


def stored_samples(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM samples").fetchone()[0]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1): a value that was measured, never interpolated."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def platform_env(store: Store) -> dict[str, str]:
    """The environment a platform process reads its settings from, as bench/ingest.py's."""
    return dict(os.environ, DATABASE_URL=store.url, JINSUAN_RUN_BACKGROUND_JOBS="false",
                JINSUAN_DATA_DIR=store.data_dir, JINSUAN_POOL_MAX_SIZE="8",
                JINSUAN_USE_TIMESCALE=str(store.flavour is Flavour.TIMESCALE).lower(),
                JINSUAN_USE_CITUS=str(store.flavour is Flavour.CITUS).lower())


def nats_server_pid() -> int:
    """The one nats-server process on this machine, by its command name."""
    pids = [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _comm(p) == "nats-server"]
    if len(pids) != 1:
        raise SystemExit(f"found {len(pids)} nats-server processes; name one with --nats-pid")
    return pids[0]


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:  # ended meanwhile, or not ours to read
        return ""


# -- results ---------------------------------------------------------------------------------


@dataclass
class Measured:
    """One path's figures over its live rounds."""

    samples: int = 0
    wall_s: list[float] = field(default_factory=list)  # per round
    rates: list[float] = field(default_factory=list)  # samples/s per round
    waits: list[float] = field(default_factory=list)  # per body: what the agent waited, s
    delays: list[float] = field(default_factory=list)  # per body: publish to commit, s (B)
    paced_rate: float = 0.0  # samples/s offered in the paced round
    paced_waits: list[float] = field(default_factory=list)
    paced_delays: list[float] = field(default_factory=list)
    platform_cpu_s: float = 0.0  # A: the server; B: the consumer
    broker_cpu_s: float = 0.0  # B: nats-server
    sender_cpu_s: float = 0.0  # this process: the agents' side

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


@dataclass(frozen=True)
class Pace:
    """When each body of a paced round goes: agent ``i``'s ``k``-th at
    ``start + (k + i / agents) * gap`` (agents staggered within the gap, not all at once)."""

    start: float  # time.perf_counter()
    gap: float
    agents: int

    @classmethod
    def of(cls, work: list[Plan], rnd: int, rate: float) -> Pace:
        """Round ``rnd`` spread evenly to offer ``rate`` samples/s."""
        seconds = samples_in(work, rnd) / rate
        return cls(time.perf_counter() + 0.1, seconds / len(work[0].bodies[rnd]), len(work))

    def delay(self, agent: int, k: int) -> float:
        """Seconds until agent ``agent`` sends its ``k``-th body."""
        return max(0.0, self.start + (k + agent / self.agents) * self.gap - time.perf_counter())


# -- path A: HTTP ------------------------------------------------------------------------------


def _post_all(url: str, plan: Plan, rnd: int, waits: list[float], agent: int = 0,
              pace: Pace | None = None) -> None:
    """One agent's bodies of round ``rnd``, one POST in flight, each one's latency kept; as
    fast as they are answered, or when ``pace`` says."""
    with httpx.Client(timeout=120) as client:
        for k, (gz, signature, _) in enumerate(plan.bodies[rnd]):
            if pace is not None:
                time.sleep(pace.delay(agent, k))
            began = time.perf_counter()
            response = client.post(
                f"{url}/v1/reports", content=gz,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json",
                         AGENT_HEADER: plan.agent_id, SIGNATURE_HEADER: signature},
            )
            waits.append(time.perf_counter() - began)
            response.raise_for_status()
            assert response.json()["status"] == "stored", response.text


def path_a(args: argparse.Namespace) -> Measured:
    """Flood rounds, then one paced at ``args.pace`` of their median rate."""
    out = Measured()
    with fresh_store(args) as store:
        print(f"== A, HTTP intake: {without_secrets(store.url)} ({store.flavour})", flush=True)
        work = plans(store, args, args.rounds + 1)  # the paced round last
        port = _free_port()
        server = _start_server(store.url, store.data_dir, port, store.flavour)
        base = f"http://127.0.0.1:{port}"
        try:
            for rnd in range(args.rounds):
                total = samples_in(work, rnd)
                threads = [threading.Thread(target=_post_all, args=(base, p, rnd, out.waits))
                           for p in work]
                server_cpu, sender_cpu = _cpu_seconds(server.pid), time.process_time()
                began = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - began
                out.platform_cpu_s += _cpu_seconds(server.pid) - server_cpu
                out.sender_cpu_s += time.process_time() - sender_cpu
                out.samples += total
                stored = stored_samples(store.url)
                assert stored == out.samples, f"{stored} samples stored, {out.samples} sent"
                out.wall_s.append(wall)
                out.rates.append(total / wall)
                print(f"round {rnd + 1}: {total:,} samples in {wall:.2f} s: "
                      f"{total / wall:,.0f}/s end to end", flush=True)
            out.paced_rate = args.pace * out.rate
            pace = Pace.of(work, args.rounds, out.paced_rate)
            threads = [threading.Thread(target=_post_all,
                                        args=(base, p, args.rounds, out.paced_waits, i, pace))
                       for i, p in enumerate(work)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out.paced_delays = out.paced_waits  # no queue: committed when answered
            stored = stored_samples(store.url)
            assert stored == out.samples + samples_in(work, args.rounds), f"{stored} stored"
            print(f"paced round: {samples_in(work, args.rounds):,} samples offered at"
                  f" {out.paced_rate:,.0f}/s", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return out


# -- path B: JetStream -------------------------------------------------------------------------


class Consumer:
    """The consumer process (``--consume``), and the JSON lines it reports on stdout: one
    ``{"ready": pid}``, then one per body handled."""

    def __init__(self, store: Store, stream: str, args: argparse.Namespace) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--consume", stream, "--workers", str(args.workers),
             "--fetch", str(args.fetch)],
            env=platform_env(store), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._next(60)
        assert "ready" in ready, ready

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)  # the process ended

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise SystemExit(f"the consumer said nothing for {timeout:.0f} s") from None
        if line is None:
            raise SystemExit(f"the consumer ended (exit status {self.process.wait()})")
        return line

    def go(self) -> int:
        """Start pulling; the wall-clock time it was told to, in ns."""
        assert self.process.stdin is not None
        now = time.time_ns()
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return now

    def stored(self, samples: int) -> list[dict[str, Any]]:
        """The reports of the bodies handled until ``samples`` samples are stored."""
        reports: list[dict[str, Any]] = []
        deadline = time.monotonic() + WAIT_S
        while samples > 0:
            line = self._next(max(0.0, deadline - time.monotonic()))
            if "rejected" in line:
                raise SystemExit(f"the intake refused a body: {line['rejected']}")
            if line.get("status") == "stored":
                samples -= line["samples"]
                reports.append(line)
        return reports

    @property
    def cpu_s(self) -> float:
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """Close its stdin (it finishes the batch in hand and ends); kill it if it lingers."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _publish_round(agents: list[tuple[JetStreamContext, str]], work: list[Plan],
                         rnd: int, stream: str, waits: list[float],
                         pace: Pace | None = None) -> tuple[int, float]:
    """Every agent publishes its round ``rnd`` at once, one publish in flight each, as fast as
    acked or when ``pace`` says; the wall-clock start (ns) and the seconds until the last ack."""

    async def agent(n: int, js: JetStreamContext, subject: str, plan: Plan) -> None:
        for i, (gz, signature, _) in enumerate(plan.bodies[rnd]):
            if pace is not None:
                await asyncio.sleep(pace.delay(n, i))
            headers = {AGENT_HEADER: plan.agent_id, SIGNATURE_HEADER: signature,
                       "Content-Encoding": "gzip", "Nats-Msg-Id": f"{plan.agent_id}.{rnd}.{i}",
                       SENT_HEADER: str(time.time_ns())}
            began = time.perf_counter()
            ack = await js.publish(subject, gz, timeout=30, stream=stream, headers=headers)
            waits.append(time.perf_counter() - began)
            assert not ack.duplicate, "a publish was taken for a duplicate"

    started = time.time_ns()
    began = time.perf_counter()
    await asyncio.gather(*(agent(n, js, subject, plan)
                           for n, ((js, subject), plan) in enumerate(zip(agents, work,
                                                                          strict=True))))
    return started, time.perf_counter() - began


@dataclass
class Backlog:
    """The first round, published while the consumer waits, then drained."""

    samples: int
    publish_rate: float  # samples/s
    waits: list[float]  # publish-ack latencies, s
    drain_rate: float  # samples/s into the store
    publish_broker_cpu_s: float  # nats-server while storing
    drain_broker_cpu_s: float  # nats-server while delivering
    drain_platform_cpu_s: float  # the consumer while draining


@dataclass
class Buffered:
    live: Measured
    backlog: Backlog
    stream_bytes: int  # as the stream counts them, for every body published
    body_bytes: int  # the gzip'd bodies alone
    samples: int  # in every body published
    messages: int


async def _path_b(store: Store, work: list[Plan], args: argparse.Namespace,
                  broker: int, paced_rate: float) -> Buffered:
    run = uuid.uuid4().hex[:8]
    stream, prefix = f"JINSUAN_BENCH_{run}", f"jinsuan.bench.{run}.reports"
    admin = await nats.connect(NATS_URL)
    connections = []
    consumer = None
    try:
        jsm = admin.jetstream()
        await jsm.add_stream(StreamConfig(
            name=stream, subjects=[f"{prefix}.>"], storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS, duplicate_window=120.0))
        await jsm.add_consumer(stream, ConsumerConfig(
            durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=60.0,
            max_ack_pending=1000))
        for _ in work:  # one connection per agent, as agents would have
            nc = await nats.connect(NATS_URL)
            connections.append(nc)
        agents = [(nc.jetstream(), f"{prefix}.{p.site_id}")
                  for nc, p in zip(connections, work, strict=True)]
        consumer = await asyncio.to_thread(Consumer, store, stream, args)

        # Backlog: published with the consumer waiting, then drained.
        total = samples_in(work, 0)
        waits: list[float] = []
        cpu = _cpu_seconds(broker)
        _, publish_s = await _publish_round(agents, work, 0, stream, waits)
        publish_cpu = _cpu_seconds(broker) - cpu
        cpu, platform_cpu = _cpu_seconds(broker), consumer.cpu_s
        go = consumer.go()
        reports = await asyncio.to_thread(consumer.stored, total)
        drain_s = (max(r["stored"] for r in reports) - go) / 1e9
        backlog = Backlog(total, total / publish_s, waits, total / drain_s, publish_cpu,
                          _cpu_seconds(broker) - cpu, consumer.cpu_s - platform_cpu)
        print(f"backlog: {total:,} samples published in {publish_s:.2f} s"
              f" ({total / publish_s:,.0f}/s) with the consumer waiting, drained into the store"
              f" in {drain_s:.2f} s ({total / drain_s:,.0f}/s)", flush=True)

        live = Measured()
        for rnd in range(1, args.rounds + 1):
            total = samples_in(work, rnd)
            cpu, platform_cpu, sender_cpu = (_cpu_seconds(broker), consumer.cpu_s,
                                             time.process_time())
            started, publish_s = await _publish_round(agents, work, rnd, stream, live.waits)
            reports = await asyncio.to_thread(consumer.stored, total)
            live.broker_cpu_s += _cpu_seconds(broker) - cpu
            live.platform_cpu_s += consumer.cpu_s - platform_cpu
            live.sender_cpu_s += time.process_time() - sender_cpu
            live.delays += [(r["stored"] - r["sent"]) / 1e9 for r in reports]
            wall = (max(r["stored"] for r in reports) - started) / 1e9
            live.samples += total
            live.wall_s.append(wall)
            live.rates.append(total / wall)
            print(f"round {rnd}: {total:,} samples published in {publish_s:.2f} s"
                  f" ({total / publish_s:,.0f}/s), all stored {wall:.2f} s after the first"
                  f" publish: {total / wall:,.0f}/s end to end", flush=True)

        paced = args.rounds + 1
        live.paced_rate = paced_rate
        await _publish_round(agents, work, paced, stream, live.paced_waits,
                             Pace.of(work, paced, paced_rate))
        reports = await asyncio.to_thread(consumer.stored, samples_in(work, paced))
        live.paced_delays = [(r["stored"] - r["sent"]) / 1e9 for r in reports]
        print(f"paced round: {samples_in(work, paced):,} samples offered at {paced_rate:,.0f}/s",
              flush=True)

        info = await jsm.stream_info(stream)
        bodies = sum(len(r) for p in work for r in p.bodies)
        assert info.state.messages == bodies, f"{info.state.messages} messages, {bodies} sent"
        stored = stored_samples(store.url)
        expected = sum(samples_in(work, r) for r in range(len(work[0].bodies)))
        assert stored == expected, f"{stored} samples stored, {expected} published"
        body_bytes = sum(len(gz) for p in work for r in p.bodies for gz, _, _ in r)
        return Buffered(live, backlog, info.state.bytes, body_bytes, expected, bodies)
    finally:
        if consumer is not None:
            await asyncio.to_thread(consumer.stop)
        for nc in connections:
            await nc.close()
        try:
            await admin.jetstream().delete_stream(stream)
        finally:
            await admin.close()


def path_b(args: argparse.Namespace, paced_rate: float) -> Buffered:
    """The backlog round, the flood rounds, then one paced at ``paced_rate`` samples/s."""
    broker = args.nats_pid or nats_server_pid()
    with fresh_store(args) as store:
        print(f"== B, JetStream then the intake in-process: {without_secrets(store.url)}"
              f" ({store.flavour}), {NATS_URL}", flush=True)
        work = plans(store, args, args.rounds + 2)  # the backlog round first, paced last
        return asyncio.run(_path_b(store, work, args, broker, paced_rate))


# -- the consumer process ----------------------------------------------------------------------


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


async def _handle(intake: Intake, executor: ThreadPoolExecutor, msg: Msg) -> None:
    """Hand one body to the intake; ack once committed, as an agent's 2xx/4xx/503 would go."""
    headers = msg.headers or {}
    loop = asyncio.get_running_loop()
    try:
        ack = await loop.run_in_executor(
            executor, intake.accept, msg.data, headers.get("Content-Encoding", ""),
            headers.get(AGENT_HEADER), headers.get(SIGNATURE_HEADER))
    except Rejected as exc:  # permanent: never redelivered
        await msg.term()
        _emit({"rejected": exc.label})
        return
    except psycopg.Error:  # the store failed: redelivered later
        await msg.nak(delay=1)
        _emit({"retry": "store_error"})
        return
    stored = time.time_ns()
    await msg.ack()
    _emit({"sent": int(headers[SENT_HEADER]), "stored": stored, "samples": ack.samples,
           "status": ack.status})


async def _consume(intake: Intake, stream: str, workers: int, fetch: int) -> None:
    """Pull while fewer than ``fetch`` messages are held (fetched, not yet acknowledged), so
    the ``workers`` threads always have the next body at hand and no batch waits for its
    slowest body before the next pull."""
    loop = asyncio.get_running_loop()
    nc = await nats.connect(NATS_URL)
    held: set[asyncio.Task[None]] = set()
    try:
        sub = await nc.jetstream().pull_subscribe_bind(durable=DURABLE, stream=stream)
        with ThreadPoolExecutor(workers, thread_name_prefix="intake") as executor:
            _emit({"ready": os.getpid()})
            await loop.run_in_executor(None, sys.stdin.readline)  # "go"
            closed = loop.run_in_executor(None, sys.stdin.readline)  # EOF: stop
            while not closed.done():
                if len(held) >= fetch:
                    await asyncio.wait(held, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(fetch - len(held), timeout=0.5)
                except TimeoutError:
                    continue
                for msg in msgs:
                    task = asyncio.create_task(_handle(intake, executor, msg))
                    held.add(task)
                    task.add_done_callback(held.discard)
            await asyncio.gather(*held)
    finally:
        await nc.close()


def consume(stream: str, workers: int, fetch: int) -> None:
    """The consumer process: a platform's intake without its HTTP front, fed by JetStream."""
    settings = Settings()  # from the environment, as `jinsuan serve` reads it
    db = Database.open(settings)
    try:
        intake = Intake(Platform(settings, db))
        tune_gc_for_ingest()  # as `jinsuan serve` does before it takes reports
        asyncio.run(_consume(intake, stream, workers, fetch))
    finally:
        db.close()


# -- the report --------------------------------------------------------------------------------


def report(a: Measured, b: Buffered, args: argparse.Namespace) -> None:
    """Both paths side by side, B over A, then what only B has: the backlog and the stream."""
    live, backlog = b.live, b.backlog
    ms, us_a, us_b = 1000.0, 1e6 / a.samples, 1e6 / live.samples
    per_body = live.samples / len(live.waits)  # samples in a body, on average
    rows: list[tuple[str, float, float, str]] = [
        ("samples/s end to end (median round)", a.rate, live.rate, ",.0f"),
        ("agent waits p50, ms (A: POST; B: publish ack)",
         percentile(a.waits, 0.5) * ms, percentile(live.waits, 0.5) * ms, ".1f"),
        ("agent waits p99, ms", percentile(a.waits, 0.99) * ms,
         percentile(live.waits, 0.99) * ms, ".1f"),
        ("sent to committed p50, ms", percentile(a.waits, 0.5) * ms,
         percentile(live.delays, 0.5) * ms, ".1f"),
        ("sent to committed p99, ms", percentile(a.waits, 0.99) * ms,
         percentile(live.delays, 0.99) * ms, ".1f"),
        ("platform CPU, us/sample (A: server; B: consumer)",
         a.platform_cpu_s * us_a, live.platform_cpu_s * us_b, ".2f"),
        ("nats-server CPU, us/sample", 0.0, live.broker_cpu_s * us_b, ".3f"),
        ("nats-server CPU, us/body", 0.0, live.broker_cpu_s * us_b * per_body, ".0f"),
        ("platform side CPU in all, us/sample", a.platform_cpu_s * us_a,
         (live.platform_cpu_s + live.broker_cpu_s) * us_b, ".2f"),
        ("agents' side CPU (this process), us/sample", a.sender_cpu_s * us_a,
         live.sender_cpu_s * us_b, ".2f"),
    ]
    paced = [
        ("agent waits p50, ms", percentile(a.paced_waits, 0.5) * ms,
         percentile(live.paced_waits, 0.5) * ms, ".1f"),
        ("agent waits p99, ms", percentile(a.paced_waits, 0.99) * ms,
         percentile(live.paced_waits, 0.99) * ms, ".1f"),
        ("sent to committed p50, ms", percentile(a.paced_delays, 0.5) * ms,
         percentile(live.paced_delays, 0.5) * ms, ".1f"),
        ("sent to committed p99, ms", percentile(a.paced_delays, 0.99) * ms,
         percentile(live.paced_delays, 0.99) * ms, ".1f"),
    ]
    print(f"\nflood: {args.rounds} rounds of {a.samples // args.rounds:,} samples in"
          f" {len(a.waits) // args.rounds} bodies from {args.sites} agents, each sending its"
          " next body as soon as the last is answered")
    _table(rows)
    print(f"paced: one round offered at {a.paced_rate:,.0f} samples/s ({args.pace:g} of A's"
          " flood rate), to both")
    _table(paced)
    print("(A has no queue: its POST returns once the batch is committed, so what the agent"
          " waits and the delay to commit are one figure. CPU from /proc in 10 ms ticks.)")
    print(f"\nbacklog (B's first round, {backlog.samples:,} samples, the consumer not pulling):")
    print(f"  published at {backlog.publish_rate:,.0f} samples/s, ack p50"
          f" {percentile(backlog.waits, 0.5) * ms:.1f} ms, p99"
          f" {percentile(backlog.waits, 0.99) * ms:.1f} ms; nats-server CPU"
          f" {backlog.publish_broker_cpu_s * 1e6 / backlog.samples:.3f} us/sample to store")
    print(f"  drained into the store at {backlog.drain_rate:,.0f} samples/s"
          f" ({backlog.drain_rate / a.rate:.2f} of A's flood rate); CPU per sample: consumer"
          f" {backlog.drain_platform_cpu_s * 1e6 / backlog.samples:.2f} us, nats-server"
          f" {backlog.drain_broker_cpu_s * 1e6 / backlog.samples:.3f} us to deliver")
    per_sample = b.stream_bytes / b.samples
    print(f"\nstream: {b.stream_bytes:,} bytes for {b.messages} bodies of {b.samples:,}"
          f" samples: {per_sample:.2f} bytes/sample (the gzip'd bodies alone"
          f" {b.body_bytes / b.samples:.2f}); {per_sample * 8640 / 1e3:,.1f} kB per series"
          " and day of outage at a 10 s interval")


def _table(rows: list[tuple[str, float, float, str]]) -> None:
    print(f"  {'':<50} {'A (HTTP)':>12} {'B (JetStream)':>14} {'B/A':>7}")
    for name, value_a, value_b, form in rows:
        ratio = f"{value_b / value_a:.2f}" if value_a else "-"
        print(f"  {name:<50} {value_a:>12{form}} {value_b:>14{form}} {ratio:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--accelerators", type=int, default=256)
    parser.add_argument("--cycles-per-batch", type=int, default=6)
    parser.add_argument("--batches", type=int, default=12, help="per agent and round")
    parser.add_argument("--rounds", type=int, default=3, help="live rounds per path")
    parser.add_argument("--workers", type=int, default=4,
                        help="bodies the consumer writes at once")
    parser.add_argument("--fetch", type=int, default=8, help="the consumer's pull batch")
    parser.add_argument("--pace", type=float, default=0.5,
                        help="the paced round's load, as a fraction of A's flood rate")
    parser.add_argument("--nats-pid", type=int, default=None)
    parser.add_argument("--consume", metavar="STREAM", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        consume(args.consume, args.workers, args.fetch)
        return
    a = path_a(args)
    b = path_b(args, a.paced_rate)
    report(a, b, args)


if __name__ == "__main__":
    main()
