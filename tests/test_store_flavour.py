"""The store's flavour: TimescaleDB only where it can load. On a server where the package is
installed but not preloaded (the usual state right after installing it), migrating goes on
with plain PostgreSQL and says why, instead of dying in its first migration."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from servers import free_port

from jinsuan.kernel.store.migrate import migrate

# The private PostgreSQL with TimescaleDB installed that ../shared/vendor/timescaledb.sh builds.
TS_BIN = Path(os.environ.get("JINSUAN_TS_BIN", "/opt/pg15-timescaledb/lib/postgresql/15/bin"))


@pytest.fixture
def installed_not_loaded() -> Iterator[str]:
    """A new cluster of that PostgreSQL, started without timescaledb preloaded."""
    initdb, pg_ctl = TS_BIN / "initdb", TS_BIN / "pg_ctl"
    if not initdb.exists():
        pytest.skip(f"no PostgreSQL with TimescaleDB installed at {TS_BIN}")
    root = os.geteuid() == 0
    if root and shutil.which("runuser") is None:
        pytest.skip("initdb refuses root and runuser is missing")
    as_owner = ["runuser", "-u", "postgres", "--"] if root else []
    # Not under pytest's tmp_path: its parents are private to root, and initdb runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="jinsuan-pg-"))
    if root:
        shutil.chown(data, "postgres")
    subprocess.run([*as_owner, str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = free_port()
    subprocess.run([*as_owner, str(pg_ctl), "-D", str(data), "-w", "-l", str(data / "log"),
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_owner, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_installed_but_not_preloaded_timescale_falls_back_to_plain_postgresql(
        installed_not_loaded: str, caplog: pytest.LogCaptureFixture) -> None:
    with psycopg.connect(installed_not_loaded, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_available_extensions"
                            " WHERE name = 'timescaledb'").fetchone() is not None
        with caplog.at_level(logging.WARNING, logger="jinsuan.kernel.store.migrate"):
            timescale = migrate(conn, want_timescale=True)
        assert timescale is False
        # The plain layout: samples partitioned by day, no extension created.
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'samples'"
                            ).fetchone() == ("p",)
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
                            ).fetchone() == (0,)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "not loaded" in warning and "shared_preload_libraries" in warning
