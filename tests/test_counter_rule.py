"""The one counter rule (jinsuan.kernel.counters): a glitch moves no figure, a reset counts from
zero, a physically impossible rise is refused; through the real intake (signed batches) and the
rollups, and in a job's usage record, which read counters by the same rule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from collectors_kit import enrol, make_app, make_org
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from collectors.rollup import run_rollups
from jinsuan.contract.wire import Series
from jinsuan.kernel.counters import LOOKAHEAD, Counted, steps
from scheduler.usage import pool_joules

MW = 1_000_000.0  # watts
STEP_S = 10


def total(points, max_rate=float("inf"), counted=None) -> float:
    return sum(s.increase for s in steps(points, max_rate, counted))


def test_a_reading_of_zero_that_recovers_is_a_glitch_not_a_reset() -> None:
    counted = Counted()
    points = [(0, 1000.0), (10, 1010.0), (20, 0.0), (30, 1030.0), (40, 1040.0)]
    assert total(points, counted=counted) == 40.0  # not 1030 + 10 (the old reset reading)
    assert (counted.glitches, counted.resets) == (1, 0)


def test_a_drop_that_stays_is_a_reset_counted_from_zero() -> None:
    counted = Counted()
    points = [(0, 1000.0), (10, 1010.0), (20, 5.0), (30, 15.0), (40, 25.0), (50, 35.0)]
    assert total(points, counted=counted) == 10 + 5 + 30
    assert (counted.glitches, counted.resets) == (0, 1)


def test_a_rise_faster_than_the_rated_power_is_refused() -> None:
    counted = Counted()
    points = [(0, 1000.0), (10, 1010.0), (20, 9e12), (30, 1030.0)]  # then back: a glitch high
    assert total(points, max_rate=100.0, counted=counted) == 30.0
    assert counted.implausible == 1


monotone = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=2,
                    max_size=40).map(lambda rises: [sum(rises[:i + 1]) for i in range(len(rises))])


@given(counter=monotone, where=st.integers(min_value=1), low=st.floats(0, 1),
       run=st.integers(min_value=1, max_value=LOOKAHEAD))
def test_glitches_that_recover_never_change_the_total(counter, where, low, run) -> None:
    clean = [(10.0 * i, c) for i, c in enumerate(counter)]
    at = 1 + where % (len(clean) - 1)
    if clean[at - 1][1] == 0:
        return  # nothing below zero to glitch to
    glitched = clean[:at] + [(clean[at - 1][0] + 0.1 * (k + 1), clean[at - 1][1] * low * 0.999)
                             for k in range(run)] + clean[at:]
    counted = Counted()
    assert total(glitched, counted=counted) == pytest.approx(total(clean))
    assert counted.resets == 0


# --- end to end: signed batches through the intake, then the rollups ---------------------------

@pytest.fixture
def client(settings, db) -> Iterator[TestClient]:
    app, _ = make_app(settings, db)
    with TestClient(app) as test_client:
        yield test_client


def _counter(meter: str, watts: float, start: datetime, n: int,
             bad: dict[int, float] | None = None) -> Series:
    start_ms = int(start.timestamp() * 1000)
    points = []
    for i in range(n):
        value = 5e12 + watts * STEP_S * i
        points.append((start_ms + i * STEP_S * 1000, (bad or {}).get(i, value)))
    return Series(metric="meter_energy_joules_total", device=meter, points=points)


def test_a_zero_from_the_it_meter_of_a_1_mw_site_moves_no_figure(
        client, conn, db, settings) -> None:
    """The issue's reading: one IT counter reading of 0 (a Modbus gateway's timeout) in an hour
    of a site drawing 1 MW IT and 1.3 MW facility. The hour stays 1,000 kWh and PUE 1.3, and
    says what was skipped."""
    agent = enrol(client, make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan"))
    hour = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(minutes=20)
    n = (100 * 60) // STEP_S  # 20 minutes before to 20 minutes after the hour
    glitch_at = (20 * 60 + 30 * 60) // STEP_S  # half past
    series = [_counter("it", MW, start, n, bad={glitch_at: 0.0}),
              _counter("fac", 1.3 * MW, start, n)]
    for chunk in range(0, n, 60):  # ten minutes a batch, as an agent would send them
        part = [Series(metric=s.metric, device=s.device, points=s.points[chunk:chunk + 60])
                for s in series]
        reply = agent.post(client, agent.batch(part))
        assert reply.status_code == 200, reply.text
    run_rollups(db, settings, now=hour + timedelta(hours=3))
    it_kwh, facility_kwh, pue, quality = conn.execute(
        "SELECT it_kwh, facility_kwh, pue, quality FROM rollup_site_hourly"
        " WHERE site_id = %s AND hour = %s", (agent.site_id, hour)).fetchone()
    assert it_kwh == Decimal("1000.000000")  # not 501,733 kWh
    assert facility_kwh == Decimal("1300.000000")
    assert pue == Decimal("1.300000")
    assert quality == ["it_glitches"]
    before = conn.execute("SELECT quality FROM rollup_site_hourly WHERE site_id = %s"
                          " AND hour = %s", (agent.site_id, hour - timedelta(hours=1))
                          ).fetchone()
    assert before is None or before[0] == []


def test_a_jobs_energy_reads_its_counters_by_the_same_rule(client, conn) -> None:
    """Per-job energy (scheduler.usage.pool_joules) skips the same glitch the rollups skip."""
    agent = enrol(client, make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan"))
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    n = 60
    glitched = []
    for device in ("GPU-0000", "GPU-0001"):
        series = _counter(device, 500.0, start, n, bad={30: 0.0, 31: 0.0})
        glitched.append(Series(metric="accelerator_energy_joules_total", device=device,
                               points=series.points))
    assert agent.post(client, agent.batch(glitched)).status_code == 200
    model = conn.execute("SELECT model FROM accelerators WHERE site_id = %s LIMIT 1",
                         (agent.site_id,)).fetchone()[0]
    end = start + timedelta(seconds=STEP_S * (n - 1))
    joules = pool_joules(conn, agent.site_id, model, start, end)
    assert joules == Decimal(2 * 500.0 * STEP_S * (n - 1))  # two devices at 500 W throughout
