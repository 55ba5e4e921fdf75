"""Faults under load on the highly available store (Patroni pair, ``.ci/ha.sh``), each ending
in a count, end to end, against what the agents measured and the jobs submitted.

Everything runs as real processes: ``jinsuan serve`` (one or two replicas) with the pair's
multi-host URL (``target_session_attrs=read-write``), site agents (``python -m
tests.agent_harness``: the real agent, ``agents.daemon.main``, with the journal probe, whose
fsynced journal lists every read the agent was handed, so the test knows every sample
measured) running the jobs they lease with the process executor, and a dispatcher submitting
jobs that draw on a compute voucher as they end. The faults:

* the primary SIGKILLed during ingest and placement, the synchronous standby promoted;
* the database restarted (Patroni ``POST /restart``) during ingest, an agent SIGKILLed while
  its uploads were failing;
* a platform replica SIGKILLed in the middle of a placement cycle's commit;
* a site's link to the platform cut (a TCP relay) with jobs running there;
* a platform replica SIGKILLed in the middle of a voucher approval, and after its commit.

Each ends with the counts: every sample measured stored once (a read SIGKILL caught before it
was spooled is the only one allowed missing), every job ended exactly once, no pool held past
its size, every usage record drawn once with its one ledger entry, voucher balances = issued -
drawn, and the ledger's chain verified against a signed checkpoint. The failover times (last
write before, first write after) and what the agents' spools absorbed are printed (``-s``) and,
where ``JINSUAN_HA_RECORD`` names a folder, written there as JSON (docs/ha.md quotes them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from ha import fresh_database, kill_leader, restart_leader, start_pair, wait_for_new_leader
from ha import healthy as pair_healthy
from ha import members as pair_members
from ha import url as pair_url
from servers import free_port

from agents.identity import enrol, load_identity
from agents.spool import Spool, read_summary
from jinsuan.contract.creditcode import check_character
from jinsuan.contract.leasewire import (
    AGENT_HEADER,
    SIGNATURE_HEADER,
    STALE_LEASE_CODE,
    RunEvent,
    RunEventState,
    run_events_path,
)
from jinsuan.contract.policytime import SHANGHAI
from jinsuan.contract.signing import sign
from jinsuan.demo import vouchers as voucher_story
from jinsuan.kernel import ledger
from jinsuan.kernel.auth import Role, authenticate, create_key
from jinsuan.kernel.sites import create_enrolment_token, create_site
from jinsuan.kernel.store.migrate import upgrade
from rewards.vouchers import issuing, parties
from tests.agent_peers import journal_reads, power_at

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120
MODEL = "NVIDIA H800"  # what the journal probe's accelerators are
PRICE = "3600.00"  # yuan an accelerator-hour: a second of a job costs a yuan, enough to draw
TERMINAL = ("succeeded", "failed", "cancelled")
LIVE = ("placed", "leased", "running")
PAPERS = [{"name": "算力服务合同.pdf", "sha256": "0" * 63 + "2"}]
APPLICANT_CODE = "91140100MA0JY2699"  # a made-up unified social credit code, less its check


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT_S,
               alive: Callable[[], None] | None = None) -> None:
    """Poll ``condition`` until true; ``alive`` raises if a process it watches has died. A
    condition that reads the store and finds no primary (the pair failing over) is not true."""
    deadline = time.monotonic() + timeout

    def holds() -> bool:
        try:
            return bool(condition())
        except psycopg.OperationalError:
            return False

    while not holds():
        if alive is not None:
            alive()
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def record(name: str, figures: dict[str, Any]) -> None:
    """Print the figures (``pytest -s``) and keep them as JSON under $JINSUAN_HA_RECORD."""
    text = json.dumps(figures, indent=2, default=str, ensure_ascii=False)
    print(f"\n{name}: {text}")
    where = os.environ.get("JINSUAN_HA_RECORD")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"{name}.json").write_text(text + "\n", encoding="utf-8")


# --- the platform's processes -------------------------------------------------------------------


@dataclass
class Replica:
    """One ``jinsuan serve`` process; its output goes to ``log``."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def sigkill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


class Replicas:
    """The platform's replicas on one database of the pair, each on a port of its own that it
    keeps when started again (as behind a service address), all stopped on ``close``."""

    def __init__(self, dbname: str, work: Path, **environment: str) -> None:
        self.dbname, self.work, self.environment = dbname, work, environment
        self.ports: dict[str, int] = {}
        self.running: dict[str, Replica] = {}

    def start(self, name: str, database_url: str | None = None) -> Replica:
        """Start ``jinsuan serve`` as replica ``name`` (on the pair's multi-host URL, unless
        ``database_url``); return once it answers."""
        port = self.ports.setdefault(name, free_port())
        log = self.work / f"serve-{name}-{time.monotonic_ns()}.log"
        env = {**os.environ, "DATABASE_URL": database_url or pair_url(
                   self.dbname, application_name=f"jinsuan-{name}"),
               "JINSUAN_PORT": str(port), "JINSUAN_DATA_DIR": str(self.work / f"data-{name}"),
               "JINSUAN_LEDGER_KEY_FILE": str(self.work / "ledger.pem"),
               # Leases outlive a failover of a few seconds; a site whose runs were lost before
               # they started is held back briefly, not for the default minute.
               "JINSUAN_SCHED_LEASE_TTL_S": "60", "JINSUAN_SCHED_BACKOFF_S": "2",
               "JINSUAN_SCHED_CYCLE_EVERY_S": "0.5", **self.environment}
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "jinsuan.cli", "serve"], env=env,
                                       stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        replica = Replica(name, f"http://127.0.0.1:{port}", process, log)
        self.running[name] = replica

        def answers() -> bool:
            assert process.poll() is None, f"jinsuan serve {name} exited:\n{replica.output()}"
            try:
                return httpx.get(replica.url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, f"jinsuan serve {name} to answer")
        return replica

    def close(self) -> None:
        for replica in self.running.values():
            replica.stop()


