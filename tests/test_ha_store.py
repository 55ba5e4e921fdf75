"""The store on a highly available pair (Patroni, ``.ci/ha.sh``): the primary dies, the
synchronous standby is promoted, and the platform's pool reconnects by itself with nothing it
acknowledged lost."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from ha import fresh_database, kill_leader, start_pair, wait_for_new_leader

from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ha_pair():
    start_pair()
    yield
    start_pair()  # the killed node rejoins as a standby for the next test


def test_a_write_the_store_acknowledged_survives_the_primary_dying(ha_pair, tmp_path):
    with fresh_database() as url:
        db = Database.open(Settings(database_url=url, data_dir=tmp_path,
                                    run_background_jobs=False))
        try:
            with db.pool.connection() as conn:
                conn.execute("CREATE TABLE acknowledged (n int PRIMARY KEY, at timestamptz"
                             " NOT NULL DEFAULT clock_timestamp())")
            acked: list[int] = []
            failures: list[str] = []
            stop = threading.Event()

            def writer() -> None:
                # As an agent's uploader does: a write that failed is sent again until
                # acknowledged; an acknowledged one is never sent again.
                n = 0
                while not stop.is_set():
                    try:
                        with db.pool.connection(timeout=5) as conn:
                            conn.execute("INSERT INTO acknowledged (n) VALUES (%s)"
                                         " ON CONFLICT DO NOTHING", (n,))
                    except (psycopg.OperationalError, psycopg.errors.AdminShutdown,
                            TimeoutError) as exc:
                        failures.append(type(exc).__name__)
                        time.sleep(0.1)
                        continue
                    acked.append(n)
                    n += 1

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                _wait(lambda: len(acked) >= 200, "200 writes before the failover")
                old = kill_leader()
                before = len(acked)
                new = wait_for_new_leader(old)
                _wait(lambda: len(acked) >= before + 200, "200 writes after the failover")
            finally:
                stop.set()
                thread.join(timeout=60)
            assert new != old
            assert failures, "the writer never saw the primary go: the test did not fail over"
            with db.pool.connection() as conn:
                stored = [r[0] for r in conn.execute("SELECT n FROM acknowledged ORDER BY n")]
                port = conn.execute("SELECT inet_server_port()").fetchone()[0]
            assert stored == acked, "an acknowledged write was lost or one was stored twice"
            assert str(port) in {"5460", "5461"} and new.endswith(str(int(port) - 5460))
        finally:
            db.close()


def _wait(check, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
