"""Coverage that means what it says: the gap limit of a series is a multiple of the interval its
agent declares (batches' ``interval_s``), not an estimate from the neighbouring readings, so a
meter read steadily every 3 minutes is fully covered, and more data never lowers coverage."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from collectors_kit import enrol, make_app, make_org
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from collectors.energy import GAP_INTERVALS, integrate_power
from collectors.rollup import run_rollups
from jinsuan.contract.wire import Series


@pytest.fixture
def client(settings, db) -> Iterator[TestClient]:
    app, _ = make_app(settings, db)
    with TestClient(app) as test_client:
        yield test_client


def _power(meter: str, times: list[datetime], watts: float) -> Series:
    return Series(metric="meter_power_watts", device=meter,
                  points=[(int(t.timestamp() * 1000), watts) for t in times])


def _post(client, agent, series: list[Series], interval_s: float) -> None:
    batch = agent.batch(series).model_copy(update={"interval_s": interval_s})
    assert agent.post(client, batch).status_code == 200


def _coverage(conn, site_id: int, hour: datetime) -> tuple[float, float]:
    return conn.execute("SELECT coverage_it, coverage_facility FROM rollup_site_hourly"
                        " WHERE site_id = %s AND hour = %s", (site_id, hour)).fetchone()


def test_a_steady_three_minute_meter_is_covered_and_a_late_batch_only_adds(
        client, conn, db, settings) -> None:
    agent = enrol(client, make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan"))
    hour = (datetime.now(UTC) - timedelta(hours=4)).replace(minute=0, second=0, microsecond=0)
    # The facility meter was read every 10 s until the hour, then, its agent reconfigured,
    # every 3 minutes as it declares: the estimate from the neighbours (10 s) called the whole
    # hour a gap. The IT meter is read every 10 s, with a 12-minute hole (a link down).
    before = [hour - timedelta(minutes=15) + timedelta(seconds=10 * i) for i in range(90)]
    facility = [hour + timedelta(minutes=3 * i) for i in range(26)]
    it = [hour - timedelta(minutes=15) + timedelta(seconds=10 * i) for i in range(540)]
    hole = (hour + timedelta(minutes=24), hour + timedelta(minutes=36))
    early = [t for t in it if not hole[0] <= t < hole[1]]
    _post(client, agent, [_power("fac", before, 1.3e6)], interval_s=10)
    _post(client, agent, [_power("fac", facility, 1.3e6)], interval_s=180)
    _post(client, agent, [_power("it", early, 1.0e6)], interval_s=10)
    run_rollups(db, settings, now=hour + timedelta(hours=3))
    it_before, facility_cov = _coverage(conn, agent.site_id, hour)
    assert facility_cov == pytest.approx(1.0)  # not 0.0: 3 min is its declared interval
    assert it_before == pytest.approx(48 / 60, abs=0.01)  # the hole, and only the hole
    # The link comes back and the agent sends the hole late: coverage may only rise.
    _post(client, agent, [_power("it", [t for t in it if hole[0] <= t < hole[1]], 1.0e6)],
          interval_s=10)
    run_rollups(db, settings, now=hour + timedelta(hours=3, minutes=1))
    it_after, _ = _coverage(conn, agent.site_id, hour)
    assert it_after == pytest.approx(1.0)


@given(times=st.lists(st.floats(min_value=0, max_value=3600), min_size=2, max_size=60,
                      unique=True),
       more=st.lists(st.floats(min_value=0, max_value=3600), max_size=30),
       interval=st.sampled_from([10.0, 47.0, 180.0]))
def test_more_data_never_lowers_coverage(times, more, interval) -> None:
    gap = GAP_INTERVALS * interval

    def covered(ts: list[float]) -> float:
        points = [(t, 100.0) for t in sorted(set(ts))]
        return integrate_power(points, 0.0, 3600.0, gap).covered_s

    assert covered(times + more) >= covered(times) - 1e-6