# --- the sites' agents --------------------------------------------------------------------------


@dataclass
class SiteAgent:
    """A site and its agent process, reading every ``interval_s`` a simulated fleet of ``fleet``
    H800s (the shipped ``simulated`` probe: health, power, energy, meters) and, while
    ``devices``, the journal probe's ``devices`` accelerators, ``max_reads`` times: the journal
    witnesses every cycle the agent measured. It uploads to ``platform_url`` and, when
    ``max_runs``, runs the jobs it leases as local processes."""

    work: Path
    name: str
    platform_url: str
    fleet: int = 4
    devices: int = 0
    max_reads: int = 0
    max_runs: int = 0
    interval_s: float = 0.1
    site_id: int = 0
    agent_id: str = ""
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    at_kill: list[int] = field(default_factory=list)  # the last read journaled at each SIGKILL

    @property
    def state(self) -> Path:
        return self.work / "state"

    @property
    def journal(self) -> Path:
        return self.work / "journal.txt"

    def enrol(self, conn: psycopg.Connection, site_id: int) -> None:
        self.site_id = site_id
        token = create_enrolment_token(conn, site_id, created_by=None)
        self.agent_id = enrol(self.state, self.platform_url, token).agent_id
        witness = (f'[[probes.journal]]\ndeadline_s = 10\npath = "{self.journal}"\n'
                   f"devices = {self.devices}\nmax_reads = {self.max_reads}\n"
                   if self.devices else "")
        executor = (f'[executor]\nkind = "process"\nmax_runs = {self.max_runs}\n'
                    "heartbeat_s = 0.5\n" if self.max_runs else "")
        # A probe's deadline above the interval: a slow fsync under load must not turn a
        # journaled read into an abandoned one (the cycle is skipped instead).
        (self.work / "site.toml").write_text(f"""
[site]
name = "{self.name}"

[agent]
platform_url = "{self.platform_url}"
state_dir = "{self.state}"
interval_s = {self.interval_s}
metrics_listen = ""
backoff_base_s = 0.05
backoff_cap_s = 1.0
upload_timeout_s = 10

[[probes.simulated]]
deadline_s = 10
seed = {site_id}
fleet = {{ "{MODEL}" = {self.fleet} }}

{witness}
{executor}""", encoding="utf-8")

    def start(self) -> None:
        self.starts += 1
        log = self.work / f"agent-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.agent_harness", "--config",
                 str(self.work / "site.toml"), "--log-level", "WARNING"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)})

    def alive(self) -> None:
        assert self.process is not None and self.process.poll() is None, (
            f"agent {self.name} exited:\n"
            f"{(self.work / f'agent-{self.starts}.log').read_text(errors='replace')[-3000:]}")

    def sigkill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        reads = self.reads()
        if reads:
            self.at_kill.append(reads[-1])

    def stop(self) -> int | None:
        """SIGTERM, as a service manager stops it; its exit status (None if it had to be
        killed, or never ran)."""
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.terminate()
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
            return None

    def spooled_seqs(self) -> set[int]:
        """The seqs left in the spool of the stopped agent (not acknowledged by the platform)."""
        with Spool(self.state / "spool.sqlite") as spool:
            return {record.seq for record in spool.oldest(1_000_000)}

    def reads(self) -> list[int]:
        return journal_reads(self.journal)

    def pending(self) -> int:
        summary = read_summary(self.state / "spool.sqlite")
        return summary.pending if summary else 0


