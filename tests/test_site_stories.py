"""Two site stories of issue 12 end to end, every part a real process: the platform as ``jinsuan
serve`` on a fresh database, site agents as ``jinsuan-agent`` (``python -m agents.daemon``)
enrolled over HTTP as an operator enrols them, with the simulated probe and the process
executor, a dispatcher on the REST API, and ``jinsuan job show`` run as its own process.

Nothing is tuned: the scheduler runs with its defaults (a lease lasts ``lease_ttl_s`` = 20 s
after the request that renewed it, a site whose agent asked for work more than ``lease_stale_s``
= 15 s ago gets nothing new, a cycle every 2 s) and so do the agents (telemetry every 10 s, a
lease request every 5 s once the TTL is known, held by the platform while nothing is new).

* The dead executor: a site's lease loop dies while its telemetry goes on; its running job runs
  elsewhere within 30 s of the site's last lease request, the lost run is metered to its last
  heartbeat, and new work never goes to the site, which the job's why-not says.
* The reinstalled site: the agent comes back with another executor than the site's
  registration; its lease requests are refused and recorded, nothing is placed there (no
  placed -> lost -> placed loop) and the job's why-not names both executors, until the operator
  fixes the registration and the job runs.

The figures (failover time) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from executor_kit import wait_for
from servers import REPO, Served, jinsuan_serve, stop_process

from agents.executors.supervise import proc_start_ticks
from jinsuan.contract.money import to_fen
from jinsuan.kernel.auth import Role, create_key
from tests.collectors_kit import bearer
from tests.site_agent import enrolled_simulated_agent

pytestmark = pytest.mark.slow

MODEL = "NVIDIA H800"
TENANT = "t1"
# A's lease worker alone, built exactly as agents.daemon._leasing builds it for the agent.
WORKER = """
import json, logging, sys
from pathlib import Path
from agents.config import load_config
from agents.identity import load_identity
from agents.worker import build_worker
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
config = load_config(Path(sys.argv[1]))
identity = load_identity(config.agent.state_dir)
build_worker(json.loads(sys.argv[2]), platform_url=config.agent.platform_url,
             agent_id=identity.agent_id, key=identity.key,
             state_dir=config.agent.state_dir).run()
