"""The agent's lease worker against the real platform (uvicorn on loopback, real PostgreSQL) with
the process executor: runs are leased, started, reported under their fencing token, stopped when
lost or cancelled, re-attached after an agent restart, and their events survive a platform
outage."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import uvicorn
from executor_kit import wait_for

from agents.executors import ExecutorError
from agents.executors.process import ProcessExecutor
from agents.executors.supervise import proc_start_ticks
from agents.uploader import Backoff
from agents.worker import STATE_FILE, LeaseWorker, StepReport, build_worker
from jinsuan.app import create_app
from jinsuan.contract.signing import new_private_key, public_key_b64
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.platform import Platform
from scheduler.cycle import run_cycle
from scheduler.seed import PoolSpec, seed_site
from scheduler.service import service_for


class Served:
    """The platform on a fixed loopback port, stoppable and restartable (an outage)."""

    def __init__(self, platform: Platform) -> None:
        self.app = create_app(platform)  # once: the app registers the platform's metrics
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started or not self._thread.is_alive(), bool, timeout=20)
        assert self._server.started, "uvicorn did not start"

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture
def platform(settings, db) -> Platform:
    return Platform(settings=settings, db=db)


@pytest.fixture
def served(platform: Platform) -> Iterator[Served]:
    server = Served(platform)
    server.start()
    yield server
    if server._thread is not None and server._thread.is_alive():
        server.stop()


class Site:
    def __init__(self, conn, db, tmp_path: Path, served: Served) -> None:
        self.key = new_private_key()
        self.site_id, self.agent_id = seed_site(
            conn,
            db.partitions,
            name="taiyuan-1",
            city="Taiyuan",
            now=datetime.now(UTC),
            public_key=public_key_b64(self.key),
            pools=[PoolSpec("H100", 8, Decimal("8.00"))],
        )
        self.state_dir = tmp_path / "agent"
        self.served = served
        self.workers: list[LeaseWorker] = []

    def worker(self, executor: ProcessExecutor | None = None) -> LeaseWorker:
        """A fresh agent process, as after a restart: new executor and worker, same state dir."""
        worker = LeaseWorker(
            platform_url=self.served.url,
            agent_id=self.agent_id,
            key=self.key,
            executor=executor or ProcessExecutor(state_dir=self.state_dir),
            state_path=self.state_dir / STATE_FILE,
            backoff=Backoff(base_s=0.01, cap_s=0.05),
            request_timeout_s=5,
        )
        self.workers.append(worker)
        return worker


@pytest.fixture
def site(conn, db, tmp_path: Path, served: Served) -> Iterator[Site]:
    built = Site(conn, db, tmp_path, served)
    yield built
    for worker in built.workers:
        worker.close()


@pytest.fixture
def dispatcher(conn, served: Served) -> httpx.Client:
    key = create_key(conn, Role.DISPATCHER, tenant="t1")
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def submit(dispatcher: httpx.Client, platform: Platform, command: list[str], **extra) -> str:
    spec = {
        "project": "llm",
        "tasks": 1,
        "accelerators_per_task": 1,
        "payload": {"command": command},
        **extra,
    }
    reply = dispatcher.post("/v1/jobs", json=spec)
    assert reply.status_code == 201, reply.text
    assert cycle(platform).placed == 1
    return reply.json()["id"]


def cycle(platform: Platform, at: datetime | None = None):
    with platform.db.pool.connection() as conn:
        return run_cycle(conn, service_for(platform).cfg, at)


def job(dispatcher: httpx.Client, job_id: str) -> dict:
    return dispatcher.get(f"/v1/jobs/{job_id}").json()


def drive(worker: LeaseWorker, until: Callable[[], bool], timeout: float = 30) -> list[StepReport]:
    """Heartbeat until ``until()`` holds (bounded); the reports of every step taken."""
    reports: list[StepReport] = []

    def step() -> bool:
        reports.append(worker.step())
        return until()

    wait_for(step, bool, timeout=timeout)
    return reports


def sent(reports: list[StepReport]) -> list[tuple[str, str]]:
    return [event for report in reports for event in report.events_sent]


def gate(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A file the test creates to let a command finish, and the shell loop waiting on it."""
    path = tmp_path / name
    return path, f"while [ ! -e {path} ]; do sleep 0.05; done"