class SpoolWatch:
    """What the agents' spools hold, read every 50 ms: the most each held, and the most all held
    at once (batches not yet acknowledged by the platform)."""

    def __init__(self, agents: list[SiteAgent]) -> None:
        self.agents = agents
        self.most: dict[str, int] = {a.name: 0 for a in agents}
        self.most_together = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            together = 0
            for agent in self.agents:
                try:
                    held = agent.pending()
                except sqlite3.Error:  # a read racing the agent's own writes: next time
                    continue
                self.most[agent.name] = max(self.most[agent.name], held)
                together += held
            self.most_together = max(self.most_together, together)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class PoolWatch:
    """What the live runs hold in each pool, read every 50 ms, each read one consistent snapshot
    of committed state: the most each pool was seen to hold. An overcommit the platform
    committed lasts until its runs end (seconds), so it cannot slip between two reads."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.most: dict[tuple[int, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    while not self._stop.wait(0.05):
                        for site, model, held in conn.execute(
                                "SELECT site_id, model, sum(accelerators) FROM runs WHERE"
                                " state = ANY(%s) GROUP BY site_id, model", (list(LIVE),)):
                            key = (site, model)
                            self.most[key] = max(self.most.get(key, 0), int(held))
            except psycopg.OperationalError:  # the primary went away: read the next one
                self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Cable:
    """A TCP relay standing for a link: ``cut()`` drops the connections through it and refuses
    new ones, as a cut fibre would; ``mend()`` lets them through again. ``passes`` may drop one
    connection at a chosen message (a subclass)."""

    def __init__(self, target: str) -> None:
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.whole = True
        threading.Thread(target=self._accept, name="cable", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                if not self.whole:
                    near.close()
                    continue
                try:
                    far = socket.create_connection(self.target, timeout=5)
                except OSError:
                    near.close()
                    continue
                self.open |= {near, far}
            session: dict[str, Any] = {}
            for one, other, upstream in ((near, far, True), (far, near, False)):
                threading.Thread(target=self._pump, args=(one, other, upstream, session),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool,
              session: dict[str, Any]) -> None:
        try:
            while (data := source.recv(65536)) and self.passes(data, upstream, session):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def passes(self, data: bytes, upstream: bool, session: dict[str, Any]) -> bool:
        """Whether to pass ``data`` on (``upstream``: from the client); False drops the
        connection instead."""
        return True

    def cut(self) -> None:
        with self.lock:
            self.whole = False
            for end in self.open:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self.open.clear()

    def mend(self) -> None:
        with self.lock:
            self.whole = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


class LosesAGroupsAnswer(Cable):
    """A link to PostgreSQL that loses the answer to the first group of submits written in one
    statement (two jobs or more): PostgreSQL commits it, the platform's connection drops before
    the answer reaches it, as when the primary dies between its commit and its answer. The
    answer to a group of one is held a moment, so that the submits behind it make a group."""

    JOBS = b"INSERT INTO jobs ("
    ANSWER = re.compile(rb"C....INSERT 0 (\d+)\x00", re.S)

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.lost: list[int] = []  # the size of the group whose answer was lost

    def passes(self, data: bytes, upstream: bool, session: dict[str, Any]) -> bool:
        if upstream:
            session["jobs"] = self.JOBS in data and not self.lost
            return True
        found = self.ANSWER.search(data) if session.get("jobs") else None
        if found is None:
            return True
        session["jobs"] = False
        if int(found[1]) < 2:
            time.sleep(0.3)
            return True
        self.lost.append(int(found[1]))
        return False


@dataclass
class Dispatcher:
    """Submits ``jobs`` jobs, one every ``every_s``, to the replicas in turn, each once: a
    submit with no answer (or a 5xx) is not sent again, so a job the platform stored twice would
    show as two rows with one name. ``acked`` maps job ids to when their 201 came back."""

    urls: list[str]
    key: str
    jobs: int
    every_s: float
    voucher: int | None = None
    seconds: float = 1.0
    acked: dict[str, float] = field(default_factory=dict)
    acked_names: set[str] = field(default_factory=set)
    unanswered: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)

    def start(self) -> Dispatcher:
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=15) as client:
            for n in range(self.jobs):
                name = f"job-{n:03d}"
                spec: dict[str, Any] = {
                    "project": "ha", "name": name, "tasks": 1, "accelerators_per_task": 1,
                    "retries": 3, "max_runtime_s": 120,
                    "payload": {"command": ["sleep", str(self.seconds)]}}
                if self.voucher is not None:
                    spec["voucher"] = self.voucher
                try:
                    reply = client.post(self.urls[n % len(self.urls)] + "/v1/jobs", json=spec,
                                        headers={"Authorization": f"Bearer {self.key}"})
                except httpx.HTTPError as exc:
                    self.unanswered.append((name, type(exc).__name__))
                else:
                    if reply.status_code == 201:
                        self.acked[reply.json()["id"]] = time.time()
                        self.acked_names.add(name)
                    elif reply.status_code >= 500:  # the platform may have stored it or not
                        self.unanswered.append((name, str(reply.status_code)))
                    else:
                        self.refused.append((name, reply.status_code, reply.text))
                time.sleep(self.every_s)

    def done(self) -> bool:
        return not self._thread.is_alive()


# --- a stage: a database on the pair, its parties, its replicas and agents ----------------------


@dataclass
class Stage:
    dbname: str
    url: str
    work: Path
    replicas: Replicas
    admin: str
    dispatcher: str
    maker: str
    checker: str
    agents: list[SiteAgent] = field(default_factory=list)
    voucher: int | None = None
    _conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        """The test's own connection to the primary, made again after a fault broke it."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def provider_site(self, name: str) -> int:
        """A site of the voucher's provider (晋能智算), in Shanxi."""
        return create_site(self.conn, enterprise=voucher_story.PROVIDER, name=name,
                           city="太原").id

    def add_agent(self, replica: Replica, name: str, via: str | None = None,
                  **options: Any) -> SiteAgent:
        """A site of the provider and its agent, enrolled with ``replica``, sending to ``via``
        (a relay in front of it) or straight to it."""
        work = self.work / name
        work.mkdir()
        agent = SiteAgent(work, name, via or replica.url, **options)
        agent.enrol(self.conn, self.provider_site(name))
        if agent.max_runs:
            reply = httpx.put(f"{replica.url}/v1/sites/{agent.site_id}/scheduling",
                              json={"executor": "process", "prices": {MODEL: PRICE}},
                              headers={"Authorization": f"Bearer {self.admin}"}, timeout=30)
            assert reply.status_code == 200, reply.text
        self.agents.append(agent)
        return agent

    def issue_voucher(self) -> int:
        """The demo's voucher story: the tenant's applicant holds a voucher on its contract
        with the provider whose sites run the jobs."""
        maker, checker, dispatcher = (authenticate(self.conn, k) for k in (
            self.maker, self.checker, self.dispatcher))
        assert maker and checker and dispatcher
        voucher, line = voucher_story.ensure_voucher(self.conn, maker, checker, dispatcher,
                                                     datetime.now(SHANGHAI).date())
        assert voucher is not None, line
        self.voucher = voucher
        return voucher

    def start_agents(self) -> None:
        for agent in self.agents:
            agent.start()
        wait_until(self._all_reporting, "every agent's first report (and lease request)",
                   alive=self._agents_alive)

    def _agents_alive(self) -> None:
        for agent in self.agents:
            agent.alive()

    def _all_reporting(self) -> bool:
        reporting = {row[0] for row in self.conn.execute(
            "SELECT DISTINCT agent_id FROM reports")}
        leasing = {row[0] for row in self.conn.execute("SELECT agent_id FROM agent_leases")}
        return all(a.agent_id in reporting and (not a.max_runs or a.agent_id in leasing)
                   for a in self.agents)

    def wait_drained(self) -> None:
        """Every agent with a journal read it ``max_reads`` times, and every read that reached
        a spool is stored; then the agents are stopped (SIGTERM), each exiting 0."""
        def drained() -> bool:
            for agent in (a for a in self.agents if a.devices):
                reads = agent.reads()
                if len(reads) < agent.max_reads:
                    return False
                stored = self.conn.execute(
                    "SELECT count(*) FROM samples s JOIN series sr ON sr.id = s.series_id"
                    " WHERE sr.site_id = %s AND sr.metric = 'accelerator_power_watts'"
                    " AND sr.device = 'GPU-0000'", (agent.site_id,)).fetchone()[0]
                if stored < len(set(reads) - set(agent.at_kill)):
                    return False
            return True

        wait_until(drained, "every read to be stored", alive=self._agents_alive)
        assert [agent.stop() for agent in self.agents] == [0] * len(self.agents)


