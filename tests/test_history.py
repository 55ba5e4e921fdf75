"""Simulated history sent through the intake: what ``jinsuan demo --history-days`` does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from collectors.rollup import run_rollups
from jinsuan.demo.history import send_history
from jinsuan.kernel.sites import create_site
from tests.collectors_kit import make_app

STEP = timedelta(minutes=15)


def _simulator() -> SimulatedSite:
    return SimulatedSite(SimulatedSiteConfig(seed=7, fleet={"NVIDIA H20": 2},
                                             meter_gap_probability=0.0), name="history-site")


def _points_per_reading() -> int:
    return len(_simulator().read(datetime(2026, 1, 1, tzinfo=UTC)).points)


def test_history_is_stored_once_and_stops_where_stored_data_begins(conn, settings, db):
    site = create_site(conn, enterprise="晋能智算", name="history-site", city="太原")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)
    app, _ = make_app(settings, db)
    with TestClient(app) as client:
        # What a live agent already stored: the hour from start + 2 h.
        live = send_history(conn, client, site.id, _simulator(), start=start + timedelta(hours=2),
                            end=start + timedelta(hours=3), step=STEP)
        assert live == 1  # four readings, one report
        # History asked for up to start + 4 h stops at the first stored sample.
        sent = send_history(conn, client, site.id, _simulator(), start=start,
                            end=start + timedelta(hours=4), step=STEP)
        assert sent == 2  # eight readings: six in the first report, two in the second
        again = send_history(conn, client, site.id, _simulator(), start=start,
                             end=start + timedelta(hours=4), step=STEP)
        assert again == 0

    samples = conn.execute(
        "SELECT count(*), count(DISTINCT (x.series_id, x.ts)), min(x.ts), max(x.ts)"
        " FROM samples x JOIN series s ON s.id = x.series_id WHERE s.site_id = %s",
        (site.id,)).fetchone()
    assert samples[0] == samples[1] == 12 * _points_per_reading()  # no moment stored twice
    assert (samples[2], samples[3]) == (start, start + timedelta(hours=2, minutes=45))
    agents = conn.execute("SELECT hostname, last_seq FROM agents WHERE site_id = %s"
                          " ORDER BY enrolled_at", (site.id,)).fetchall()
    assert agents == [("history-site-history", 1), ("history-site-history", 2)]

    run_rollups(db, settings)
    hours = conn.execute(
        "SELECT hour, pue, fp16_pflops FROM rollup_site_hourly WHERE site_id = %s"
        " AND hour >= %s AND hour < %s ORDER BY hour",
        (site.id, start, start + timedelta(hours=3))).fetchall()
    assert [h[0] for h in hours] == [start + timedelta(hours=k) for k in range(3)]
    assert all(1.05 < h[1] < 1.7 for h in hours), hours
    assert all(h[2] > 0 for h in hours)