def test_a_leased_run_is_started_and_reported_running_then_succeeded(
    site: Site, dispatcher, platform, tmp_path: Path
) -> None:
    release, wait = gate(tmp_path, "release")
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", f"echo hello from the site; {wait}"])
    worker = site.worker()
    reports = drive(worker, lambda: job(dispatcher, job_id)["state"] == "running")
    (run,) = job(dispatcher, job_id)["runs"]
    assert sent(reports) == [(run["id"], "running")]
    assert reports[0].started == [run["id"]]
    assert run["executor_ref"] == reports[0].started[0]  # the process executor's ref
    release.touch()
    reports = drive(worker, lambda: job(dispatcher, job_id)["state"] == "succeeded")
    assert sent(reports) == [(run["id"], "succeeded")]
    (run,) = job(dispatcher, job_id)["runs"]
    assert (run["state"], run["exit_code"]) == ("succeeded", 0)
    assert "hello from the site" in run["log_tail"]
    assert run["started_at"] is not None and run["ended_at"] >= run["started_at"]
    transitions = [t["to_state"] for t in job(dispatcher, job_id)["transitions"]]
    assert transitions == ["queued", "placed", "leased", "running", "succeeded"]
    # Once its end is acknowledged the run is cleaned up, forgotten and no longer held: at once,
    # or on a later heartbeat when the run's wrapper had not yet let go of its run directory as
    # its exit was read (the worker logs "cleanup failed, trying again").
    drive(worker, lambda: worker.state.runs() == [])
    assert not (site.state_dir / "runs" / run["executor_ref"]).exists()
    assert worker.step().reply.renewed == []


def test_a_failing_run_reports_its_exit_code_and_reason(site: Site, dispatcher, platform) -> None:
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", "echo broken >&2; exit 7"])
    worker = site.worker()
    drive(worker, lambda: job(dispatcher, job_id)["state"] == "failed")
    (run,) = job(dispatcher, job_id)["runs"]
    assert (run["state"], run["exit_code"]) == ("failed", 7)
    assert "broken" in run["log_tail"]


def test_a_timed_out_run_says_so_in_its_log_tail(site: Site, dispatcher, platform) -> None:
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", "exec sleep 60"], max_runtime_s=1)
    worker = site.worker()
    drive(worker, lambda: job(dispatcher, job_id)["state"] == "failed")
    (run,) = job(dispatcher, job_id)["runs"]
    assert run["log_tail"].endswith("[jinsuan-agent] timed out after 1 s (max runtime)\n")


def test_a_lost_lease_stops_the_process_and_reports_no_end(
    site: Site, dispatcher, platform, conn, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"])
    worker = site.worker()
    drive(worker, lambda: job(dispatcher, job_id)["state"] == "running")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), bool))
    assert proc_start_ticks(pid) is not None
    (run,) = job(dispatcher, job_id)["runs"]

    # The site goes quiet past the lease TTL: the platform expires the lease and re-queues.
    conn.execute(
        "UPDATE agents SET last_report_at = now() - interval '1 hour' WHERE id = %s",
        (site.agent_id,),
    )
    later = datetime.now(UTC) + timedelta(seconds=service_for(platform).cfg.lease_ttl_s + 1)
    assert cycle(platform, later).expired == 1

    reports = drive(worker, lambda: worker.state.runs() == [])
    assert reports[0].reply.lost == [run["id"]]
    assert reports[0].silenced == [run["id"]]
    assert proc_start_ticks(pid) is None  # stopped
    assert sent(reports) == []  # and its end never reported
    (run,) = job(dispatcher, job_id)["runs"]
    assert (run["state"], run["exit_code"], run["log_tail"]) == ("lost", None, "")
    assert job(dispatcher, job_id)["state"] == "queued"