"""
PROCESS_EXECUTOR = {"kind": "process"}  # the worker's and the executor's defaults otherwise


# ---- the parties -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """An enrolled site: its agent's config file and state, and its operator's key."""

    name: str
    id: int
    agent_id: str
    config: Path
    state_dir: Path
    operator_key: str


class Platform:
    """The platform process, and the store behind it for what only the store shows."""

    def __init__(self, served: Served, conn: psycopg.Connection) -> None:
        self.url, self.served, self.conn = served.url, served, conn
        self.dispatcher_key = create_key(conn, Role.DISPATCHER, tenant=TENANT)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def enrol(self, work: Path, name: str, *, seed: int, accelerators: int,
              executor: dict[str, str] | None) -> Site:
        """Make the site, enrol its agent over HTTP and write its ``site.toml``, with an
        ``[executor]`` section when ``executor``. The agent's /metrics is turned off: it
        listens on one fixed port by default, which two agents on one host cannot share."""
        config, identity = enrolled_simulated_agent(
            self.conn, self.url, work, site=name, city="Taiyuan", enterprise=f"{name} Co",
            seed=seed, fleet={MODEL: accelerators})
        text = config.path.read_text(encoding="utf-8").replace(
            "[agent]\n", '[agent]\nmetrics_listen = ""\n', 1)
        if executor is not None:
            text += "\n[executor]\n" + "".join(f'{k} = "{v}"\n' for k, v in executor.items())
        config.path.write_text(text, encoding="utf-8")
        site_id = identity.enrolment.site_id
        (enterprise,) = self.conn.execute("SELECT enterprise_id FROM sites WHERE id = %s",
                                          (site_id,)).fetchone()
        return Site(name, site_id, identity.agent_id, config.path, config.agent.state_dir,
                    create_key(self.conn, Role.OPERATOR, enterprise_id=enterprise))

    def register(self, site: Site, executor: str, price: str) -> None:
        """What the site's manager registers: its executor and its price."""
        made = self.http.put(f"/v1/sites/{site.id}/scheduling", headers=bearer(site.operator_key),
                             json={"executor": executor, "prices": {MODEL: price}})
        assert made.status_code == 200, made.text

    def scheduling(self, site: Site) -> dict[str, Any]:
        shown = self.http.get(f"/v1/sites/{site.id}/scheduling",
                              headers=bearer(site.operator_key))
        assert shown.status_code == 200, shown.text
        return shown.json()

    def submit(self, *command: str, **constraints: str) -> str:
        made = self.http.post("/v1/jobs", headers=bearer(self.dispatcher_key), json={
            "project": "stories", "tasks": 1, "accelerators_per_task": 1,
            "constraints": constraints, "payload": {"command": list(command)}})
        assert made.status_code == 201, made.text
        return made.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        shown = self.http.get(f"/v1/jobs/{job_id}", headers=bearer(self.dispatcher_key))
        assert shown.status_code == 200, shown.text
        return shown.json()

    def cancel(self, job_id: str) -> None:
        done = self.http.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(self.dispatcher_key))
        assert done.status_code == 200 and done.json()["state"] == "cancelled", done.text

    def job_show(self, job_id: str) -> str:
        """``jinsuan job show`` as a dispatcher runs it; wide enough that no reason wraps."""
        shown = subprocess.run(
            [sys.executable, "-m", "jinsuan.cli", "job", "show", job_id], cwd=REPO,
            env={**os.environ, "JINSUAN_URL": self.url, "JINSUAN_API_KEY": self.dispatcher_key,
                 "COLUMNS": "250"}, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        return shown.stdout

    def reporting(self, site: Site) -> bool:
        """The site's telemetry is in: its accelerators are seen up, as placement requires."""
        return self.conn.execute(
            "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id"
            " WHERE s.site_id = %s AND s.metric = 'accelerator_up'",
            (site.id,)).fetchone()[0] > 0

    def last_lease_at(self, site: Site) -> datetime | None:
        row = self.conn.execute("SELECT last_lease_at FROM agent_leases WHERE agent_id = %s",
                                (site.agent_id,)).fetchone()
        return row[0] if row else None

    def telemetry(self, site: Site) -> tuple[datetime | None, int]:
        """When the site's agent last reported, and the samples stored for the site."""
        reported = self.conn.execute("SELECT last_report_at FROM agents WHERE id = %s",
                                     (site.agent_id,)).fetchone()[0]
        samples = self.conn.execute(
            "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id"
            " WHERE s.site_id = %s", (site.id,)).fetchone()[0]
        return reported, samples


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def platform(database_url: str, tmp_path: Path, stack: ExitStack) -> Platform:
    served = stack.enter_context(jinsuan_serve(database_url, tmp_path / "platform"))
    conn = stack.enter_context(psycopg.connect(database_url, autocommit=True))
    made = Platform(served, conn)
    stack.callback(made.http.close)
    return made


# ---- processes ---------------------------------------------------------------------------------

def start(stack: ExitStack, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process writing to ``log``; it is stopped when ``stack`` closes."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    stack.callback(stop_process, process)
    return process


def run_agent(stack: ExitStack, site: Site) -> subprocess.Popen[bytes]:
    """``jinsuan-agent --config site.toml``; its runs are killed after it has stopped."""
    stack.callback(kill_runs, site.state_dir)  # a callback runs after those added later
    return start(stack, [sys.executable, "-m", "agents.daemon", "--config", str(site.config)],
                 site.state_dir.parent / "agent.log")


def kill_runs(state_dir: Path) -> None:
    """SIGKILL every run the process executor started under ``state_dir`` that still lives.

    A run outlives its agent by design (its supervisor is a session of its own, the command a
    process group of its own), so neither stopping nor killing the agent ends it. Each is
    signalled only if it is still the process its supervisor recorded (pid and start time).
    """
    live = []
    for found in (state_dir / "runs").glob("*/supervisor.json"):
        record = json.loads(found.read_text())
        command = (record.get("child_pid"), record.get("child_start_ticks"))
        for pid, ticks, kill in ((*command, os.killpg), (record["pid"], record["start_ticks"],
                                                         os.kill)):
            if pid is not None and ticks is not None and proc_start_ticks(pid) == ticks:
                with contextlib.suppress(ProcessLookupError):
                    kill(pid, signal.SIGKILL)
                live.append((pid, ticks))
    wait_for(lambda: [p for p, t in live if proc_start_ticks(p) == t], lambda left: not left,
             timeout=10)


def log_of(process_log: Path) -> str:
    return process_log.read_text(errors="replace")


# ---- story 1: the dead executor ----------------------------------------------------------------

def test_a_dead_executor_s_job_runs_elsewhere_within_30_s_and_the_site_gets_nothing_new(
        platform: Platform, tmp_path: Path, stack: ExitStack) -> None:
    """Site A (4 yuan an accelerator-hour, 2 accelerators) runs its telemetry agent and, as a
    process of its own, its lease worker: so the lease loop can die alone, which is exactly how
    a crashed executor looks to the platform (the site still reports; it no longer asks for
    work). Site B (12 yuan, 1 accelerator) runs one ``jinsuan-agent`` with the process executor;
    it starts once J1 runs at A, so that J1's placement at A does not hang on which site's first
    report a cycle's inventory caught, and is leasing before A's worker is killed, so the time
    measured is the platform's failover alone.

    J1 (``sleep 600``) runs at A; A's worker is SIGKILLed; J1 runs at B within 30 s of A's
    last lease request as the platform recorded it, while A's telemetry goes on; A's run ended
    lost and is metered to its last heartbeat. J2, submitted then, waits while J1 fills B, its
    why-not names A as not leasing, and once J1 is cancelled it runs at B, never at A."""
    a = platform.enrol(tmp_path / "a", "story-a", seed=1, accelerators=2, executor=None)
    b = platform.enrol(tmp_path / "b", "story-b", seed=2, accelerators=1,
                       executor=PROCESS_EXECUTOR)
    platform.register(a, "process", "4.00")
    platform.register(b, "process", "12.00")

    telemetry = run_agent(stack, a)
    worker = start(stack, [sys.executable, "-c", WORKER, str(a.config),
                           json.dumps(PROCESS_EXECUTOR)], tmp_path / "a" / "worker.log")
    wait_for(lambda: platform.reporting(a) and platform.last_lease_at(a), bool, timeout=40)
    j1 = platform.submit("sleep", "600")
    running = wait_for(lambda: platform.job(j1), lambda j: j["state"] == "running", timeout=30)
    first = running["runs"][-1]
    assert (first["site"], len(running["runs"])) == (a.name, 1)

    run_agent(stack, b)
    wait_for(lambda: platform.reporting(b) and platform.scheduling(b)["last_lease_at"], bool,
             timeout=40)
    # The run is reported running and then renewed by a later lease request: from here on what
    # the platform last heard of it is A's latest lease request.
    wait_for(lambda: platform.conn.execute(
        "SELECT r.last_heard_at = l.last_lease_at FROM runs r, agent_leases l"
        " WHERE r.id = %s AND l.agent_id = %s", (first["id"], a.agent_id)).fetchone()[0],
        bool, timeout=20)

    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    killed_at = datetime.now(UTC)
    reported_then, samples_then = platform.telemetry(a)

    def where() -> tuple[str, str, datetime]:
        job = platform.job(j1)
        return job["state"], job["runs"][-1]["site"], datetime.now(UTC)

    _, _, seen_at = wait_for(where, lambda w: w[:2] == ("running", b.name), timeout=60,
                             every=0.1)
    last_asked = platform.last_lease_at(a)
    assert last_asked is not None
    failover = seen_at - last_asked
    detail = platform.job(j1)
    second = detail["runs"][-1]
    print(f"\nfailover: J1 seen running at B {failover.total_seconds():.1f} s after A's last"
          f" lease request (its run at B started, by the platform's bounds,"
          f" {(datetime.fromisoformat(second['started_at']) - last_asked).total_seconds():.1f}"
          f" s after it; A's worker was killed {(killed_at - last_asked).total_seconds():.1f}"
          " s after it)")
    assert failover <= timedelta(seconds=30)

    # A's telemetry went on after its lease loop died.
    wait_for(lambda: platform.telemetry(a), lambda t: t[0] > killed_at and t[1] > samples_then,
             timeout=20)
    assert reported_then is not None and telemetry.poll() is None

    # J1's run at A ended lost, and is metered to the last moment A was heard: its last lease
    # request, which renewed the run.
    lost = detail["runs"][0]
    assert (lost["id"], lost["site"], lost["state"]) == (first["id"], a.name, "lost")
    assert lost["end_reason"] == ("lease expired: the site's agent last asked for work at"
                                  f" {last_asked.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")
    assert [r["site"] for r in detail["runs"]] == [a.name, b.name]
    usage = platform.conn.execute(
        "SELECT started_at, ended_at, bounded_by, accelerator_hours, cost_yuan FROM usage_records"
        " WHERE run_id = %s AND adjusts IS NULL", (lost["id"],)).fetchall()
    assert len(usage) == 1
    started, ended, bounded_by, hours, cost = usage[0]
    assert (started, ended) == (datetime.fromisoformat(lost["started_at"]), last_asked)
    assert bounded_by == ("lease expired: billed to the last moment the platform heard the run"
                          " alive")
    assert hours > 0 and cost == to_fen(hours * Decimal("4.00"))

    # J2 comes after A stopped leasing: B is full (J1), and A is ruled out as not leasing.
    j2 = platform.submit("true")
    queued = platform.job(j2)
    assert queued["state"] == "queued" and queued["runs"] == []
    verdicts = {v["site"]: (v["constraint"], v["reason"]) for v in queued["why_not"]}
    assert verdicts[a.name] == ("not_leasing", "its agent has not asked for work recently")
    assert verdicts[b.name][0] == "no_capacity"
    shown = platform.job_show(j2)
    print(f"\njinsuan job show J2:\n{shown}")
    assert "why not placed yet" in shown
    assert any(a.name in line and "not_leasing" in line
               and "its agent has not asked for work recently" in line
               for line in shown.splitlines()), shown

    # B is freed: J2 runs there. J1's run at B is stopped by B's agent and cleaned up.
    platform.cancel(j1)
    ended_j2 = wait_for(lambda: platform.job(j2), lambda j: j["state"] == "succeeded",
                        timeout=60)
    assert [(r["site"], r["state"]) for r in ended_j2["runs"]] == [(b.name, "succeeded")]
    assert ended_j2["tries"] == 1
    wait_for(lambda: (b.state_dir / "runs" / second["id"]).exists(), lambda there: not there,
             timeout=30)
    # A never asked for work again (a request already sent when the kill came was recorded on
    # its arrival, before J1 was seen at B), and its telemetry agent lives on.
    assert platform.last_lease_at(a) == last_asked
    assert telemetry.poll() is None


# ---- story 2: the reinstalled site -------------------------------------------------------------

def test_a_reinstalled_agent_with_another_executor_gets_nothing_until_the_site_is_registered_again(
        platform: Platform, tmp_path: Path, stack: ExitStack) -> None:
    """Site C is registered with Slurm; its host was reinstalled and its agent now runs the
    process executor. Each lease request is refused (409, in the agent's own log) and recorded;
    J3, pinned to C, stays queued without a single run across two refused requests (more than
    two cycles apart), and ``jinsuan job show`` names both executors. The operator registers
    the process executor: J3 is placed, leased, runs and succeeds, and its usage is metered."""
    c = platform.enrol(tmp_path / "c", "story-c", seed=3, accelerators=1,
                       executor=PROCESS_EXECUTOR)
    platform.register(c, "slurm", "8.00")
    agent = run_agent(stack, c)
    agent_log = c.state_dir.parent / "agent.log"

    shown = wait_for(lambda: platform.scheduling(c), lambda s: s["agent_executor"] == "process",
                     timeout=30)
    assert shown["executor"] == "slurm" and shown["last_lease_at"] is not None
    wait_for(lambda: log_of(agent_log), lambda text: "lease request refused" in text, timeout=30)
    assert ("lease request refused: HTTP 409 conflict at executor: the site is registered with"
            " executor 'slurm', the agent runs 'process'") in log_of(agent_log)
    wait_for(lambda: platform.reporting(c), bool, timeout=30)

    j3 = platform.submit("sh", "-c", "sleep 1; echo done", site=c.name)
    submitted_at = datetime.now(UTC)
    refused = platform.last_lease_at(c)
    for _ in range(2):  # two more refused requests after the submit, 10 s apart
        refused = wait_for(lambda: platform.last_lease_at(c),
                           lambda at, before=refused: at is not None and at > before
                           and at > submitted_at, timeout=30)
    queued = platform.job(j3)
    assert (queued["state"], queued["tries"], queued["runs"]) == ("queued", 0, [])
    assert platform.conn.execute("SELECT count(*) FROM runs WHERE job_id = %s",
                                 (j3,)).fetchone()[0] == 0
    verdicts = {v["site"]: (v["constraint"], v["reason"]) for v in queued["why_not"]}
    mismatch = ("its agent runs the process executor but the site is registered with slurm")
    assert verdicts[c.name][0] == "executor_mismatch"
    assert verdicts[c.name][1].startswith(mismatch)
    printed = platform.job_show(j3)
    print(f"\njinsuan job show J3:\n{printed}")
    assert any(c.name in line and "executor_mismatch" in line and mismatch in line
               for line in printed.splitlines()), printed
    wait_for(lambda: log_of(agent_log).count("lease request refused: HTTP 409"),
             lambda refusals: refusals >= 3, timeout=10)  # the last one logged on its answer

    platform.register(c, "process", "8.00")
    done = wait_for(lambda: platform.job(j3), lambda j: j["state"] == "succeeded", timeout=60)
    assert done["tries"] == 1
    [run] = done["runs"]
    assert (run["site"], run["state"], run["exit_code"]) == (c.name, "succeeded", 0)
    assert "done" in run["log_tail"]
    assert platform.scheduling(c)["executor"] == platform.scheduling(c)["agent_executor"] == (
        "process")
    usage = platform.conn.execute(
        "SELECT run_id, site_id, accelerators, accelerator_hours, yuan_per_accelerator_hour,"
        " cost_yuan FROM usage_records WHERE job_id = %s AND adjusts IS NULL", (j3,)).fetchall()
    assert len(usage) == 1
    run_id, site_id, accelerators, hours, price, cost = usage[0]
    assert (run_id, site_id, accelerators, price) == (run["id"], c.id, 1, Decimal("8.00"))
    assert Decimal(1) / 3600 <= hours <= Decimal(60) / 3600  # sleep 1 ran, and not longer
    assert cost == to_fen(hours * price)
    assert agent.poll() is None
