"""``jinsuan demo`` end to end: platform, five enrolled agents, reports, jobs, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import psycopg
import pytest
from servers import free_port

from jinsuan.contract.policytime import SHANGHAI
from jinsuan.demo.run import SITES, run_demo
from jinsuan.kernel.store import embedded


def _wait_for(what: str, check, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_demo_reports_from_every_site_runs_jobs_and_stops_cleanly(
        database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("JINSUAN_DATA_DIR", str(tmp_path))
    stop = threading.Event()
    failure: list[BaseException] = []

    def demo() -> None:
        try:
            run_demo(port=free_port(), interval=0.5, refresh=0.5, jobs_every=0.3, stop=stop,
                     history_days=0.1)
        except BaseException as exc:  # reported by the assertion below
            failure.append(exc)

    thread = threading.Thread(target=demo)
    thread.start()
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            def every_site_reported() -> bool:
                row = conn.execute("SELECT count(DISTINCT a.site_id) FROM reports r"
                                   " JOIN agents a ON a.id = r.agent_id").fetchone()
                return row[0] == len(SITES)

            def a_job_ran() -> bool:
                row = conn.execute("SELECT count(*) FROM runs WHERE state = 'running'"
                                   " OR ended_at IS NOT NULL").fetchone()
                return row[0] > 0

            _wait_for("a report from every site", every_site_reported)
            _wait_for("a job to start at a site", a_job_ran)
            fleet = sum(sum(site.fleet.values()) for site in SITES)
            assert conn.execute("SELECT count(*) FROM accelerators").fetchone()[0] == fleet
            # --history-days 0.1: 2.4 hours of each site's past, sent and rolled up first.
            history = conn.execute(
                "SELECT count(DISTINCT a.site_id), min(r.created_at) FROM reports r"
                " JOIN agents a ON a.id = r.agent_id WHERE a.hostname LIKE '%-history'"
            ).fetchone()
            assert history[0] == len(SITES)
            # The first history report holds six 15-minute readings from 2.4 hours ago.
            assert history[1] < datetime.now(UTC) - timedelta(hours=1)
            rolled = conn.execute("SELECT count(DISTINCT site_id) FROM rollup_site_hourly"
                                  " WHERE pue IS NOT NULL").fetchone()[0]
            assert rolled == len(SITES)

            # The voucher story: llm-lab's short eval jobs run at Jinneng's H800s and draw
            # on its voucher as they end (while the policy is in force: it issues nothing after
            # 2026-12-31, and the demo then says so).
            if datetime.now(SHANGHAI).date() <= date(2026, 12, 31):
                def a_voucher_draw() -> bool:
                    row = conn.execute("SELECT count(*) FROM voucher_draws WHERE amount > 0"
                                       ).fetchone()
                    return row[0] > 0

                _wait_for("a job's usage to draw on the demo voucher", a_voucher_draw)
                face, balance = conn.execute(
                    "SELECT v.face_value, sum(l.amount) FILTER (WHERE l.to_account = 'voucher:'"
                    " || v.id) - coalesce(sum(l.amount) FILTER (WHERE l.from_account ="
                    " 'voucher:' || v.id), 0) FROM vouchers v, ledger_entries l"
                    " GROUP BY v.id").fetchone()
                assert face == Decimal("400000.00") and balance < face
            else:
                assert conn.execute("SELECT count(*) FROM vouchers").fetchone()[0] == 0
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not thread.is_alive(), "the demo did not stop"
    assert not failure, failure
    assert (tmp_path / "demo" / "agents" / "taiyuan-aicc.toml").exists()


def _start_demo(data_dir, port: int) -> subprocess.Popen:
    """``jinsuan demo`` as a user starts it: its own process, on the embedded database."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["JINSUAN_DATA_DIR"] = str(data_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "jinsuan.cli", "demo", "--port", str(port), "--interval", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_until_serving(demo: subprocess.Popen, port: int) -> None:
    def answers() -> bool:
        assert demo.poll() is None, demo.stderr.read().decode()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    _wait_for("the demo's platform to answer", answers, timeout_s=180)


def _postmaster_running(pgdata) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_closed_terminal_or_a_service_manager_stops_the_demo_and_its_database(
        tmp_path, signum):
    port = free_port()
    demo = _start_demo(tmp_path, port)
    try:
        _wait_until_serving(demo, port)
        assert _postmaster_running(tmp_path / "pgdata")
        demo.send_signal(signum)
        assert demo.wait(timeout=120) == 0, demo.stderr.read().decode()
    finally:
        if demo.poll() is None:
            demo.kill()
    assert not _postmaster_running(tmp_path / "pgdata"), "the embedded PostgreSQL still runs"
    assert json.loads((tmp_path / "pgdata" / ".handle_pids.json").read_text()) == []


@pytest.mark.slow
def test_a_killed_demo_does_not_keep_the_database_running_for_the_next_one(tmp_path):
    """The killed process stays on pgserver's list of the server's users; the next user of
    the data directory drops it, so its own stop stops the server again."""
    port = free_port()
    demo = _start_demo(tmp_path, port)
    try:
        _wait_until_serving(demo, port)
    finally:
        demo.kill()
        demo.wait(timeout=30)
    pgdata = tmp_path / "pgdata"
    assert json.loads((pgdata / ".handle_pids.json").read_text()) == [demo.pid]
    assert _postmaster_running(pgdata)

    url, server = embedded.start(tmp_path)  # as the next demo (or jinsuan report) does
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    server.cleanup()
    assert not _postmaster_running(pgdata), "the next user's stop left the server running"