def test_a_restarted_agent_reattaches_instead_of_starting_again(
    site: Site, dispatcher, platform, tmp_path: Path
) -> None:
    count = tmp_path / "count"
    release, wait = gate(tmp_path, "release")
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", f"echo x >> {count}; {wait}"])
    first = site.worker()
    drive(first, lambda: job(dispatcher, job_id)["state"] == "running")
    # The agent dies (no cleanup, no goodbye); its run goes on. A new agent process starts.
    second = site.worker()
    report = second.step()
    (run,) = job(dispatcher, job_id)["runs"]
    assert report.reply.renewed == [run["id"]]
    assert report.started == [] and report.events_sent == []  # re-attached; running was sent
    release.touch()
    reports = drive(second, lambda: job(dispatcher, job_id)["state"] == "succeeded")
    assert sent(reports) == [(run["id"], "succeeded")]
    assert count.read_text() == "x\n"  # started once
    shown = job(dispatcher, job_id)
    assert shown["tries"] == 1 and len(shown["runs"]) == 1


def test_a_cancelled_run_is_stopped_and_the_409_ends_its_reporting(
    site: Site, dispatcher, platform, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"])
    worker = site.worker()
    drive(worker, lambda: job(dispatcher, job_id)["state"] == "running")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), bool))
    (run,) = job(dispatcher, job_id)["runs"]
    assert dispatcher.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"

    reports = drive(worker, lambda: worker.state.runs() == [])
    assert reports[0].reply.cancel == [run["id"]]
    assert proc_start_ticks(pid) is None
    assert [s for r in reports for s in r.silenced] == [run["id"]]  # its failed end got 409
    assert sent(reports) == []
    (run,) = job(dispatcher, job_id)["runs"]
    assert run["state"] == "cancelled"
    assert worker.state.pending_events() == 0
    assert worker.step().events_sent == []  # nothing more is sent for it


def test_events_wait_out_a_platform_outage_and_an_agent_restart(
    site: Site, dispatcher, platform, tmp_path: Path
) -> None:
    release, wait = gate(tmp_path, "release")
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", f"echo done; {wait}"])
    worker = site.worker()
    drive(worker, lambda: job(dispatcher, job_id)["state"] == "running")

    site.served.stop()
    release.touch()
    reports = drive(worker, lambda: worker.state.pending_events() == 1)
    assert all(r.reply is None for r in reports)
    for _ in range(3):  # retried, never dropped, while the platform is away
        assert worker.step().events_sent == []
        assert worker.state.pending_events() == 1

    restarted = site.worker()  # and the agent restarts before the platform is back
    site.served.start()
    reports = drive(restarted, lambda: job(dispatcher, job_id)["state"] == "succeeded")
    (run,) = job(dispatcher, job_id)["runs"]
    assert sent(reports) == [(run["id"], "succeeded")]
    assert "done" in run["log_tail"]


def test_a_lease_that_cannot_start_is_reported_failed(site: Site, dispatcher, platform) -> None:
    job_id = submit(
        dispatcher,
        platform,
        ["/bin/true"],
        payload={"command": ["/bin/true"], "workdir": "/nonexistent/dir"},
    )
    worker = site.worker()
    drive(worker, lambda: job(dispatcher, job_id)["state"] == "failed")
    (run,) = job(dispatcher, job_id)["runs"]
    assert "could not start" in run["log_tail"] and "/nonexistent/dir" in run["log_tail"]
    assert worker.state.runs() == []


class UnreachableAtFirst(ProcessExecutor):
    """The backend cannot be asked for the first ``failures`` starts (a Slurm controller
    restarting, say); then it works."""

    def __init__(self, state_dir: Path, failures: int) -> None:
        super().__init__(state_dir=state_dir)
        self.failures = failures
        self.tries = 0

    def start(self, lease):
        self.tries += 1
        if self.tries <= self.failures:
            raise ExecutorError("slurmctld not responding")
        return super().start(lease)