@contextmanager
def staged(tmp_path: Path, **environment: str) -> Iterator[Stage]:
    """A fresh, migrated database on the pair with an admin, a dispatcher of the voucher
    story's tenant and two bureau keys; every process started on it is stopped on exit."""
    with fresh_database() as url, ExitStack() as stack:
        dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        upgrade(conn, want_timescale=False, want_citus=False)
        ledger.signing_key(tmp_path / "ledger.pem")  # one key for every replica
        replicas = Replicas(dbname, tmp_path, **environment)
        stage = Stage(dbname, url, tmp_path, replicas,
                      admin=create_key(conn, Role.ADMIN),
                      dispatcher=create_key(conn, Role.DISPATCHER, tenant=voucher_story.TENANT),
                      maker=create_key(conn, Role.BUREAU), checker=create_key(conn, Role.BUREAU))
        stack.callback(stage.close)
        stack.callback(replicas.close)
        stack.callback(lambda: [agent.stop() for agent in stage.agents])
        yield stage


@pytest.fixture(scope="module")
def ha_pair():
    start_pair()
    yield
    start_pair()  # a killed node rejoins as a standby for the next module


@pytest.fixture(autouse=True)
def whole_pair(ha_pair):
    """Each fault starts from a whole pair: a leader and a streaming synchronous standby (a node
    an earlier test killed or restarted may still be rejoining)."""
    if not pair_healthy():
        start_pair()


# --- the counts ---------------------------------------------------------------------------------


def count_samples(conn: psycopg.Connection, agent: SiteAgent) -> dict[str, int]:
    """For a stopped agent: every cycle it measured is stored once, whole, with its values.

    The journal's reads are the cycles: each is stored with every one of its devices' samples
    and their values (the only reads allowed missing are those SIGKILL caught before they were
    spooled). Every batch the agent spooled (the simulated fleet's included) is stored, whole
    (a report holds as many samples as it said), or still in the spool; no sample of the site is
    stored twice."""
    reads = agent.reads()
    rows = conn.execute(
        "SELECT sr.device, (extract(epoch FROM s.ts) * 1000)::bigint, s.value FROM samples s"
        " JOIN series sr ON sr.id = s.series_id WHERE sr.site_id = %s"
        " AND sr.metric = 'accelerator_power_watts' AND length(sr.device) = 8",
        (agent.site_id,)).fetchall()
    times = {ms for _, ms, _ in rows}
    assert times <= set(reads), "a sample no read produced"
    missing = set(reads) - times
    assert missing <= set(agent.at_kill), f"reads lost: {sorted(missing - set(agent.at_kill))}"
    assert len(rows) == len(times) * agent.devices, "a read stored in part, or twice"
    assert all(value == power_at(ms, int(device[4:8])) for device, ms, value in rows)
    doubled = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM samples s JOIN series sr ON sr.id = s.series_id"
        " WHERE sr.site_id = %s GROUP BY s.series_id, s.ts HAVING count(*) > 1) d",
        (agent.site_id,)).fetchone()[0]
    assert doubled == 0, "a sample stored twice"
    reports = conn.execute(
        "SELECT r.seq, r.samples, coalesce(k.n, 0) FROM reports r LEFT JOIN (SELECT report_id,"
        " count(*) AS n FROM samples GROUP BY report_id) k ON k.report_id = r.id"
        " WHERE r.agent_id = %s", (agent.agent_id,)).fetchall()
    assert [seq for seq, said, kept in reports if said != kept] == [], "a report stored in part"
    stored = {seq for seq, *_ in reports}
    sent = stored | agent.spooled_seqs()
    assert sent == set(range(1, max(sent) + 1)), "a spooled batch neither stored nor spooled"
    return {"cycles_measured": len(reads), "cycles_stored": len(times),
            "witness_samples_measured": len(reads) * agent.devices,
            "witness_samples_stored": len(rows), "lost_to_sigkill": len(missing),
            "batches_stored": len(stored), "samples_stored": sum(n for *_, n in reports),
            "batches_left_in_spool_at_stop": len(sent - stored)}


def count_jobs(conn: psycopg.Connection, dispatcher: Dispatcher) -> dict[str, int]:
    """Every job acknowledged is stored, once, and ended exactly once, with one run that
    succeeded; a job stored without an acknowledgement is one whose submit had no answer."""
    rows = conn.execute(
        "SELECT j.id, j.name, j.state,"
        " (SELECT count(*) FROM job_transitions t WHERE t.job_id = j.id"
        "  AND t.to_state = ANY(%s)),"
        " (SELECT count(*) FROM runs r WHERE r.job_id = j.id AND r.state = 'succeeded'),"
        " (SELECT count(*) FROM runs r WHERE r.job_id = j.id)"
        " FROM jobs j", (list(TERMINAL),)).fetchall()
    names = Counter(name for _, name, *_ in rows)
    assert [n for n, c in names.items() if c > 1] == [], "a job stored twice"
    assert set(dispatcher.acked) <= {row[0] for row in rows}, "an acknowledged job was lost"
    assert set(names) - dispatcher.acked_names <= {n for n, _ in dispatcher.unanswered}
    assert dispatcher.refused == []
    for job_id, name, state, ended, succeeded, _ in rows:
        assert ended == 1, f"{name} ({job_id}) ended {ended} times"
        assert (state, succeeded) == ("succeeded", 1), f"{name} ({job_id}): {state}, {succeeded}"
    return {"submitted": dispatcher.jobs, "acknowledged": len(dispatcher.acked),
            "unanswered": len(dispatcher.unanswered), "stored": len(rows),
            "ended_once": len(rows), "runs": sum(row[5] for row in rows)}


