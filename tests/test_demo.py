"""``jinsuan demo`` end to end: platform, five enrolled agents, reports, jobs, clean stop.

How the demo stops on signals, as its own process, is in test_shutdown.py."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from servers import free_port

from jinsuan.contract.policytime import SHANGHAI
from jinsuan.demo.run import SITES, run_demo


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

