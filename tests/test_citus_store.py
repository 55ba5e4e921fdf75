"""What is Citus's own in the store: samples spread over the workers by series, days older than
a week turned columnar by the partition upkeep (and still written into and read), and the same
rollup figures as plain PostgreSQL from the same reports. Run with JINSUAN_TEST_FLAVOUR=citus
(.ci/run does, on the cluster ../shared/vendor/citus.sh starts); the comparison also needs the
plain server, JINSUAN_TEST_PLAIN_PG (default 127.0.0.1:5432), and skips without it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from collectors_kit import Agent, enrol, make_app, make_org, steady_series
from conftest import FLAVOUR
from fastapi.testclient import TestClient

from collectors.jobs import maintain_partitions
from collectors.rollup import floor_hour, run_rollups
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database
from jinsuan.kernel.store.migrate import Flavour

pytestmark = pytest.mark.skipif(FLAVOUR != "citus",
                                reason="Citus's own: JINSUAN_TEST_FLAVOUR=citus")

PLAIN_URL = os.environ.get("JINSUAN_TEST_PLAIN_PG",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
HOUR_MS = 3_600_000


def _post_hours(client: TestClient, agent: Agent, start: datetime, hours: int) -> int:
    """Report ``hours`` hours of a small site from ``start``, an hour a report; return the
    samples sent."""
    sent = 0
    for h in range(hours):
        series = steady_series(int(start.timestamp() * 1000) + h * HOUR_MS, 360)
        reply = agent.post(client, agent.batch(series))
        assert reply.status_code == 200 and reply.json()["status"] == "stored", reply.text
        sent += sum(len(s.points) for s in series)
    return sent


def _rows_per_worker(conn: psycopg.Connection) -> dict[int, int]:
    """Rows of samples held by each worker (by port), counted in the shards of every day."""
    held: dict[int, int] = {}
    partitions = conn.execute("SELECT partition FROM time_partitions"
                              " WHERE parent_table = 'samples'::regclass").fetchall()
    for (partition,) in partitions:
        for port, rows in conn.execute(
                "SELECT p.nodeport, r.result::bigint"
                " FROM run_command_on_shards(%s, 'SELECT count(*) FROM %%s') r"
                " JOIN pg_dist_shard_placement p USING (shardid) WHERE r.success",
                (str(partition),)).fetchall():
            held[port] = held.get(port, 0) + rows
    return held


def test_samples_are_distributed_by_series_and_both_workers_hold_rows(db, conn, settings) -> None:
    assert db.flavour is Flavour.CITUS
    assert conn.execute(
        "SELECT citus_table_type, distribution_column, shard_count FROM citus_tables"
        " WHERE table_name = 'samples'::regclass").fetchone() == ("distributed", "series_id", 16)
    # the small tables stay on the coordinator, joined with the shards by Citus
    assert conn.execute("SELECT count(*) FROM citus_tables WHERE table_name = ANY("
                        "ARRAY['series', 'sites', 'reports']::regclass[])").fetchone() == (0,)
    org = make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan")
    app, _ = make_app(settings, db)
    with TestClient(app) as client:
        sent = _post_hours(client, enrol(client, org), floor_hour(datetime.now(UTC))
                           - timedelta(hours=2), 2)

    held = _rows_per_worker(conn)
    workers = {port for (port,) in conn.execute(
        "SELECT nodeport FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary'")}
    assert len(workers) >= 2 and set(held) == workers
    assert all(rows > 0 for rows in held.values()), held
    assert sum(held.values()) == sent
    assert conn.execute("SELECT count(*) FROM samples").fetchone() == (sent,)


def test_upkeep_turns_week_old_days_columnar_and_they_still_take_late_data(
        db, conn, settings) -> None:
    org = make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan")
    app, _ = make_app(settings, db)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    old, recent = today - timedelta(days=10), today - timedelta(days=1)
    with TestClient(app) as client:
        agent = enrol(client, org)
        sent = _post_hours(client, agent, old, 1) + _post_hours(client, agent, recent, 1)
        before = conn.execute("SELECT count(*), sum(value) FROM samples").fetchone()

        maintain_partitions(db, settings.retention_days, today)

        methods = dict(conn.execute(
            "SELECT from_value::timestamptz, access_method FROM time_partitions"
            " WHERE parent_table = 'samples'::regclass").fetchall())
        assert methods[old] == "columnar"
        assert methods[recent] == "heap"
        assert {methods[today + timedelta(days=d)] for d in range(3)} == {"heap"}  # ahead
        assert conn.execute("SELECT count(*), sum(value) FROM samples").fetchone() == before
        assert before[0] == sent

        # a late report for the columnar day is stored and read with the rest
        late = _post_hours(client, agent, old + timedelta(hours=5), 1)
    assert conn.execute("SELECT count(*) FROM samples WHERE ts >= %s AND ts < %s",
                        (old, old + timedelta(days=1))).fetchone() == (sent // 2 + late,)
    # upkeep again: nothing left to convert, the columnar day stays
    maintain_partitions(db, settings.retention_days, today)
    assert conn.execute("SELECT access_method FROM time_partitions WHERE from_value::timestamptz"
                        " = %s AND parent_table = 'samples'::regclass", (old,)).fetchone() == (
        "columnar",)
    # retention drops the columnar day whole, on every worker, and keeps the recent one
    maintain_partitions(db, 5, today)
    assert old not in {start for (start,) in conn.execute(
        "SELECT from_value::timestamptz FROM time_partitions"
        " WHERE parent_table = 'samples'::regclass")}
    assert conn.execute("SELECT count(*), min(ts) >= %s FROM samples",
                        (recent,)).fetchone() == (sent // 2, True)


@pytest.fixture
def plain_db(tmp_path: Path) -> Iterator[Database]:
    """A new plain PostgreSQL store on the machine's own server, dropped afterwards."""
    try:
        with psycopg.connect(PLAIN_URL, connect_timeout=3, autocommit=True):
            pass
    except psycopg.OperationalError:
        pytest.skip(f"no plain PostgreSQL at {PLAIN_URL} to compare with")
    name = f"jinsuan_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PLAIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    conninfo = psycopg.conninfo.conninfo_to_dict(PLAIN_URL)
    conninfo["dbname"] = name
    database = Database.open(Settings(database_url=psycopg.conninfo.make_conninfo(**conninfo),
                                      data_dir=tmp_path, run_background_jobs=False,
                                      use_timescale=False, use_citus=False))
    try:
        assert database.flavour is Flavour.PLAIN
        yield database
    finally:
        database.close()
        with psycopg.connect(PLAIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_SITE_FIGURES = """
SELECT s.name, r.hour, r.it_kwh, r.facility_kwh, r.pue, r.fp16_pflops, r.accelerators, r.racks,
       r.utilization, r.coverage_it, r.coverage_facility, r.coverage_accelerators, r.quality
FROM rollup_site_hourly r JOIN sites s ON s.id = r.site_id ORDER BY 1, 2
"""
_SERIES_FIGURES = """
SELECT se.metric, se.device, h.hour, h.n, h.total, h.low, h.high, h.last_ts, h.last
FROM rollup_series_hourly h JOIN series se ON se.id = h.series_id ORDER BY 1, 2, 3
"""
_DAILY_FIGURES = """
SELECT s.name, d.day, d.hours, d.it_kwh, d.facility_kwh, d.fp16_pflops, d.coverage_it
FROM rollup_site_daily d JOIN sites s ON s.id = d.site_id ORDER BY 1, 2
"""


def test_the_same_reports_give_the_same_figures_as_plain_postgresql(
        db, settings, plain_db: Database) -> None:
    start = floor_hour(datetime.now(UTC)) - timedelta(hours=4)
    now = floor_hour(datetime.now(UTC)) + timedelta(minutes=30)  # the 4 hours are closed
    figures = []
    for store in (db, plain_db):
        with store.pool.connection() as conn:
            org = make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan")
        app, _ = make_app(settings, store)
        with TestClient(app) as client:
            agent = enrol(client, org)
            # the same readings in the same reports: three hours, then the first one's last
            # quarter again under a later seq (late data the rollup must fold in)
            _post_hours(client, agent, start, 3)
            late = steady_series(int((start + timedelta(minutes=45)).timestamp() * 1000) + 5_000,
                                 60)
            assert agent.post(client, agent.batch(late)).status_code == 200
        result = run_rollups(store, settings, now=now, holder="test")
        assert result is not None
        with store.pool.connection() as conn:
            figures.append([conn.execute(q).fetchall()
                            for q in (_SITE_FIGURES, _SERIES_FIGURES, _DAILY_FIGURES)])
    citus, plain = figures
    assert len(citus[0]) >= 3  # the hours reported
    assert any(row[4] is not None for row in citus[0])  # PUE measured
    assert len(citus[1]) >= 10 * 3  # ten series (steady_series), three hours
    assert citus == plain