def count_money(stage: Stage) -> dict[str, Any]:
    """Every run that succeeded is metered once; every usage record of a voucher job drew once,
    each draw with its one ledger entry; the voucher holds what was issued less what was drawn;
    the chain verifies against a checkpoint signed with the platform's key."""
    conn, voucher = stage.conn, stage.voucher
    assert voucher is not None
    unmetered = conn.execute(
        "SELECT count(*) FROM runs r WHERE r.state = 'succeeded' AND NOT EXISTS"
        " (SELECT 1 FROM usage_records u WHERE u.run_id = r.id AND u.adjusts IS NULL)"
    ).fetchone()[0]
    assert unmetered == 0
    draws = {usage: (amount, seq) for usage, amount, seq in conn.execute(
        "SELECT usage_record_id, amount, ledger_seq FROM voucher_draws WHERE voucher_id = %s",
        (voucher,))}
    records = [u for (u,) in conn.execute(
        "SELECT u.id FROM usage_records u JOIN jobs j ON j.id = u.job_id"
        " WHERE (j.spec->>'voucher')::bigint = %s", (voucher,))]
    assert sorted(draws) == sorted(records), "a usage record not drawn"
    entries = conn.execute(
        "SELECT seq, amount, (ref->>'usage_record')::bigint FROM ledger_entries"
        " WHERE kind = 'voucher.draw' AND (ref->>'voucher')::bigint = %s", (voucher,)).fetchall()
    per_record = Counter(usage for _, _, usage in entries)
    assert [u for u, n in per_record.items() if n > 1] == [], "a draw booked twice"
    assert {usage: (amount, seq) for seq, amount, usage in entries} == {
        usage: found for usage, found in draws.items() if found[0] > 0}, "a draw not booked"
    face = conn.execute("SELECT face_value FROM vouchers WHERE id = %s", (voucher,)).fetchone()[0]
    drawn = sum((amount for amount, _ in draws.values()), Decimal("0.00"))
    assert drawn > 0, "nothing drew: the money path was not exercised"
    assert ledger.balance(conn, f"voucher:{voucher}") == face - drawn
    assert verified(stage) == []
    return {"usage_records": len(records), "draws": len(draws), "ledger_draw_entries":
            len(entries), "drawn_yuan": str(drawn), "voucher_balance": str(face - drawn)}


def verified(stage: Stage) -> list[Any]:
    key = ledger.signing_key(stage.work / "ledger.pem")
    ledger.checkpoint(stage.conn, key)
    return ledger.verify(stage.conn, key.public_key())


def write_gap(conn: psycopg.Connection, fault: float, until: float) -> dict[str, Any]:
    """The outage as the store saw it: the longest time without a report stored between the
    fault (a second before, for the reports in flight) and ``until``, as the last report stored
    before it and the first after, in seconds from the fault (the server's clock, the same
    host's as the test's)."""
    at = datetime.fromtimestamp(fault, UTC)
    row = conn.execute(
        "SELECT received_at - gap, received_at FROM (SELECT received_at, received_at -"
        " lag(received_at) OVER (ORDER BY received_at) AS gap FROM reports"
        " WHERE received_at BETWEEN %s AND %s) g"
        " WHERE gap IS NOT NULL ORDER BY gap DESC LIMIT 1",
        (at - timedelta(seconds=1), datetime.fromtimestamp(until, UTC))).fetchone()
    assert row is not None, "no reports around the fault"
    before, after = row
    return {"last_write_before_s": round((before - at).total_seconds(), 3),
            "first_write_after_s": round((after - at).total_seconds(), 3),
            "no_write_for_s": round((after - before).total_seconds(), 3)}


def drawn_all(stage: Stage, replica: Replica) -> None:
    """Decide the draws not decided yet (the platform does it every 5 s as well)."""
    reply = httpx.post(f"{replica.url}/v1/vouchers/draws/run", timeout=60,
                       headers={"Authorization": f"Bearer {stage.checker}"})
    assert reply.status_code == 200, reply.text


def all_ended(stage: Stage, dispatcher: Dispatcher) -> Callable[[], bool]:
    def ended() -> bool:
        if not dispatcher.done():
            return False
        left = stage.conn.execute("SELECT count(*) FROM jobs WHERE state <> ALL(%s)",
                                  (list(TERMINAL),)).fetchone()[0]
        return left == 0
    return ended


# --- the faults ---------------------------------------------------------------------------------


def test_database_restarted_during_ingest_and_an_agent_killed_meanwhile_lose_nothing(
        ha_pair, tmp_path):
    with staged(tmp_path) as stage:
        assert pair_healthy()
        replica = stage.replicas.start("a")
        agents = [stage.add_agent(replica, f"restart-{i}", devices=8, max_reads=160)
                  for i in range(2)]
        stage.start_agents()
        spools = SpoolWatch(agents)
        try:
            wait_until(lambda: min(len(a.reads()) for a in agents) >= 30, "30 reads each")
            began = time.time()
            with ThreadPoolExecutor(1) as pool:
                restarted = pool.submit(restart_leader)
                # While the server is down the agents' uploads fail and their spools grow:
                # kill one then, and start it again, as its service manager would.
                wait_until(lambda: agents[0].pending() >= 3 or restarted.done(),
                           "an upload to fail")
                assert not restarted.done(), "the restart was over before ingest noticed it"
                agents[0].sigkill()
                agents[0].start()
                node = restarted.result(timeout=WAIT_S)
                answered = time.time()
            stage.wait_drained()
        finally:
            spools.stop()
        counts = {a.name: count_samples(stage.conn, a) for a in agents}
        assert agents[0].at_kill, "the agent was never killed"
        record("database_restart", {
            "restarted": node, "restart_call_s": round(answered - began, 1),
            **write_gap(stage.conn, began, answered + 30), "samples": counts,
            "spool_most_batches": spools.most, "spools_together_most": spools.most_together})
        assert spools.most_together > 2, "the restart never held up an upload"