def test_a_start_that_fails_for_now_is_tried_again(
    site: Site, dispatcher, platform, tmp_path: Path
) -> None:
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", "echo ran"])
    executor = UnreachableAtFirst(site.state_dir, failures=2)
    worker = site.worker(executor)
    reports = drive(worker, lambda: job(dispatcher, job_id)["state"] == "succeeded")
    assert executor.tries == 3
    assert [r for report in reports for r in report.started] == [
        job(dispatcher, job_id)["runs"][0]["id"]
    ]


def test_a_cancelled_run_that_never_started_is_not_started(
    site: Site, dispatcher, platform, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    job_id = submit(dispatcher, platform, ["/bin/sh", "-c", f"touch {ran}"])
    executor = UnreachableAtFirst(site.state_dir, failures=1)
    worker = site.worker(executor)
    assert worker.step().started == []
    dispatcher.post(f"/v1/jobs/{job_id}/cancel")
    report = worker.step()
    (run,) = job(dispatcher, job_id)["runs"]
    assert report.reply.cancel == [run["id"]] and report.silenced == [run["id"]]
    assert report.started == [] and worker.state.runs() == []
    assert executor.tries == 1 and not ran.exists()


def test_build_worker_reads_the_executor_section(tmp_path: Path) -> None:
    from agents.executors import ExecutorConfigError, UnknownExecutor

    key = new_private_key()
    common = {
        "platform_url": "http://127.0.0.1:1",
        "agent_id": "agt_1",
        "key": key,
        "state_dir": tmp_path,
    }
    worker = build_worker({"kind": "process", "max_runs": 2, "kill_grace_s": 1}, **common)
    try:
        assert isinstance(worker.executor, ProcessExecutor)
        assert worker.executor.config.kill_grace_s == 1 and worker.max_runs == 2
        assert worker.state.path == tmp_path / STATE_FILE
    finally:
        worker.close()
    with pytest.raises(UnknownExecutor, match="kubernetes, process, slurm"):
        build_worker({"kind": "lsf"}, **common)
    with pytest.raises(ExecutorConfigError, match=r"executor\.max_runs"):
        build_worker({"kind": "process", "max_runs": -1}, **common)
    with pytest.raises(ExecutorConfigError, match=r"executor\.kind"):
        build_worker({}, **common)


def test_a_long_polling_worker_starts_a_job_placed_while_its_request_is_held(
        site: Site, dispatcher, platform, conn):
    """With long polls (the config's default) the platform holds the worker's request while
    nothing is placed at its site; a job placed meanwhile is leased by that request at once, not
    at the next heartbeat, ten seconds on (its start is reported at the worker's next step)."""
    worker = LeaseWorker(
        platform_url=site.served.url, agent_id=site.agent_id, key=site.key,
        executor=ProcessExecutor(state_dir=site.state_dir),
        state_path=site.state_dir / STATE_FILE, heartbeat_s=10, request_timeout_s=30,
        long_poll=True)
    site.workers.append(worker)
    loop = threading.Thread(target=worker.run, daemon=True)
    loop.start()
    try:
        service = service_for(platform)
        wait_for(lambda: service.wakeups._waiters.get(site.site_id), bool, timeout=20)
        asked = conn.execute("SELECT last_lease_at FROM agent_leases WHERE agent_id = %s",
                             (site.agent_id,)).fetchone()[0]
        job_id = submit(dispatcher, platform, ["sleep", "30"])
        wait_for(lambda: job(dispatcher, job_id)["state"], lambda s: s in ("leased", "running"),
                 timeout=5)
        # Leased by the held request itself: no later request was needed.
        leased_at = conn.execute("SELECT leased_at FROM runs WHERE job_id = %s",
                                 (job_id,)).fetchone()[0]
        assert leased_at - asked < timedelta(seconds=10)
    finally:
        worker.stop()
        loop.join(timeout=30)
    assert not loop.is_alive()
