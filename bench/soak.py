"""A bounded soak of the whole platform: ingest, jobs, vouchers, rollups and assessments at once.

What runs, for ``--minutes`` (10 by default; hours when asked), then stops by itself:

* one platform process, ``jinsuan serve``, on a fresh database, its background jobs on
  (rollups every ``--rollup-every-s``, closing an hour 15 s after it ends; voucher draws every
  5 s; the placement cycle and lease sweep);
* ``--sites`` simulated sites (``bench/soak_fleet.py``), each an agent enrolled through the API
  with its own key: first the site's past from the start of the previous hour (one reading a
  ``--backfill-step-s``), then one reading every ``--interval-s``, as signed gzip'd reports;
  and the site's lease loop, as ``agents.worker`` behaves by default, which runs what it is
  leased (reported running at once, succeeded when its ``sleep`` would end). Half the sites
  belong to the voucher's provider;
* one real agent process (``jinsuan agent run``, the simulated probe, a site of its own, its
  /metrics scraped at every sample as a Prometheus would), whose memory is watched;
* a dispatcher submitting ``--jobs-per-s`` jobs (open loop) for three tenants; one tenant acts
  for a voucher applicant, whose voucher was applied for, recommended and approved (two bureau
  keys) through the API, and its jobs carry the voucher, drawn on as their usage is metered;
* a rewards assessment of the year through the API every ``--assess-every-s``, and at the end.

Every ``--every-s`` it samples: samples/s acknowledged to the sites, the submit round trip
p50/p99 and submit → leased p50/p99 (the platform's own timestamps) in the interval, the
platform's and the real agent's resident memory (psutil, else /proc), the platform's CPU, the
database's size and the samples table's. At the end it waits for the jobs to end, then checks
end to end and prints PASS/FAIL lines (exit code 1 on any FAIL):

* samples each simulated site had acknowledged == samples stored for it; the real agent's
  acknowledged batches (its /metrics) == its reports stored;
* jobs submitted == jobs stored; each succeeded once (one succeeded run, one usage record);
* the voucher: balance == issued − drawn; each usage record of its jobs decided once, drawing
  at the provider's sites and nothing elsewhere;
* an hourly rollup row for every site-hour the sites' acknowledged readings fully covered;
* every assessment asked for was made.

It writes ``soak.csv`` (the time series), ``throughput.png``, ``latency.png``, ``memory.png``,
``database.png`` and ``summary.md`` (the figures and the command, for docs/performance.md) into
``--out`` (default ``bench/out/soak-<UTC timestamp>/``), and prints the summary.

    python bench/soak.py [--minutes 10] [--every-s 10] [--sites 20] [--accelerators 32]
                         [--interval-s 10] [--jobs-per-s 1] [--assess-every-s 180] [--keep]

PostgreSQL: $JINSUAN_BENCH_PG (an admin URL) or 127.0.0.1:5432; a database is created for the
run and dropped after it unless ``--keep``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
# Run as a script, bench/ comes first on sys.path and bench/scheduler.py would shadow the
# ``scheduler`` package; put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import csv
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import httpx
import psycopg

from agents.identity import enrol
from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from bench.soak_fleet import MIX, Dispatcher, LeaseAgent, SimSite, SiteStream
from jinsuan.contract.creditcode import check_character
from jinsuan.contract.money import to_fen
from jinsuan.contract.policytime import SHANGHAI
from jinsuan.contract.signing import new_private_key, public_key_b64
from jinsuan.contract.wire import EnrolRequest, EnrolResponse
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.sites import create_enrolment_token, create_site
from jinsuan.kernel.store import Database
from rewards.policy import in_force

ADMIN_URL = os.environ.get("JINSUAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT = _HERE.parent
MB = 2**20
PROVIDER, OTHER = "晋算压测 Soak Compute", "云冈压测 Soak Cloud"
VOUCHER_TENANT = next(k.tenant for k in MIX if k.voucher)
ROLLUP_GRACE_S = 15
FLEETS = ({"NVIDIA H800": 1, "Ascend910B3": 1}, {"NVIDIA H20": 1, "NVIDIA L20": 1})
PRICES = {"NVIDIA H800": "28.00", "Ascend910B3": "16.00", "NVIDIA H20": "15.00",
          "NVIDIA L20": "6.50"}
CITIES = ("太原", "大同", "阳泉", "长治")


# -- processes ------------------------------------------------------------------------------


class ProcessMeter:
    """Resident memory and CPU seconds of one process: psutil where installed, else /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            import psutil
        except ImportError:
            self._proc = None
        else:
            self._proc = psutil.Process(pid)

    def rss(self) -> int:
        if self._proc is not None:
            return int(self._proc.memory_info().rss)
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            found = re.search(r"^VmRSS:\s+(\d+) kB$", f.read(), re.MULTILINE)
        assert found is not None
        return int(found[1]) * 1024

    def cpu_s(self) -> float:
        if self._proc is not None:
            times = self._proc.cpu_times()
            return float(times.user + times.system)
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
            ticks = f.read().rpartition(")")[2].split()
        return (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(command: list[str], env: dict[str, str], log: Path, ready_url: str
                  ) -> subprocess.Popen[bytes]:
    """Start ``command``, its output to ``log``; return once ``ready_url`` answers 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{shlex.join(command)} did not start\n--- {log} ---\n{tail}")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after 30 s; the exit code (negative: killed by that signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- set-up ---------------------------------------------------------------------------------


@dataclass
class Keys:
    admin: str
    maker: str  # the bureau key that recommends
    checker: str  # the bureau key that approves
    dispatchers: dict[str, str]


@dataclass
class Planned:
    site_id: int
    name: str
    token: str
    fleet: dict[str, int]


def seed_store(url: str, args: argparse.Namespace, data_dir: Path
               ) -> tuple[Keys, list[Planned], Planned]:
    """Migrate the fresh database; make the keys, the sites and their enrolment tokens (the
    operator's set-up, not measured); the real agent's site is last."""
    db = Database.open(Settings(database_url=url, data_dir=data_dir, run_background_jobs=False,
                                pool_max_size=2))
    try:
        with db.pool.connection() as conn:
            keys = Keys(create_key(conn, Role.ADMIN), create_key(conn, Role.BUREAU),
                        create_key(conn, Role.BUREAU),
                        {k.tenant: create_key(conn, Role.DISPATCHER, tenant=k.tenant)
                         for k in MIX})
            planned = []
            for i in range(args.sites + 1):
                real = i == args.sites
                name = "soak-real-agent" if real else f"soak-{i:03d}"
                site = create_site(conn, enterprise=OTHER if real or i % 2 else PROVIDER,
                                   name=name, city=CITIES[i % len(CITIES)])
                each = args.real_accelerators if real else args.accelerators
                # Each fleet at both enterprises' sites: price alone never keeps a voucher's
                # jobs from its provider.
                fleet = {model: each // 2 for model in FLEETS[i // 2 % 2]}
                planned.append(Planned(site.id, name, create_enrolment_token(
                    conn, site.id, created_by=None), fleet))
    finally:
        db.close()
    return keys, planned[:-1], planned[-1]


def api(client: httpx.Client, method: str, path: str, key: str, **kw: object) -> object:
    reply = client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)
    if reply.status_code >= 300:
        raise SystemExit(f"{method} {path}: HTTP {reply.status_code} {reply.text}")
    return reply.json()


def enrol_sites(client: httpx.Client, keys: Keys, planned: list[Planned]) -> list[SimSite]:
    """Each site's agent enrols with a key of its own; the site runs jobs at its prices."""
    sites = []
    for i, plan in enumerate(planned):
        key = new_private_key()
        enrolled = EnrolResponse.model_validate(client.post("/v1/agents/enrol", json=EnrolRequest(
            token=plan.token, public_key=public_key_b64(key), hostname=f"{plan.name}-agent",
        ).model_dump()).raise_for_status().json())
        api(client, "PUT", f"/v1/sites/{plan.site_id}/scheduling", keys.admin,
            json={"executor": "process", "prices": {m: PRICES[m] for m in plan.fleet}})
        simulator = SimulatedSite(SimulatedSiteConfig(seed=i + 1, fleet=plan.fleet),
                                  name=plan.name)
        sites.append(SimSite(plan.site_id, plan.name, enrolled.agent_id, key, simulator))
    return sites


def issue_voucher(client: httpx.Client, keys: Keys) -> int:
    """The applicant registered and bound to the voucher tenant (admin), the application
    (the tenant's dispatcher key), recommended and approved by two bureau keys."""
    body = "91140100MA0QK1601"  # a made-up code: its check character is computed
    applicant = api(client, "POST", "/v1/vouchers/applicants", keys.admin, json={
        "credit_code": body + check_character(body), "name": "晋源压测实验室",
        "kind": "research_institute", "in_province": True})
    assert isinstance(applicant, dict)
    api(client, "POST", f"/v1/vouchers/applicants/{applicant['id']}/tenants", keys.admin,
        json={"tenant": VOUCHER_TENANT})
    year = datetime.now(SHANGHAI).year
    application = api(client, "POST", "/v1/vouchers/applications",
                      keys.dispatchers[VOUCHER_TENANT], json={
                          "provider": PROVIDER, "contract_id": "SOAK-001", "amount": "100000.00",
                          "starts_on": f"{year}-01-01", "ends_on": f"{year}-12-31",
                          "evidence": [{"name": "soak-contract.pdf",
                                        "sha256": "0" * 63 + "1"}]})
    assert isinstance(application, dict)
    api(client, "POST", f"/v1/vouchers/applications/{application['id']}/recommend", keys.maker)
    issued = api(client, "POST", f"/v1/vouchers/applications/{application['id']}/approve",
                 keys.checker)
    assert isinstance(issued, dict)
    return int(issued["voucher"])


def real_agent_config(folder: Path, base: str, token: str, plan: Planned, interval_s: float,
                      metrics_port: int) -> Path:
    """Enrol the real agent (its own key, in its state directory) and write its config."""
    state = folder / "state"
    enrol(state, base, token)
    fleet = ", ".join(f'"{m}" = {n}' for m, n in plan.fleet.items())
    path = folder / "agent.toml"
    path.write_text(
        f'[site]\nname = "{plan.name}"\n\n'
        f'[agent]\nplatform_url = "{base}"\nstate_dir = "{state}"\ninterval_s = {interval_s}\n'
        f'metrics_listen = "127.0.0.1:{metrics_port}"\n\n'
        f"[[probes.simulated]]\nseed = 99\nfleet = {{ {fleet} }}\n", encoding="utf-8")
    return path


# -- during the run -------------------------------------------------------------------------


class Assessor(threading.Thread):
    """``POST /v1/rewards/assessments`` for the year every ``every_s`` until stopped."""

    def __init__(self, base: str, key: str, every_s: float, stop: threading.Event) -> None:
        super().__init__(name="assessor", daemon=True)
        self.base, self.key, self.every_s, self.stop = base, key, every_s, stop
        self.runs: list[tuple[int, float, int]] = []  # (status, seconds, measures assessed)

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.assess()

    def assess(self) -> None:
        began = time.monotonic()
        try:
            reply = httpx.post(f"{self.base}/v1/rewards/assessments",
                               json={"year": datetime.now(SHANGHAI).year},
                               headers={"Authorization": f"Bearer {self.key}"}, timeout=600)
        except httpx.HTTPError:
            self.runs.append((0, time.monotonic() - began, 0))
            return
        measures = len(reply.json()) if reply.status_code == 200 else 0
        self.runs.append((reply.status_code, time.monotonic() - began, measures))


@dataclass
class Row:
    """One sample of the time series (one CSV row)."""

    elapsed_s: float
    samples_per_s: float
    submits: int
    submit_p50_ms: float
    submit_p99_ms: float
    leased: int
    leased_p50_s: float
    leased_p99_s: float
    jobs_live: int
    platform_rss_mb: float
    platform_cpu_pct: float
    agent_rss_mb: float
    agent_cycles: int
    db_mb: float
    samples_mb: float


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def metric_value(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples in an exposition (0 when absent)."""
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text,
                                                re.MULTILINE))


@dataclass
class Sampler:
    """Takes a :class:`Row` every call, over the interval since the previous call."""

    conn: psycopg.Connection
    streams: list[SiteStream]
    dispatcher: Dispatcher
    platform: ProcessMeter
    agent: ProcessMeter
    agent_metrics: str
    began: float
    rows: list[Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._at = time.monotonic()
        self._acked = self._acked_now()
        self._cpu = self.platform.cpu_s()
        self._db_at = self.conn.execute("SELECT clock_timestamp()").fetchone()[0]
        self._submits = 0

    def _acked_now(self) -> int:
        return sum(s.acked_samples for s in self.streams)

    def take(self) -> Row:
        now, acked, cpu = time.monotonic(), self._acked_now(), self.platform.cpu_s()
        submits = self.dispatcher.submits[self._submits:]
        self._submits += len(submits)
        rtts = [rtt * 1000 for _, rtt in submits]
        db_at = self.conn.execute("SELECT clock_timestamp()").fetchone()[0]
        leased = [float(r[0]) for r in self.conn.execute(
            "SELECT extract(epoch FROM r.leased_at - j.submitted_at) FROM runs r"
            " JOIN jobs j ON j.id = r.job_id WHERE r.leased_at > %s AND r.leased_at <= %s",
            (self._db_at, db_at))]
        live, db_bytes, samples_bytes = self.conn.execute(
            "SELECT (SELECT count(*) FROM jobs WHERE state NOT IN"
            "        ('succeeded', 'failed', 'cancelled')),"
            " pg_database_size(current_database()),"
            " (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)"
            "  FROM pg_partition_tree('samples'))").fetchone()
        try:
            cycles = int(metric_value(httpx.get(self.agent_metrics, timeout=5).text,
                                      "jinsuan_agent_cycles_total"))
        except httpx.HTTPError:
            cycles = -1
        dt = now - self._at
        row = Row(round(now - self.began, 1), (acked - self._acked) / dt, len(rtts),
                  pct(rtts, 50), pct(rtts, 99), len(leased), pct(leased, 50), pct(leased, 99),
                  live, self.platform.rss() / MB, (cpu - self._cpu) / dt * 100,
                  self.agent.rss() / MB, cycles, db_bytes / MB, samples_bytes / MB)
        self._at, self._acked, self._cpu, self._db_at = now, acked, cpu, db_at
        self.rows.append(row)
        return row


# -- checks ---------------------------------------------------------------------------------


@dataclass
class Checks:
    results: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        self.results.append((ok, text))
        print(f"{'PASS' if ok else 'FAIL'}  {text}", flush=True)

    @property
    def failed(self) -> int:
        return sum(not ok for ok, _ in self.results)


def wait_for(conn: psycopg.Connection, sql: str, params: tuple[object, ...],
             timeout_s: float) -> bool:
    """Poll ``sql`` (one boolean) until true or the deadline; whether it came true."""
    deadline = time.monotonic() + timeout_s
    while not conn.execute(sql, params).fetchone()[0]:
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True


def covered_hours(stream: SiteStream, before: datetime) -> set[datetime]:
    """The hours ending before ``before`` that the site's acknowledged readings cover whole:
    a reading within one step of each end and no gap wider than two steps between."""
    hours: set[datetime] = set()
    times = sorted(stream.acked_times)
    if not times:
        return hours
    hour = times[0][0].replace(minute=0, second=0, microsecond=0)
    while hour + timedelta(hours=1) <= before:
        end = hour + timedelta(hours=1)
        inside = [(t, s) for t, s in times if hour - timedelta(seconds=s) < t
                  <= end + timedelta(seconds=s)]
        if inside and inside[0][0] <= hour + timedelta(seconds=inside[0][1]) \
                and inside[-1][0] >= end - timedelta(seconds=inside[-1][1]) \
                and all((b[0] - a[0]).total_seconds() <= 2 * max(a[1], b[1])
                        for a, b in pairwise(inside)):
            hours.add(hour)
        hour = end
    return hours


def check_samples(checks: Checks, conn: psycopg.Connection, streams: list[SiteStream]) -> None:
    stored = dict(conn.execute(
        "SELECT s.site_id, count(*) FROM samples x JOIN series s ON s.id = x.series_id"
        " WHERE s.site_id = ANY(%s) GROUP BY s.site_id",
        ([st.site.site_id for st in streams],)).fetchall())
    wrong = [f"{st.site.name}: {st.acked_samples} acknowledged, {stored.get(st.site.site_id, 0)}"
             " stored" for st in streams if stored.get(st.site.site_id, 0) != st.acked_samples]
    acked = sum(st.acked_samples for st in streams)
    checks.check(not wrong, f"samples: {acked:,} acknowledged to {len(streams)} sites,"
                 f" {sum(stored.values()):,} stored" + (f" ({'; '.join(wrong[:3])})"
                                                         if wrong else ", each site exact"))
    problems = [f"{st.site.name}: {st.unacked} given up, refused {dict(st.refused)}, {st.error}"
                for st in streams if st.unacked or st.refused or st.error]
    resends = sum(st.resends for st in streams)
    checks.check(not problems, f"reports: {sum(st.acked_reports for st in streams):,}"
                 f" acknowledged, {resends} resent after no answer or a 429/5xx"
                 + (f"; {'; '.join(problems[:3])}" if problems else ", none refused or lost"))


def check_real_agent(checks: Checks, conn: psycopg.Connection, metrics_url: str,
                     site_id: int) -> None:
    """The agent's acknowledged batches == its reports stored, read when two scrapes of its
    /metrics agree (no batch in flight between them)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            sent = metric_value(httpx.get(metrics_url, timeout=5).text,
                                "jinsuan_agent_batches_sent_total")
            stored, samples = conn.execute(
                "SELECT count(*), coalesce(sum(r.samples), 0) FROM reports r"
                " JOIN agents a ON a.id = r.agent_id WHERE a.site_id = %s",
                (site_id,)).fetchone()
            again = metric_value(httpx.get(metrics_url, timeout=5).text,
                                 "jinsuan_agent_batches_sent_total")
        except httpx.HTTPError as exc:
            checks.check(False, f"real agent: its /metrics did not answer ({exc})")
            return
        if sent == again == stored or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    checks.check(sent == again == stored and samples > 0,
                 f"real agent: {again:.0f} batches acknowledged (its /metrics), {stored}"
                 f" reports stored holding {samples:,} samples")


def check_jobs(checks: Checks, conn: psycopg.Connection, dispatcher: Dispatcher,
               agents: list[LeaseAgent]) -> None:
    ids = dispatcher.job_ids
    in_store = {r[0]: r[1] for r in conn.execute("SELECT id, state FROM jobs")}
    checks.check(set(ids) == set(in_store) and len(ids) == len(set(ids)),
                 f"jobs: {len(ids):,} submitted (201), {len(in_store):,} stored"
                 + (f"; submits refused or unanswered: {dict(dispatcher.refused)}"
                    if dispatcher.refused else ""))
    once, unleased, lapsed = conn.execute(
        "SELECT (SELECT count(*) FROM jobs j WHERE j.state = 'succeeded'"
        "        AND (SELECT count(*) FROM job_transitions t WHERE t.job_id = j.id"
        "             AND t.to_state IN ('succeeded', 'failed', 'cancelled')) = 1"
        "        AND (SELECT count(*) FROM runs r WHERE r.job_id = j.id"
        "             AND r.state = 'succeeded') = 1"
        "        AND (SELECT count(*) FROM usage_records u WHERE u.job_id = j.id"
        "             AND u.adjusts IS NULL) = 1),"
        " (SELECT count(*) FROM runs WHERE state = 'lost' AND leased_at IS NULL),"
        " (SELECT count(*) FROM runs WHERE state <> 'succeeded' AND leased_at IS NOT NULL)"
        ).fetchone()
    states: dict[str, int] = {}
    for state in in_store.values():
        states[state] = states.get(state, 0) + 1
    finished = sum(a.finished for a in agents)
    lost = sum(a.lost for a in agents)
    refused = {k: v for a in agents for k, v in a.refused.items()}
    checks.check(once == len(ids) == finished and not lapsed and not lost and not refused,
                 f"jobs ended: {once:,} of {len(ids):,} succeeded once (one end, one succeeded"
                 f" run, one usage record); the agents finished {finished:,}; states {states};"
                 f" {lapsed} leased runs lost or failed"
                 + (f"; the agents were told {lost} lost, refused {refused}"
                    if lost or refused else ""))
    # Placement sends a site no more runs than its agents' free slots: none waits unleased at a
    # full agent until its lease lapses.
    checks.check(not unleased, f"runs that lapsed unleased (placed where no agent took them):"
                               f" {unleased}")


def check_voucher(checks: Checks, client: httpx.Client, conn: psycopg.Connection, keys: Keys,
                  voucher: int) -> None:
    api(client, "POST", "/v1/vouchers/draws/run", keys.maker)  # what the 5 s sweep has left
    found = api(client, "GET", f"/v1/vouchers/{voucher}", keys.maker)
    assert isinstance(found, dict)
    issued, drawn, balance = (Decimal(str(found[k])) for k in ("face_value", "drawn", "balance"))
    in_store = conn.execute("SELECT coalesce(sum(amount), 0) FROM voucher_draws"
                            " WHERE voucher_id = %s", (voucher,)).fetchone()[0]
    checks.check(balance == issued - drawn and drawn == in_store and drawn > 0,
                 f"voucher {voucher}: issued {issued} − drawn {drawn} = {issued - drawn},"
                 f" balance {balance} (draws in the store sum to {in_store})")
    share = Decimal(str(found["rate"])) if in_force(int(found["pool_year"])).measures[
        "9"].choice("draw_share") == "voucher_rate" else Decimal(1)
    records = conn.execute(
        "SELECT u.cost_yuan, e.name = %s AND s.in_province, d.amount,"
        " (SELECT count(*) FROM voucher_draws x WHERE x.usage_record_id = u.id)"
        " FROM usage_records u JOIN jobs j ON j.id = u.job_id"
        " JOIN sites s ON s.id = u.site_id JOIN enterprises e ON e.id = s.enterprise_id"
        " LEFT JOIN voucher_draws d ON d.usage_record_id = u.id"
        " WHERE j.spec->>'voucher' = %s", (PROVIDER, str(voucher))).fetchall()
    wrong = [(cost, here, amount) for cost, here, amount, _ in records
             if amount != (to_fen(cost * share) if here else 0)]
    once = sum(n == 1 for *_, n in records)
    checks.check(once == len(records) > 0 and not wrong,
                 f"voucher draws: {once} of {len(records)} usage records of its jobs decided"
                 f" once; {sum(here for _, here, _, _ in records)} ran at the provider's sites,"
                 f" each drawing its cost × {share}, the others nothing"
                 + (f"; wrong (cost, at the provider, drawn): {wrong[:3]}" if wrong else ""))


def check_rollups(checks: Checks, conn: psycopg.Connection, streams: list[SiteStream],
                  rollup_every_s: float) -> None:
    before = datetime.now(UTC) - timedelta(seconds=ROLLUP_GRACE_S)
    wanted = {(st.site.site_id, hour) for st in streams for hour in covered_hours(st, before)}
    sql = ("SELECT count(*) = %s FROM rollup_site_hourly r JOIN unnest(%s::bigint[],"
           " %s::timestamptz[]) w(site_id, hour) USING (site_id, hour)")
    params = (len(wanted), [s for s, _ in wanted], [h for _, h in wanted])
    wait_for(conn, sql, params, ROLLUP_GRACE_S + 3 * rollup_every_s + 60)
    present = conn.execute(sql.replace("count(*) = %s", "count(*)"), params[1:]).fetchone()[0]
    hours = sorted({h for _, h in wanted})
    span = f" ({hours[0]:%H:%M}..{hours[-1]:%H:%M} UTC)" if hours else ""
    checks.check(present == len(wanted) > 0,
                 f"rollups: {present} of {len(wanted)} fully covered, closed site-hours rolled"
                 f" up{span}")


def check_assessments(checks: Checks, conn: psycopg.Connection, assessor: Assessor) -> None:
    ok = [r for r in assessor.runs if r[0] == 200 and r[2] > 0]
    stored = conn.execute("SELECT count(*) FROM reward_assessments").fetchone()[0]
    checks.check(len(ok) == len(assessor.runs) > 0 and stored > 0,
                 f"assessments: {len(ok)} of {len(assessor.runs)} asked for were made"
                 f" ({stored} assessment rows stored)")


# -- output ---------------------------------------------------------------------------------


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v
                             for k, v in asdict(row).items()})


def plot(rows: list[Row], out: Path) -> list[Path]:
    """One PNG per figure over time: throughput, latencies, memory, database size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r.elapsed_s / 60 for r in rows]
    Panel = tuple[str, list[tuple[str, list[float]]]]  # (y label, [(line label, values)])
    charts: dict[str, list[Panel]] = {
        "throughput": [("samples acknowledged per second", [
            ("samples/s", [r.samples_per_s for r in rows])])],
        "latency": [("seconds (log scale)", [
            ("submit round trip p50", [r.submit_p50_ms / 1000 for r in rows]),
            ("submit round trip p99", [r.submit_p99_ms / 1000 for r in rows]),
            ("submit → leased p50", [r.leased_p50_s for r in rows]),
            ("submit → leased p99", [r.leased_p99_s for r in rows])])],
        "memory": [  # a panel each: the agent's growth would vanish on the platform's scale
            ("RSS, MB (MiB)", [("platform (jinsuan serve)", [r.platform_rss_mb for r in rows])]),
            ("RSS, MB (MiB)", [("real agent (jinsuan agent run)",
                                [r.agent_rss_mb for r in rows])])],
        "database": [("MB (MiB)", [
            ("database (pg_database_size)", [r.db_mb for r in rows]),
            ("samples table and indexes", [r.samples_mb for r in rows])])],
    }
    paths = []
    for name, panels in charts.items():
        figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3 + 1.5 * len(panels)),
                                    sharex=True, squeeze=False)
        for ax, (unit, lines) in zip(axes[:, 0], panels, strict=True):
            for label, values in lines:
                ax.plot(minutes, values, label=label, marker="." if len(rows) < 60 else None)
            if name == "latency":
                ax.set_yscale("log")
            ax.set_ylabel(unit)
            ax.grid(True, alpha=0.3)
            ax.legend()
        axes[0, 0].set_title(f"soak: {name}")
        axes[-1, 0].set_xlabel("minutes into the soak")
        figure.tight_layout()
        path = out / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


@dataclass
class Totals:
    """Whole-run figures for the summary."""

    minutes: float
    backfill_samples: int
    backfill_s: float
    rtts_ms: list[float]
    leased_s: list[float]
    samples_per_s: float
    jobs: int
    assessments: list[tuple[int, float, int]]
    samples_rows: int


def late_growth(rows: list[Row], column: str) -> float:
    """MB per hour from the middle sample to the last: the trend once warm-up is over."""
    middle, last = rows[len(rows) // 2], rows[-1]
    hours = (last.elapsed_s - middle.elapsed_s) / 3600
    return (getattr(last, column) - getattr(middle, column)) / hours if hours else float("nan")


def summary(args: argparse.Namespace, rows: list[Row], totals: Totals, checks: Checks,
            real_fleet: dict[str, int]) -> str:
    first, last = rows[0], rows[-1]
    hours = (last.elapsed_s - first.elapsed_s) / 3600 or float("nan")
    mean = statistics.fmean
    platform_peak = max(r.platform_rss_mb for r in rows)
    cycles = last.agent_cycles - first.agent_cycles
    took = [s for status, s, _ in totals.assessments if status == 200]
    command = "python bench/soak.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in vars(args).items() if v not in (None, False) and k != "out")
    lines = [
        f"**Soak, {totals.minutes:g} minutes** ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC,"
        f" {os.cpu_count()} cores):",
        "",
        f"    {command}",
        "",
        f"One `jinsuan serve` on plain PostgreSQL; {args.sites} simulated sites of"
        f" {args.accelerators} accelerators reading every {args.interval_s:g} s (signed gzip'd"
        f" reports, after a backfill from the previous hour's start: {totals.backfill_samples:,}"
        f" samples in {totals.backfill_s:.0f} s), each with a lease loop as `agents.worker`"
        f" runs by default; one real `jinsuan agent run` (simulated probe,"
        f" {sum(real_fleet.values())} accelerators, every {args.interval_s:g} s);"
        f" {args.jobs_per_s:g} jobs/s of {args.job_min_s}–{args.job_max_s} s for three tenants,"
        f" one drawing on a voucher; rollups every {args.rollup_every_s:g} s; an assessment every"
        f" {args.assess_every_s:g} s. Sampled every {args.every_s:g} s.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| samples/s acknowledged (mean of the intervals; min–max) |"
        f" {totals.samples_per_s:,.0f} ({min(r.samples_per_s for r in rows):,.0f}–"
        f"{max(r.samples_per_s for r in rows):,.0f}) |",
        f"| jobs submitted (and ended: see the checks) | {totals.jobs:,} |",
        f"| submit round trip p50 / p99 (whole run) | {pct(totals.rtts_ms, 50):.1f} /"
        f" {pct(totals.rtts_ms, 99):.1f} ms |",
        f"| submit → leased p50 / p99 (whole run) | {pct(totals.leased_s, 50):.2f} /"
        f" {pct(totals.leased_s, 99):.2f} s |",
        f"| platform RSS: first sample → last (peak) | {first.platform_rss_mb:.0f} →"
        f" {last.platform_rss_mb:.0f} MB ({platform_peak:.0f}); second half"
        f" {late_growth(rows, 'platform_rss_mb'):+.1f} MB/h |",
        f"| platform CPU (mean of the intervals) | {mean(r.platform_cpu_pct for r in rows):.0f}"
        f" % of one core |",
        f"| real agent RSS: first sample → last | {first.agent_rss_mb:.1f} →"
        f" {last.agent_rss_mb:.1f} MB ({last.agent_rss_mb - first.agent_rss_mb:+.1f} MB over"
        f" {cycles} cycles); second half {late_growth(rows, 'agent_rss_mb'):+.1f} MB/h |",
        f"| database: first sample → last | {first.db_mb:.0f} → {last.db_mb:.0f} MB"
        f" ({(last.db_mb - first.db_mb) / hours:+.0f} MB/h) |",
        f"| samples table and indexes at the end | {last.samples_mb:.0f} MB,"
        f" {last.samples_mb * MB / max(totals.samples_rows, 1):.0f} bytes/sample"
        f" ({totals.samples_rows:,} rows) |",
        f"| assessments of the year | {len(took)}, {mean(took) if took else float('nan'):.1f} s"
        f" each (mean) |",
        "",
        "Checks: " + "; ".join(("PASS " if ok else "FAIL ") + text.split(":")[0]
                               for ok, text in checks.results) + ".",
    ]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every-s", type=float, default=10.0, help="Sampling period.")
    parser.add_argument("--sites", type=int, default=20, help="Simulated sites.")
    parser.add_argument("--accelerators", type=int, default=32, help="Per simulated site.")
    parser.add_argument("--real-accelerators", type=int, default=16,
                        help="Of the real agent's simulated probe.")
    parser.add_argument("--interval-s", type=float, default=10.0,
                        help="The sites' and the real agent's sampling interval.")
    parser.add_argument("--backfill-step-s", type=float, default=60.0)
    parser.add_argument("--jobs-per-s", type=float, default=1.0)
    parser.add_argument("--job-min-s", type=int, default=5)
    parser.add_argument("--job-max-s", type=int, default=30)
    parser.add_argument("--max-runs", type=int, default=None,
                        help="Runs a site's agent holds at once (agents.worker's default).")
    parser.add_argument("--rollup-every-s", type=float, default=5.0)
    parser.add_argument("--assess-every-s", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Keep the database after the run.")
    args = parser.parse_args()
    if args.sites < 2 or args.job_min_s < 1 or args.job_max_s < args.job_min_s:
        parser.error("--sites is at least 2 (half are the provider's); 1 <= --job-min-s <="
                     " --job-max-s")
    out = args.out or ROOT / "bench" / "out" / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)

    name = f"jinsuan_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    url = psycopg.conninfo.make_conninfo(**{**info, "dbname": name})
    try:
        with tempfile.TemporaryDirectory(prefix="jinsuan-soak-") as tmp:
            failed = soak(args, url, Path(tmp), out)
    finally:
        if args.keep:
            print(f"database kept: {name}")
        else:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 1 if failed else 0


def soak(args: argparse.Namespace, url: str, tmp: Path, out: Path) -> int:
    """The run itself; returns how many checks failed."""
    keys, planned, real = seed_store(url, args, tmp)
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("JINSUAN_") and k != "DATABASE_URL"}
    env = clean | {"DATABASE_URL": url, "JINSUAN_DATA_DIR": str(tmp / "platform"),
                   "JINSUAN_ROLLUP_EVERY_S": str(args.rollup_every_s),
                   "JINSUAN_ROLLUP_GRACE_S": str(ROLLUP_GRACE_S)}
    server = start_process([sys.executable, "-m", "jinsuan.cli", "serve", "--port", str(port)],
                           env, out / "platform.log", f"{base}/healthz")
    agent = None
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            sites = enrol_sites(client, keys, planned)
            voucher = issue_voucher(client, keys)
            config = real_agent_config(tmp / "agent", base, real.token, real, args.interval_s,
                                       metrics_port)
            agent_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            agent = start_process([sys.executable, "-m", "jinsuan.cli", "agent", "run",
                                   "--config", str(config), "--log-level", "WARNING"],
                                  clean, out / "agent.log", agent_metrics)
            failed = run_and_check(args, client, port, url, keys, sites, voucher, server,
                                   agent, agent_metrics, real, out)
            code = stop_process(agent)
            agent = None
    finally:
        if agent is not None:
            stop_process(agent)
        server_code = stop_process(server)
    if code != 0 or server_code != 0:
        print(f"FAIL  the real agent exited {code}, the platform {server_code} on SIGTERM"
              f" (logs in {out})")
        failed += 1
    return failed


def send_backfill(streams: list[SiteStream], step: timedelta) -> tuple[int, float]:
    """Every site's readings from the start of the previous hour until now, the sites at once:
    samples acknowledged and seconds taken."""
    began = time.monotonic()
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    for _ in range(2):  # up to now, then the readings due while the first pass was sent
        fillers = [threading.Thread(target=s.backfill, args=(start, datetime.now(UTC), step, 6))
                   for s in streams]
        for t in fillers:
            t.start()
        for t in fillers:
            t.join()
    done = (sum(s.acked_samples for s in streams), time.monotonic() - began)
    print(f"backfill: {done[0]:,} samples from {start:%H:%M} UTC, {len(streams)} sites, in"
          f" {done[1]:.0f} s", flush=True)
    return done


def run_and_check(args: argparse.Namespace, client: httpx.Client, port: int, url: str,
                  keys: Keys, sites: list[SimSite], voucher: int,
                  server: subprocess.Popen[bytes], agent: subprocess.Popen[bytes],
                  agent_metrics: str, real: Planned, out: Path) -> int:
    reports_stop, leases_stop, jobs_stop, assess_stop = (threading.Event() for _ in range(4))
    streams = [SiteStream(port, s, args.interval_s, reports_stop) for s in sites]
    backfill = send_backfill(streams, timedelta(seconds=args.backfill_step_s))
    agents = [LeaseAgent(port, s, leases_stop, max_runs=args.max_runs) for s in sites]
    dispatcher = Dispatcher(port, keys.dispatchers, rate=args.jobs_per_s,
                            runtime_s=(args.job_min_s, args.job_max_s), voucher=voucher,
                            stop=jobs_stop)
    assessor = Assessor(str(client.base_url), keys.maker, args.assess_every_s, assess_stop)
    for thread in [*streams, *agents, dispatcher, assessor]:
        thread.start()
    with psycopg.connect(url, autocommit=True) as conn:
        began = time.monotonic()
        sampler = Sampler(conn, streams, dispatcher, ProcessMeter(server.pid),
                          ProcessMeter(agent.pid), agent_metrics, began)
        print(f"soak: {args.minutes:g} minutes; a sample every {args.every_s:g} s", flush=True)
        print("    t s  samples/s  submits  rtt p50/p99 ms  leased p50/p99 s  live  platform MB"
              "  cpu %  agent MB  db MB", flush=True)
        deadline = began + args.minutes * 60
        while time.monotonic() < deadline and server.poll() is None:
            time.sleep(max(0.0, min(deadline, began + (len(sampler.rows) + 1) * args.every_s)
                           - time.monotonic()))
            r = sampler.take()
            print(f"{r.elapsed_s:7.0f} {r.samples_per_s:10,.0f} {r.submits:8d}"
                  f" {r.submit_p50_ms:7.1f}/{r.submit_p99_ms:<7.1f}"
                  f" {r.leased_p50_s:8.2f}/{r.leased_p99_s:<7.2f} {r.jobs_live:5d}"
                  f" {r.platform_rss_mb:11.1f} {r.platform_cpu_pct:6.0f}"
                  f" {r.agent_rss_mb:9.1f} {r.db_mb:6.0f}", flush=True)
        jobs_stop.set()
        assess_stop.set()
        dispatcher.join()
        assessor.join()
        print("time is up: no more submits; waiting for the jobs to end …", flush=True)
        wait_for(conn, "SELECT count(*) = %s FROM jobs WHERE state IN"
                 " ('succeeded', 'failed', 'cancelled')", (len(dispatcher.job_ids),),
                 args.job_max_s + 120)
        leases_stop.set()
        reports_stop.set()
        for thread in [*agents, *streams]:
            thread.join()
        assessor.assess()  # the year once more, on everything stored
        checks = Checks()
        broken = [f"{t.name}: {t.error}" for t in [*streams, *agents, dispatcher] if t.error]
        checks.check(not broken and server.poll() is None,
                     "clients and platform: " + ("; ".join(broken) if broken else
                                                 "no client thread failed, the platform ran"
                                                 " throughout"))
        check_samples(checks, conn, streams)
        check_real_agent(checks, conn, agent_metrics, real.site_id)
        check_jobs(checks, conn, dispatcher, agents)
        check_voucher(checks, client, conn, keys, voucher)
        check_rollups(checks, conn, streams, args.rollup_every_s)
        check_assessments(checks, conn, assessor)
        samples_rows = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
        leased = [float(r[0]) for r in conn.execute(
            "SELECT extract(epoch FROM r.leased_at - j.submitted_at) FROM runs r"
            " JOIN jobs j ON j.id = r.job_id WHERE r.leased_at IS NOT NULL")]
    rows = sampler.rows
    if not rows:
        print("FAIL  no sample was taken")
        return checks.failed + 1
    write_csv(rows, out / "soak.csv")
    plots = plot(rows, out)
    totals = Totals(args.minutes, backfill[0], backfill[1],
                    [rtt * 1000 for _, rtt in dispatcher.submits], leased,
                    statistics.fmean(r.samples_per_s for r in rows), len(dispatcher.job_ids),
                    assessor.runs, samples_rows)
    text = summary(args, rows, totals, checks, real.fleet)
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(f"\n{text}\nwritten: {out / 'soak.csv'}, {', '.join(p.name for p in plots)},"
          f" summary.md, platform.log, agent.log")
    return checks.failed


if __name__ == "__main__":
    sys.exit(main())