def test_a_replica_killed_in_a_placement_cycle_places_each_job_once_within_the_pool(
        ha_pair, tmp_path):
    """The replicas take turns at the placement cycle (an advisory lock): the one whose cycle
    has the turn is held at its commit's first lock (a site row the test holds) and killed
    there; its transaction and its turn die with it, and the other's cycle places every job."""
    with staged(tmp_path) as stage:
        a, b = stage.replicas.start("a"), stage.replicas.start("b")
        agent = stage.add_agent(b, "placement", devices=4, max_reads=600, max_runs=8,
                                interval_s=0.5)
        stage.start_agents()
        pools = PoolWatch(stage.url)
        try:
            with psycopg.connect(stage.url) as holder:
                holder.execute("SELECT id FROM sites WHERE id = %s FOR UPDATE", (agent.site_id,))
                dispatcher = Dispatcher([a.url, b.url], stage.dispatcher, jobs=12, every_s=0,
                                        seconds=0.5).start()
                wait_until(dispatcher.done, "the submits")
                assert len(dispatcher.acked) == 12
                wait_until(lambda: blocked_in_commit(stage),
                           "a replica's cycle to wait in its commit")
                (name,) = blocked_in_commit(stage)  # one at a time: the other waits its turn
                killed = {"jinsuan-a": a, "jinsuan-b": b}[name]
                killed.sigkill()
                holder.rollback()
            wait_until(lambda: name not in sessions(stage), "its sessions to end")
            stage.replicas.start(name.removeprefix("jinsuan-"))  # its supervisor starts it again
            wait_until(all_ended(stage, dispatcher), "every job to end",
                       alive=agent.alive)
        finally:
            pools.stop()
        jobs = count_jobs(stage.conn, dispatcher)
        placed = stage.conn.execute(
            "SELECT job_id, count(*) FROM job_transitions WHERE to_state = 'placed'"
            " GROUP BY job_id").fetchall()
        assert sorted(n for _, n in placed) == [1] * 12, "a job placed twice"
        most = pools.most[(agent.site_id, MODEL)]
        assert most <= agent.fleet, f"{most} accelerators held in a pool of {agent.fleet}"
        assert most == agent.fleet, "the pool never filled: the check proved nothing"
        record("replica_killed_in_placement", {"jobs": jobs, "pool_size": agent.fleet,
                                               "pool_most_held": most})


def blocked_in_commit(stage: Stage) -> set[str]:
    """The replicas whose placement cycle waits for a site's row lock in its commit."""
    return {name for (name,) in stage.conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE datname = %s"
        " AND wait_event_type = 'Lock' AND query LIKE 'SELECT id FROM sites WHERE id = ANY%%'",
        (stage.dbname,))}


def sessions(stage: Stage) -> set[str]:
    return {name for (name,) in stage.conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE datname = %s", (stage.dbname,))}


def test_a_group_of_submits_whose_answer_is_lost_is_stored_once(ha_pair, tmp_path):
    """The platform (``jinsuan serve``) reaches the primary through a link that loses the answer
    to a committed group of submits. Every submit is answered once, with one job each."""
    primary = next(m for m in pair_members() if m["role"] == "leader")
    link = LosesAGroupsAnswer(f"127.0.0.1:{primary['port']}")
    with staged(tmp_path, JINSUAN_RUN_BACKGROUND_JOBS="false") as stage:
        try:
            replica = stage.replicas.start("a", database_url=(
                f"postgresql://postgres@127.0.0.1:{link.port}/{stage.dbname}"))
            with ThreadPoolExecutor(8) as pool, httpx.Client(timeout=60) as client:

                def submit(n: int) -> httpx.Response:
                    return client.post(replica.url + "/v1/jobs", json={
                        "project": "ha", "name": f"job-{n}", "payload": {"command": ["true"]}},
                        headers={"Authorization": f"Bearer {stage.dispatcher}"})

                answers = list(pool.map(submit, range(8)))
        finally:
            link.close()
        if not link.lost:
            pytest.fail("no group of two or more submits was written: nothing was tested")
        names = Counter(name for (name,) in stage.conn.execute("SELECT name FROM jobs"))
        record("submit_answer_lost", {"group_whose_answer_was_lost": link.lost[0],
                                      "answers": Counter(r.status_code for r in answers),
                                      "jobs_stored": sum(names.values())})
        assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers]
        assert [n for n, c in names.items() if c > 1] == [], f"stored twice: {names}"


