"""Only one platform process rolls up at a time (PostgreSQL advisory lock), deterministically.

Runner A is made to hold the lock by blocking in its ``on_locked`` hook until the test lets it
go; runner B is started only then, so B always meets a held lock. No sleeps decide anything.
"""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from collectors.rollup import LOCK_KEY, run_rollups
from jinsuan.kernel.store import Database

DAY = datetime(2025, 3, 10, tzinfo=UTC)
NOW = DAY + timedelta(hours=12, minutes=5)  # hours 10 and 11 are closed
WAIT_S = 60
REPO = Path(__file__).resolve().parent.parent


def add_site_with_data(db: Database, conn: psycopg.Connection) -> int:
    ent = conn.execute("INSERT INTO enterprises (name) VALUES ('E') RETURNING id").fetchone()[0]
    site = conn.execute(
        "INSERT INTO sites (enterprise_id, name, city) VALUES (%s, 'S', 'Taiyuan') RETURNING id",
        (ent,),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO meters (site_id, id, role, measures, first_seen, last_seen)"
        " VALUES (%s, 'IT', 'it', 'ups_output', %s, %s)", (site, DAY, DAY),
    )
    series = conn.execute(
        "INSERT INTO series (site_id, metric, device) VALUES (%s, 'meter_power_watts', 'IT')"
        " RETURNING id", (site,),
    ).fetchone()[0]
    db.partitions.ensure(conn, [DAY.date()])
    start = DAY + timedelta(hours=10)
    with conn.cursor() as cur, cur.copy("COPY samples (ts, series_id, value) FROM STDIN") as cp:
        for minute in range(120):
            cp.write_row((start + timedelta(minutes=minute), series, 1000.0))
    return site


def lock_holders(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND ((classid::bigint << 32) | objid::bigint) = %s", (LOCK_KEY,)
    ).fetchone()[0]


def runs(conn: psycopg.Connection) -> list[tuple[str, int]]:
    return conn.execute("SELECT holder, hours FROM rollup_runs ORDER BY id").fetchall()


def test_two_pools_one_computes_the_other_skips(db, conn, settings) -> None:
    add_site_with_data(db, conn)
    other = Database.open(settings)  # a second pool, as a second platform process has
    a_holds, release = threading.Event(), threading.Event()

    def hold() -> None:
        a_holds.set()
        if not release.wait(WAIT_S):
            raise TimeoutError("the test never released runner A")

    try:
        with ThreadPoolExecutor(1) as pool:
            a = pool.submit(run_rollups, db, settings, now=NOW, holder="A", on_locked=hold)
            assert a_holds.wait(WAIT_S), "runner A never took the lock"
            b = run_rollups(other, settings, now=NOW, holder="B")
            release.set()
            a_result = a.result(timeout=WAIT_S)
        assert not b.ran and b.hours == 0
        assert a_result.ran and a_result.hours == 2
        assert runs(conn) == [("A", 2)]
        # The lock went with A's run: B's next tick runs, and finds nothing left to do.
        later = run_rollups(other, settings, now=NOW, holder="B")
        assert later.ran and later.hours == 0
    finally:
        other.close()


CHILD = textwrap.dedent("""
    import json, sys
    from datetime import datetime
    from collectors.rollup import run_rollups
    from jinsuan.kernel.settings import Settings
    from jinsuan.kernel.store import Database

    settings = Settings(database_url=sys.argv[1], data_dir=sys.argv[2],
                        run_background_jobs=False)
    db = Database.open(settings)

    def hold():
        print("locked", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("parent did not say go")

    result = run_rollups(db, settings, now=datetime.fromisoformat(sys.argv[3]), on_locked=hold)
    print(json.dumps({"ran": result.ran, "hours": result.hours}), flush=True)
    db.close()
""")


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no line from the child within {timeout} s")
    return proc.stdout.readline().strip()


@pytest.fixture
def child(database_url: str, tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, database_url, str(tmp_path), NOW.isoformat()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)


def test_two_processes_one_computes_the_other_skips(db, conn, settings, child) -> None:
    add_site_with_data(db, conn)
    assert read_line(child, WAIT_S) == "locked"

    mine = run_rollups(db, settings, now=NOW, holder="parent")

    child.stdin.write("go\n")
    child.stdin.flush()
    theirs = json.loads(read_line(child, WAIT_S))
    assert child.wait(WAIT_S) == 0
    assert not mine.ran
    assert theirs == {"ran": True, "hours": 2}
    [(holder, hours)] = runs(conn)
    assert holder.endswith(f":{child.pid}") and hours == 2


def test_a_killed_holder_releases_the_lock(db, conn, settings, child) -> None:
    add_site_with_data(db, conn)
    assert read_line(child, WAIT_S) == "locked"
    assert not run_rollups(db, settings, now=NOW).ran

    assert lock_holders(conn) == 1

    child.send_signal(signal.SIGKILL)
    child.wait(WAIT_S)
    # The server drops the dead session, and its session lock with it, once it sees the
    # socket closed; wait for that condition rather than for a fixed time.
    deadline = time.monotonic() + WAIT_S
    while lock_holders(conn):
        assert time.monotonic() < deadline, "the killed holder's lock was never released"
        time.sleep(0.05)

    result = run_rollups(db, settings, now=NOW, holder="survivor")
    assert result.ran and result.hours == 2
    assert ("survivor", 2) in runs(conn)
