"""What is TimescaleDB's own in the store: the samples hypertable compressed by series after a
week, rows written into a compressed chunk, and retention dropping whole chunks, the retention
period lowered included. Run with JINSUAN_TEST_FLAVOUR=timescale (.ci/run does, on the vendored
TimescaleDB); on plain PostgreSQL tests/test_rollup.py covers the partitions' upkeep instead.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from conftest import FLAVOUR

pytestmark = pytest.mark.skipif(FLAVOUR != "timescale",
                                reason="TimescaleDB's own: JINSUAN_TEST_FLAVOUR=timescale")

TODAY = date(2026, 12, 4)


def _series(conn: psycopg.Connection) -> int:
    site = conn.execute("INSERT INTO enterprises (name) VALUES ('e') RETURNING id").fetchone()[0]
    site = conn.execute("INSERT INTO sites (enterprise_id, name, city) VALUES (%s, 's', 'c')"
                        " RETURNING id", (site,)).fetchone()[0]
    return conn.execute("INSERT INTO series (site_id, metric, device)"
                        " VALUES (%s, 'meter_power_watts', 'm') RETURNING id",
                        (site,)).fetchone()[0]


def _chunks(conn: psycopg.Connection) -> list[tuple[datetime, bool]]:
    return [(start, compressed) for start, compressed in conn.execute(
        "SELECT range_start, is_compressed FROM timescaledb_information.chunks"
        " WHERE hypertable_name = 'samples' ORDER BY range_start")]


def test_samples_are_compressed_by_series_and_written_into_when_compressed(db, conn) -> None:
    assert db.timescale
    settings = dict(conn.execute(
        "SELECT attname, segmentby_column_index IS NOT NULL"
        " FROM timescaledb_information.compression_settings"
        " WHERE hypertable_name = 'samples'").fetchall())
    assert settings["series_id"] is True
    policy = conn.execute(
        "SELECT config->>'compress_after' FROM timescaledb_information.jobs"
        " WHERE hypertable_name = 'samples' AND proc_name = 'policy_compression'").fetchone()
    assert policy is not None and policy[0] == "7 days"

    series = _series(conn)
    old = datetime.combine(TODAY - timedelta(days=10), datetime.min.time(), UTC)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO samples (ts, series_id, value) VALUES (%s, %s, %s)",
                        [(old + timedelta(minutes=i), series, float(i)) for i in range(60)])
    conn.execute("SELECT compress_chunk(c) FROM show_chunks('samples') c")
    assert [compressed for _, compressed in _chunks(conn)] == [True]
    # a late sample for the compressed day is written into it, and read back with the others
    conn.execute("INSERT INTO samples (ts, series_id, value) VALUES (%s, %s, 1000)",
                 (old + timedelta(hours=2), series))
    count, total = conn.execute(
        "SELECT count(*), sum(value) FROM samples WHERE series_id = %s", (series,)).fetchone()
    assert (count, total) == (61, sum(range(60)) + 1000)


def test_retention_drops_whole_days_and_a_lowered_period_takes_effect(db, conn) -> None:
    series = _series(conn)
    for days_ago in (40, 20, 2):
        at = datetime.combine(TODAY - timedelta(days=days_ago), datetime.min.time(), UTC)
        conn.execute("INSERT INTO samples (ts, series_id, value) VALUES (%s, %s, %s)",
                     (at + timedelta(hours=12), series, float(days_ago)))
    db.partitions.apply_retention(conn, 30, TODAY)
    kept = [r[0] for r in conn.execute("SELECT value FROM samples ORDER BY ts")]
    assert kept == [20.0, 2.0]
    db.partitions.apply_retention(conn, 10, TODAY)  # the operator lowers the period
    assert [r[0] for r in conn.execute("SELECT value FROM samples")] == [2.0]
    assert len(_chunks(conn)) == 1