def test_a_site_cut_off_with_jobs_running_loses_them_once_and_its_late_reports_are_fenced(
        ha_pair, tmp_path):
    """The link of a site whose agent runs two jobs is cut: their leases lapse, the runs are lost
    and the jobs run again at the other site. When the link is mended, the agent's reports of
    the old runs' ends carry fencing tokens the platform no longer honours: refused, nothing
    ends twice. Its telemetry waited in its spool, and arrives whole."""
    with staged(tmp_path, JINSUAN_SCHED_LEASE_TTL_S="6", JINSUAN_SCHED_LEASE_STALE_S="2"
                ) as stage:
        replica = stage.replicas.start("a")
        cable = Cable(replica.url)
        cut_site = stage.add_agent(replica, "cut-off", via=cable.url, fleet=2, devices=4,
                                   max_reads=100, max_runs=2, interval_s=0.2)
        spare = stage.add_agent(replica, "spare", fleet=2, max_runs=2, interval_s=0.5)
        stage.start_agents()
        spools = SpoolWatch([cut_site])
        try:
            dispatcher = Dispatcher([replica.url], stage.dispatcher, jobs=4, every_s=0,
                                    seconds=4).start()
            wait_until(lambda: stage.conn.execute(
                "SELECT count(*) FROM runs WHERE site_id = %s AND state = 'running'",
                (cut_site.site_id,)).fetchone()[0] == 2, "two jobs running at the site")
            cable.cut()
            cut_at = time.time()
            cut_runs = [r for (r,) in stage.conn.execute(
                "SELECT id FROM runs WHERE site_id = %s AND state = ANY(%s)",
                (cut_site.site_id, list(LIVE)))]
            wait_until(lambda: stage.conn.execute(
                "SELECT count(*) FROM runs WHERE id = ANY(%s) AND state = 'lost'",
                (cut_runs,)).fetchone()[0] == 2, "the cut-off runs to be lost")
            lost_after = time.time() - cut_at
            cable.mend()
            mended_at = time.time()
            wait_until(all_ended(stage, dispatcher), "every job to end")
            wait_until(lambda: let_go(cut_site, cut_runs),
                       "the agent to have let the lost runs go", alive=cut_site.alive)
            stage.wait_drained()
        finally:
            cable.close()
            spools.stop()
        jobs = count_jobs(stage.conn, dispatcher)
        runs = stage.conn.execute(
            "SELECT state, exit_code FROM runs WHERE id = ANY(%s)", (cut_runs,)).fetchall()
        assert runs == [("lost", None)] * 2, "a lost run's late end was taken"
        again = stage.conn.execute(
            "SELECT DISTINCT r.site_id FROM runs r JOIN runs c ON c.job_id = r.job_id"
            " WHERE c.id = ANY(%s) AND r.state = 'succeeded'", (cut_runs,)).fetchall()
        assert again == [(spare.site_id,)], "the lost runs' jobs did not run again elsewhere"
        # A report of a lost run's end that comes late (here: sent now, under the run's old
        # fencing token, signed with the site agent's own key) is refused, and changes nothing.
        late = [late_end(stage, replica, cut_site, run) for run in cut_runs]
        assert [(r.status_code, r.json()["error"]["code"]) for r in late] == [
            (409, STALE_LEASE_CODE)] * 2, [r.text for r in late]
        assert stage.conn.execute("SELECT state, exit_code FROM runs WHERE id = ANY(%s)",
                                  (cut_runs,)).fetchall() == [("lost", None)] * 2
        record("site_cut_off", {
            "runs_lost_after_s": round(lost_after, 1), "cut_for_s": round(mended_at - cut_at, 1),
            "lost_runs_let_go_by_the_agent": len(cut_runs),
            "late_end_reports_refused_409": len(late), "jobs": jobs,
            "spool_most_batches": spools.most[cut_site.name],
            "samples": count_samples(stage.conn, cut_site)})


def late_end(stage: Stage, replica: Replica, agent: SiteAgent, run_id: str) -> httpx.Response:
    """The run's end, reported by its site's agent under the run's fencing token."""
    token = stage.conn.execute("SELECT fencing_token FROM runs WHERE id = %s",
                               (run_id,)).fetchone()[0]
    now = datetime.now(UTC)
    body = RunEvent(agent_id=agent.agent_id, sent_at=now, fencing_token=token,
                    state=RunEventState.SUCCEEDED, at=now, exit_code=0,
                    ended_at=now).model_dump_json().encode()
    return httpx.post(replica.url + run_events_path(run_id), content=body, timeout=30, headers={
        "Content-Type": "application/json", AGENT_HEADER: agent.agent_id,
        SIGNATURE_HEADER: sign(load_identity(agent.state).key, body)})


def let_go(agent: SiteAgent, run_ids: list[str]) -> bool:
    """The agent has nothing more to say of the runs: each silenced (the platform answered that
    its lease is gone, or refused a report of it as stale) or forgotten, nothing queued."""
    state = sqlite3.connect(f"{(agent.state / 'leases.sqlite3').as_uri()}?mode=ro", uri=True)
    try:
        held = state.execute("SELECT count(*) FROM runs WHERE silenced = 0 AND run_id IN"
                             f" ({','.join('?' * len(run_ids))})", run_ids).fetchone()[0]
        queued = state.execute("SELECT count(*) FROM outbox WHERE run_id IN"
                               f" ({','.join('?' * len(run_ids))})", run_ids).fetchone()[0]
    finally:
        state.close()
    return held == queued == 0


def test_a_replica_killed_during_a_voucher_approval_issues_it_once_or_not_at_all(
        ha_pair, tmp_path):
    with staged(tmp_path, JINSUAN_RUN_BACKGROUND_JOBS="false") as stage:
        conn = stage.conn
        stage.provider_site("approval")
        applicant = parties.register_applicant(
            conn, code=APPLICANT_CODE + check_character(APPLICANT_CODE), name="晋源大模型实验室",
            kind="research_institute", in_province=True)
        parties.bind_tenant(conn, applicant.id, voucher_story.TENANT)
        dispatcher, maker = (authenticate(conn, k) for k in (stage.dispatcher, stage.maker))
        assert dispatcher and maker
        year = datetime.now(SHANGHAI).year
        applications = []
        for n in (1, 2):
            number = issuing.apply(conn, dispatcher, issuing.Contract(
                voucher_story.PROVIDER, f"HA-{n}", Decimal("1000000.00"), date(year, 1, 1),
                date(year, 12, 31), False, "", PAPERS))
            issuing.recommend(conn, maker, number)
            applications.append(number)
        a, b = stage.replicas.start("a"), stage.replicas.start("b")

        def approve(replica: Replica, application: int) -> httpx.Response:
            return httpx.post(f"{replica.url}/v1/vouchers/applications/{application}/approve",
                              headers={"Authorization": f"Bearer {stage.checker}"}, timeout=60)

        # 1. Killed inside the approval's transaction, while it waits for the ledger's lock.
        with psycopg.connect(stage.url) as holder, ThreadPoolExecutor(1) as pool:
            holder.execute("SELECT 1 FROM ledger_head FOR UPDATE")
            asked = pool.submit(approve, a, applications[0])
            wait_until(lambda: waiting_for_lock(stage, "jinsuan-a"), "A to wait for the ledger")
            a.sigkill()
            with pytest.raises(httpx.HTTPError):
                asked.result(timeout=WAIT_S)
            holder.rollback()
        wait_until(lambda: "jinsuan-a" not in sessions(stage), "A's sessions to end")
        assert issued(conn, applications[0]) == (0, 0, "recommended"), "half an approval"
        retried = approve(b, applications[0])
        assert retried.status_code == 200, retried.text

        # 2. Killed as soon as the approval committed: whether its answer got out or not, a
        # retry finds it done.
        a = stage.replicas.start("a")
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(approve, a, applications[1])
            wait_until(lambda: issued(conn, applications[1])[0] == 1, "the second approval")
            a.sigkill()
            first = asked.exception(timeout=WAIT_S) or asked.result()
        again = [approve(b, number) for number in applications]
        assert [r.status_code for r in again] == [409, 409], [r.text for r in again]
        assert all("is issued" in r.json()["error"]["reason"] for r in again)
        assert [issued(conn, n) for n in applications] == [(1, 1, "issued")] * 2
        faces, funded = conn.execute(
            "SELECT (SELECT sum(face_value) FROM vouchers), (SELECT sum(amount) FROM"
            " ledger_entries WHERE kind = 'voucher.fund')").fetchone()
        assert ledger.balance(conn, f"pool:voucher:{year}") == funded - faces
        assert verified(stage) == []
        record("replica_killed_in_voucher_approval", {
            "killed_waiting_for_ledger_lock": "not issued; retried once: issued",
            "killed_after_commit": "answer " + (type(first).__name__ if isinstance(
                first, BaseException) else str(first.status_code)) + "; retry refused (409)",
            "vouchers_per_application": 1, "issue_entries_per_application": 1})


def waiting_for_lock(stage: Stage, application_name: str) -> bool:
    return stage.conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
        " AND wait_event_type = 'Lock'", (stage.dbname, application_name)).fetchone()[0] > 0


def issued(conn: psycopg.Connection, application: int) -> tuple[int, int, str]:
    """Vouchers issued on the application, its ledger issue entries, and its status."""
    return conn.execute(
        "SELECT (SELECT count(*) FROM vouchers WHERE application_id = %(a)s),"
        " (SELECT count(*) FROM ledger_entries WHERE kind = 'voucher.issue'"
        "  AND (ref->>'application')::bigint = %(a)s),"
        " (SELECT status FROM voucher_applications WHERE id = %(a)s)",
        {"a": application}).fetchone()


def test_the_primary_killed_during_ingest_and_placement_loses_and_doubles_nothing(
        ha_pair, tmp_path):
    """Last in the module: the killed node is brought back by the fixture after it."""
    with staged(tmp_path) as stage:
        replica = stage.replicas.start("a")
        agents = [stage.add_agent(replica, f"site-{i}", devices=8, max_reads=250, max_runs=4)
                  for i in range(3)]
        voucher = stage.issue_voucher()
        stage.start_agents()
        spools, pools = SpoolWatch(agents), PoolWatch(stage.url)
        dispatcher = Dispatcher([replica.url], stage.dispatcher, jobs=36, every_s=0.4,
                                voucher=voucher).start()
        try:
            wait_until(lambda: len(dispatcher.acked) >= 8 and min(
                len(a.reads()) for a in agents) >= 40, "ingest and placement under way")
            live = stage.conn.execute("SELECT count(*) FROM runs WHERE state = ANY(%s)",
                                      (list(LIVE),)).fetchone()[0]
            killed_at = time.time()
            old = kill_leader()
            new = wait_for_new_leader(old)
            promoted_at = time.time()
            wait_until(all_ended(stage, dispatcher), "every job to end")
            stage.wait_drained()
        finally:
            spools.stop()
            pools.stop()
            dispatcher_acks = sorted(dispatcher.acked.values())
        drawn_all(stage, replica)
        samples = {a.name: count_samples(stage.conn, a) for a in agents}
        jobs = count_jobs(stage.conn, dispatcher)
        money = count_money(stage)
        for agent in agents:
            held = pools.most.get((agent.site_id, MODEL), 0)
            assert held <= agent.fleet, f"{held} accelerators held in a pool of {agent.fleet}"
        submits = {"last_ack_before_s": round(max(
            [t for t in dispatcher_acks if t <= killed_at]) - killed_at, 3)}
        after = [t for t in dispatcher_acks if t > killed_at]
        if after:
            submits["first_ack_after_s"] = round(min(after) - killed_at, 3)
        assert live > 0, "no job was placed or running when the primary died"
        record("primary_killed", {
            "killed": old, "promoted": new, "runs_live_at_kill": live,
            "promotion_seen_after_s": round(promoted_at - killed_at, 3),
            "ingest": write_gap(stage.conn, killed_at, time.time()), "submits": submits,
            "spool_most_batches": spools.most, "spools_together_most": spools.most_together,
            "samples": samples, "jobs": jobs, "money": money})
        assert spools.most_together > 2, "the failover never held up an upload"
