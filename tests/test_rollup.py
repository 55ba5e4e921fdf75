"""Hourly rollups (collectors.rollup) and the background jobs (collectors.jobs), on real PostgreSQL.

Every expected figure is worked out by hand in the comments next to the data; times in the
data are seconds from the start of the hour under test.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from collectors.rollup import clear_dirty, run_rollups

DAY = datetime(2025, 3, 10, tzinfo=UTC)
H10 = DAY + timedelta(hours=10)


def at(hour: int, seconds: float = 0) -> datetime:
    return DAY + timedelta(hours=hour, seconds=seconds)


class Site:
    """A site written straight into the store, as the intake would leave it."""

    def __init__(self, db, conn: psycopg.Connection, name: str, enterprise: str = "Jinneng"):
        self.db, self.conn = db, conn
        ent = conn.execute(
            "INSERT INTO enterprises (name) VALUES (%s) ON CONFLICT (name)"
            " DO UPDATE SET name = EXCLUDED.name RETURNING id", (enterprise,)
        ).fetchone()[0]
        self.id = conn.execute(
            "INSERT INTO sites (enterprise_id, name, city) VALUES (%s, %s, 'Taiyuan') RETURNING id",
            (ent, name),
        ).fetchone()[0]

    def meter(self, meter_id: str, role: str, first_seen: datetime = DAY) -> None:
        self.conn.execute(
            "INSERT INTO meters (site_id, id, role, measures, first_seen, last_seen)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (self.id, meter_id, role, "utility_input" if role == "facility" else "ups_output",
             first_seen, first_seen),
        )

    def accelerator(self, uuid: str, tflops: float | None) -> None:
        self.conn.execute(
            "INSERT INTO accelerators (site_id, uuid, model, vendor, domestic, fp16_tflops,"
            " first_seen, last_seen) VALUES (%s, %s, 'test', 'test', false, %s, %s, %s)",
            (self.id, uuid, tflops, DAY, DAY),
        )

    def rack(self, rack_id: str) -> None:
        self.conn.execute(
            "INSERT INTO racks (site_id, id, first_seen, last_seen) VALUES (%s, %s, %s, %s)",
            (self.id, rack_id, DAY, DAY),
        )

    def points(self, metric: str, device: str, base: datetime, points) -> None:
        """Write ``(seconds after base, value)`` points of one series with COPY."""
        series_id = self.conn.execute(
            "INSERT INTO series (site_id, metric, device) VALUES (%s, %s, %s)"
            " ON CONFLICT (site_id, metric, device) DO UPDATE SET metric = EXCLUDED.metric"
            " RETURNING id",
            (self.id, metric, device),
        ).fetchone()[0]
        rows = [(base + timedelta(seconds=t), series_id, float(v)) for t, v in points]
        self.db.partitions.ensure(self.conn, {ts.date() for ts, _, _ in rows})
        with self.conn.cursor() as cur, cur.copy(
            "COPY samples (ts, series_id, value) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    def mark_dirty(self, *hours: datetime) -> None:
        """What the intake does in the transaction that writes late samples."""
        self.conn.execute(
            "INSERT INTO rollup_dirty (site_id, hour) SELECT %s, unnest(%s::timestamptz[])"
            " ON CONFLICT (site_id, hour) DO UPDATE SET marked_at = clock_timestamp()",
            (self.id, list(hours)),
        )

    def row(self, hour: datetime) -> dict:
        with self.conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            return cur.execute(
                "SELECT * FROM rollup_site_hourly WHERE site_id = %s AND hour = %s",
                (self.id, hour),
            ).fetchone()


def all_rows(conn: psycopg.Connection) -> dict[tuple[int, datetime], dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("SELECT * FROM rollup_site_hourly ORDER BY site_id, hour").fetchall()
    return {(r["site_id"], r["hour"]): r for r in rows}


def roll(db, settings, now: datetime):
    return run_rollups(db, settings, now=now, holder="test")


def kwh(joules: float) -> Decimal:
    return Decimal(joules / 3_600_000).quantize(Decimal("0.000001"))


def regular(start: int, stop: int, step: int, value: float) -> list[tuple[int, float]]:
    return [(t, value) for t in range(start, stop, step)]


# --- one site-hour, by hand ------------------------------------------------------------------


def test_pue_from_counters_with_irregular_sampling_and_gaps(db, conn, settings) -> None:
    site = Site(db, conn, "Taiyuan-1")
    site.meter("F1", "facility")
    site.meter("IT1", "it")
    site.meter("IT2", "it")
    # F1: differences 400 500 400 300 500 1300 300 400 400 300 -> median 400, max gap 1200;
    # the 1300 s interval 1500..2800 is a gap: its energy counts, its time is not covered.
    site.points("meter_energy_joules_total", "F1", H10, [
        (-600, 50_000_000), (-200, 51_040_000), (300, 52_340_000), (700, 53_380_000),
        (1000, 54_160_000), (1500, 55_460_000), (2800, 58_840_000), (3100, 59_620_000),
        (3500, 60_660_000), (3900, 61_700_000), (4200, 62_480_000),
    ])
    # F1 energy in [0, 3600):
    #   -200..300 crosses the start: 1_300_000 J * 300/500 = 780_000
    #   300..3500 is inside: 60_660_000 - 52_340_000   = 8_320_000
    #   3500..3900 crosses the end: 1_040_000 * 100/400 = 260_000
    facility_j = 780_000 + 8_320_000 + 260_000  # 9_360_000
    # covered: 0..1500 (1500 s) + 2800..3600 (800 s) = 2300 s
    facility_covered = 1500 + 800

    # IT1: differences 600 550 650 550 650 550 650 -> median 600, max gap 1800: no gap.
    site.points("meter_energy_joules_total", "IT1", H10, [
        (-500, 5_000_000), (100, 5_600_000), (650, 6_150_000), (1300, 6_800_000),
        (1850, 7_400_000), (2500, 8_000_000), (3050, 8_600_000), (3700, 9_250_000),
    ])
    # Its power readings disagree on purpose: a meter with a counter is measured by the counter.
    site.points("meter_power_watts", "IT1", H10, regular(-600, 4200, 60, 5_000))
    # IT1: 600_000 * 100/600 + (8_600_000 - 5_600_000) + 650_000 * 550/650
    it1_j = 100_000 + 3_000_000 + 550_000
    # IT2: every 300 s, except 1080..2400 (1320 s > 3 * 300): a gap.
    site.points("meter_energy_joules_total", "IT2", H10, [
        (-120, 2_000_000), (180, 2_300_000), (480, 2_600_000), (780, 2_900_000),
        (1080, 3_200_000), (2400, 4_520_000), (2700, 4_820_000), (3000, 5_120_000),
        (3300, 5_420_000), (3600, 5_720_000), (3900, 6_020_000),
    ])
    # IT2: 300_000 * 180/300 + (5_720_000 - 2_300_000); 3600..3900 starts at the hour's end.
    it2_j = 180_000 + 3_420_000
    # covered: 0..1080 (1080 s) + 2400..3600 (1200 s) = 2280 s, less than IT1's 3600 s.
    it_covered = 1080 + 1200

    result = roll(db, settings, now=at(11, 300))
    assert result.ran and result.hours == 2  # the first sample (09:50) opens hour 9

    row = site.row(H10)
    it_j = it1_j + it2_j  # 7_250_000 J
    assert row["facility_kwh"] == kwh(facility_j) == Decimal("2.600000")
    assert row["it_kwh"] == kwh(it_j) == Decimal("2.013889")
    # PUE = 9_360_000 / 7_250_000 = 1.291034...: a ratio of the hour's energies.
    assert row["pue"] == Decimal(facility_j / it_j).quantize(Decimal("0.000001"))
    assert row["coverage_facility"] == pytest.approx(facility_covered / 3600)
    assert row["coverage_it"] == pytest.approx(it_covered / 3600)


def test_pue_from_power_only_meters_with_a_gap(db, conn, settings) -> None:
    site = Site(db, conn, "Datong-1")
    site.meter("F2", "facility")
    site.meter("IT3", "it")
    # IT3: differences 300 300 200 300 1500 300 300 300 300 -> median 300, max gap 900;
    # the 1500 s interval 1000..2500 is a gap and is not bridged.
    site.points("meter_power_watts", "IT3", H10, [
        (-100, 1000), (200, 1200), (500, 1200), (700, 1000), (1000, 1000),
        (2500, 1100), (2800, 1100), (3100, 1300), (3400, 1300), (3700, 1000),
    ])
    # Trapezoids inside [0, 3600):
    #   -100..200: slope 200/300 W/s, p(0) = 1000 + 100*2/3; (p(0) + 1200)/2 * 200
    #   200..500: 1200 * 300 = 360_000      500..700: (1200 + 1000)/2 * 200 = 220_000
    #   700..1000: 1000 * 300 = 300_000     1000..2500: gap
    #   2500..2800: 1100 * 300 = 330_000    2800..3100: (1100 + 1300)/2 * 300 = 360_000
    #   3100..3400: 1300 * 300 = 390_000    3400..3700: p(3600) = 1300 - 200 = 1100;
    #                                      (1300 + 1100)/2 * 200 = 240_000
    p0 = 1000 + 100 * 200 / 300
    it_j = (p0 + 1200) / 2 * 200 + 360_000 + 220_000 + 300_000 + 330_000 + 360_000 \
        + 390_000 + 240_000  # 2_426_666.67 J
    it_covered = 200 + 300 + 200 + 300 + 300 + 300 + 300 + 200  # 2100 s
    # F2: differences 450 350 400 350 450 400 400 400 400 400 -> median 400, max gap 1200.
    site.points("meter_power_watts", "F2", H10, [
        (-200, 1500), (250, 1500), (600, 1600), (1000, 1600), (1350, 1500), (1800, 1500),
        (2200, 1400), (2600, 1400), (3000, 1500), (3400, 1500), (3800, 1500),
    ])
    #   0..250: 1500 * 250 = 375_000            250..600: (1500 + 1600)/2 * 350 = 542_500
    #   600..1000: 1600 * 400 = 640_000         1000..1350: 542_500
    #   1350..1800: 1500 * 450 = 675_000        1800..2200: (1500 + 1400)/2 * 400 = 580_000
    #   2200..2600: 1400 * 400 = 560_000        2600..3000: 580_000
    #   3000..3400: 1500 * 400 = 600_000        3400..3600: 1500 * 200 = 300_000
    facility_j = 375_000 + 542_500 + 640_000 + 542_500 + 675_000 + 580_000 + 560_000 \
        + 580_000 + 600_000 + 300_000  # 5_395_000 J

    roll(db, settings, now=at(11, 300))

    row = site.row(H10)
    assert row["it_kwh"] == kwh(it_j) == Decimal("0.674074")
    assert row["facility_kwh"] == kwh(facility_j) == Decimal("1.498611")
    assert row["pue"] == Decimal(facility_j / it_j).quantize(Decimal("0.000001"))
    # The IT gap shows: the PUE above is flagged by the IT coverage, not silently trusted.
    assert row["coverage_it"] == pytest.approx(it_covered / 3600)
    assert row["coverage_facility"] == 1.0


def test_a_counter_reset_inside_the_hour_is_not_negative_energy(db, conn, settings) -> None:
    site = Site(db, conn, "Jinzhong-1")
    site.meter("IT4", "it")
    # Every 600 s; the meter restarted between 900 and 1500 and counts from zero again.
    site.points("meter_energy_joules_total", "IT4", H10, [
        (-300, 1_000_000), (300, 1_600_000), (900, 2_200_000), (1500, 200_000),
        (2100, 800_000), (2700, 1_400_000), (3300, 2_000_000), (3900, 2_600_000),
    ])
    # -300..300: 600_000 * 300/600 = 300_000;  300..900: 600_000
    # 900..1500: reset, the new reading counts from zero: 200_000
    # 1500..3300: 3 * 600_000;  3300..3900: 600_000 * 300/600 = 300_000
    it_j = 300_000 + 600_000 + 200_000 + 3 * 600_000 + 300_000  # 3_200_000 J

    roll(db, settings, now=at(11, 300))

    row = site.row(H10)
    assert row["it_kwh"] == kwh(it_j) == Decimal("0.888889")
    assert row["coverage_it"] == 1.0
    # No facility meter: no facility energy, no PUE, and the missing role shows as coverage 0.
    assert row["facility_kwh"] is None and row["pue"] is None
    assert row["coverage_facility"] == 0.0


def test_connected_compute_racks_and_utilisation(db, conn, settings) -> None:
    site = Site(db, conn, "Yangquan-1")
    site.accelerator("GPU-A", 989.5)
    site.accelerator("GPU-B", 148.0)
    site.accelerator("GPU-C", 362.0)  # listed, never reports: an honest coverage gap
    for rack in ("R1", "R2"):
        site.rack(rack)
    # A: up every 60 s all hour.  B: up until 1800, down from 1860 on.
    site.points("accelerator_up", "GPU-A", H10, regular(-60, 3660 + 1, 60, 1))
    site.points("accelerator_up", "GPU-B", H10,
                regular(-60, 1801, 60, 1) + regular(1860, 3661, 60, 0))
    # B's up-time: 0..1800 at 1 (1800 s), 1800..1860 falls 1 -> 0 (trapezoid: 30 s), then 0.
    b_up = (1800 + 30) / 3600
    pflops = (989.5 * 1.0 + 148.0 * b_up) / 1000  # C contributes nothing
    # Utilisation: A 0.5 all hour (3600 s), B 0.9 over 0..1800 only (1800 s covered).
    site.points("accelerator_utilization_ratio", "GPU-A", H10, regular(-60, 3661, 60, 0.5))
    site.points("accelerator_utilization_ratio", "GPU-B", H10, regular(-60, 1801, 60, 0.9))
    utilisation = (0.5 * 3600 + 0.9 * 1800) / (3600 + 1800)  # 0.6333: per accelerator-second
    # The inventory says 12 racks, then 13 during the hour; 14 only after it (in the margin).
    site.points("site_racks", "site", H10, [(-30, 12), (1200, 12), (2400, 13), (3660, 14)])

    roll(db, settings, now=at(11, 300))

    row = site.row(H10)
    assert row["fp16_pflops"] == pytest.approx(pflops)
    assert row["accelerators"] == 2
    assert row["racks"] == 13
    assert row["utilization"] == pytest.approx(utilisation)
    # Covered fractions: A 1, B 1 (down is still reported), C 0 -> mean 2/3.
    assert row["coverage_accelerators"] == pytest.approx(2 / 3)
    # No meters at all: energy absent, coverage 0.
    assert row["it_kwh"] is None and row["coverage_it"] == 0.0


# --- the incremental run ---------------------------------------------------------------------


def test_watermark_starts_at_first_sample_and_waits_for_grace(db, conn, settings) -> None:
    site = Site(db, conn, "Changzhi-1")
    site.meter("IT5", "it")
    site.rack("R1")
    site.points("meter_power_watts", "IT5", H10, regular(600, 3600, 60, 1000))

    # 13:01 minus 120 s of grace is 12:59: hours 10 and 11 are closed, 12 is not.
    first = roll(db, settings, now=at(13, 60))
    assert first.hours == 2
    assert set(all_rows(conn)) == {(site.id, at(10)), (site.id, at(11))}
    quiet = site.row(at(11))  # no samples at all: an honest gap, not a missing row
    assert quiet["coverage_it"] == 0.0 and quiet["it_kwh"] is None
    assert quiet["racks"] == 1  # from the inventory, as no site_racks reading exists
    # 10:10..10:59 at 1000 W: 49 intervals of 60 s = 2940 s -> 2_940_000 J
    assert site.row(at(10))["it_kwh"] == kwh(1000 * 2940)

    second = roll(db, settings, now=at(13, 180))
    assert second.hours == 1
    watermark = conn.execute(
        "SELECT watermark FROM rollup_state WHERE site_id = %s", (site.id,)
    ).fetchone()[0]
    assert watermark == at(13)
    runs = conn.execute("SELECT holder, hours, finished_at FROM rollup_runs ORDER BY id").fetchall()
    assert [(h, n) for h, n, _ in runs] == [("test", 2), ("test", 1)]
    assert all(finished is not None for _, _, finished in runs)


def test_late_data_recomputes_exactly_the_affected_hours(db, conn, settings) -> None:
    site = Site(db, conn, "Linfen-1")
    other = Site(db, conn, "Linfen-2")
    for s in (site, other):
        s.meter("IT", "it")
        s.meter("F", "facility")
    # Every 60 s from 10:00 to 17:00, with two holes at `site`: 12:20..12:40 inside hour 12,
    # and 13:55..14:05 across the boundary of hours 13 and 14. Both are gaps (> 3 * 60 s).
    def holes(t: int) -> bool:
        return (2 * 3600 + 1200 < t < 2 * 3600 + 2400) or (3 * 3600 + 3300 < t < 4 * 3600 + 300)

    span = range(0, 7 * 3600 + 1, 60)
    site.points("meter_power_watts", "IT", H10, [(t, 1000) for t in span if not holes(t)])
    site.points("meter_power_watts", "F", H10, [(t, 1300) for t in span])
    other.points("meter_power_watts", "IT", H10, [(t, 500) for t in span])
    other.points("meter_power_watts", "F", H10, [(t, 700) for t in span])
    roll(db, settings, now=at(17, 300))
    before = all_rows(conn)
    assert len(before) == 2 * 7  # hours 10..16 at both sites
    assert before[(site.id, at(12))]["coverage_it"] < 1.0

    # Late samples fill the hole inside hour 12; the intake marks hour 12 dirty.
    site.points("meter_power_watts", "IT", H10,
                [(t, 1000) for t in span if 2 * 3600 + 1200 < t < 2 * 3600 + 2400])
    site.mark_dirty(at(12))
    rerun = roll(db, settings, now=at(17, 300))
    after = all_rows(conn)
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {(site.id, at(12))}
    assert after[(site.id, at(12))]["coverage_it"] == 1.0
    assert rerun.changed == 1

    # Late samples fill the hole across 14:00; the intake marks both hours it touched.
    site.points("meter_power_watts", "IT", H10,
                [(t, 1000) for t in span if 3 * 3600 + 3300 < t < 4 * 3600 + 300])
    site.mark_dirty(at(13), at(14))
    roll(db, settings, now=at(17, 300))
    final = all_rows(conn)
    changed = {key for key in after if after[key] != final[key]}
    assert changed == {(site.id, at(13)), (site.id, at(14))}
    assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone()[0] == 0


def test_boundary_sample_of_a_later_hour_updates_the_hour_before(db, conn, settings) -> None:
    site = Site(db, conn, "Yuncheng-1")
    site.meter("IT", "it")
    # Hour 10 has data up to 10:59; the reading at 11:00 is late and marks only hour 11.
    site.points("meter_power_watts", "IT", H10, regular(0, 3600, 60, 1000))
    roll(db, settings, now=at(12, 300))
    assert site.row(at(10))["coverage_it"] == pytest.approx(3540 / 3600)

    site.points("meter_power_watts", "IT", H10, [(3600, 1000)])
    site.mark_dirty(at(11))
    roll(db, settings, now=at(12, 300))
    # The 10:59..11:00 interval now exists: hour 10 is complete.
    assert site.row(at(10))["coverage_it"] == 1.0


def test_rerun_is_idempotent(db, conn, settings) -> None:
    site = Site(db, conn, "Xinzhou-1")
    site.meter("IT", "it")
    site.meter("F", "facility")
    site.accelerator("GPU-A", 989.5)
    site.points("meter_energy_joules_total", "IT", H10,
                [(t, 1_000 * (t + 900)) for t in range(-900, 4 * 3600, 37)])
    site.points("meter_power_watts", "F", H10, regular(-900, 4 * 3600, 41, 1250.5))
    site.points("accelerator_up", "GPU-A", H10, regular(-900, 4 * 3600, 30, 1))
    first = roll(db, settings, now=at(14, 300))
    assert first.hours == 5  # hours 9 (first sample 09:45) to 13
    before = all_rows(conn)

    nothing = roll(db, settings, now=at(14, 300))
    assert nothing.ran and nothing.hours == 0
    # Force a full recomputation: every figure comes out the same, so no row is rewritten
    # (computed_at included).
    site.mark_dirty(*(at(h) for h in range(9, 14)))
    again = roll(db, settings, now=at(14, 300))
    assert again.hours == 5 and again.changed == 0
    assert all_rows(conn) == before


def test_hours_past_raw_retention_are_not_recomputed(db, conn, settings) -> None:
    site = Site(db, conn, "Jincheng-2")
    site.meter("IT", "it")
    site.points("meter_power_watts", "IT", H10, regular(-60, 3661, 60, 1000))
    roll(db, settings, now=at(11, 300))
    stored = site.row(H10)
    assert stored["it_kwh"] == Decimal("1")

    # On 12 March at 01:00 with one day of retention, only samples from 11 March on are kept:
    # a late sample for 10 March must not make the rollup recompute hour 10 from what is left.
    site.points("meter_power_watts", "IT", H10, [(1830, 5000)])
    site.mark_dirty(H10)
    short = settings.model_copy(update={"retention_days": 1})
    later = run_rollups(db, short, now=at(2 * 24 + 1), holder="test")
    # The watermark still advances over the closed hours 11:00 (10 March) .. 23:00 (11 March).
    assert later.ran and later.hours == 2 * 24 - 11
    assert site.row(H10) == stored
    assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone()[0] == 0


def test_a_stopped_run_keeps_its_place(db, conn, settings) -> None:
    site = Site(db, conn, "Jinzhong-2")
    site.meter("IT", "it")
    site.points("meter_power_watts", "IT", H10, regular(0, 3600, 60, 1000))
    stop = threading.Event()
    stop.set()  # shutdown began before the first hour
    halted = run_rollups(db, settings, now=at(14, 300), stop=stop)
    assert halted.ran and halted.stopped and halted.hours == 0
    resumed = roll(db, settings, now=at(14, 300))
    assert not resumed.stopped and resumed.hours == 4  # 10..13, from the saved watermark


def test_a_dirty_mark_renewed_during_a_run_stays(db, conn, settings) -> None:
    site = Site(db, conn, "Shuozhou-1")
    site.mark_dirty(at(10))
    seen = conn.execute("SELECT marked_at FROM rollup_dirty").fetchone()[0]
    site.mark_dirty(at(10))  # new late data arrives while the run computes
    assert not clear_dirty(conn, site.id, at(10), seen)
    renewed = conn.execute("SELECT marked_at FROM rollup_dirty").fetchone()[0]
    assert renewed != seen
    assert clear_dirty(conn, site.id, at(10), renewed)
    assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone()[0] == 0


def test_enterprise_view_sums_energy_and_recomputes_pue(db, conn, settings) -> None:
    big, small = Site(db, conn, "Lvliang-1"), Site(db, conn, "Lvliang-2")
    elsewhere = Site(db, conn, "Jincheng-1", enterprise="Other")
    figures = {big: (1000, 1200), small: (100, 200), elsewhere: (10, 50)}  # IT W, facility W
    for s, (it_w, facility_w) in figures.items():
        s.meter("IT", "it")
        s.meter("F", "facility")
        s.points("meter_power_watts", "IT", H10, regular(-60, 3661, 60, it_w))
        s.points("meter_power_watts", "F", H10, regular(-60, 3661, 60, facility_w))
    roll(db, settings, now=at(11, 300))
    # big: 1 kWh IT, 1.2 kWh facility (PUE 1.2); small: 0.1 and 0.2 kWh (PUE 2.0).
    # Enterprise: 1.4 / 1.1 = 1.2727, not the mean of the two PUEs (1.6).
    ent = conn.execute("SELECT enterprise_id FROM sites WHERE id = %s", (big.id,)).fetchone()[0]
    it_kwh, facility_kwh, pue, sites = conn.execute(
        "SELECT it_kwh, facility_kwh, pue, sites FROM rollup_enterprise_hourly"
        " WHERE enterprise_id = %s AND hour = %s", (ent, H10),
    ).fetchone()
    assert (it_kwh, facility_kwh, sites) == (Decimal("1.1"), Decimal("1.4"), 2)
    assert math.isclose(pue, 1.4 / 1.1, rel_tol=1e-12)
    assert big.row(H10)["pue"] == Decimal("1.2") and small.row(H10)["pue"] == Decimal("2")


# --- background jobs -------------------------------------------------------------------------


def test_background_jobs_roll_up_and_keep_partitions(db, conn, settings) -> None:
    from collectors.jobs import start_background_jobs
    from jinsuan.kernel.platform import Platform
    from jinsuan.kernel.store.partitions import partition_name

    today = datetime.now(UTC).date()
    # On TimescaleDB the hypertable makes its own chunks; only plain tables get partitions.
    wanted = set() if db.timescale else {
        partition_name(today + timedelta(days=d)) for d in range(3)
    }
    jobs = start_background_jobs(Platform(settings.model_copy(update={"rollup_every_s": 1}), db))
    try:
        assert {job.id for job in jobs.get_jobs()} == {
            "rollup", "partitions", "evidence-recompress", "ledger-checkpoint"}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = conn.execute(
                "SELECT count(*) FROM rollup_runs WHERE finished_at IS NOT NULL"
            ).fetchone()[0]
            present = {name for (name,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relname = ANY(%s)", (list(wanted),)
            ).fetchall()}
            if runs >= 2 and present == wanted:
                break
            time.sleep(0.05)
        assert runs >= 2, "the rollup job did not run twice within 30 s"
        assert present == wanted
    finally:
        jobs.shutdown(wait=True)
    assert not jobs.running


def test_retention_drops_old_raw_samples_and_a_lower_setting_takes_effect(db, conn) -> None:
    """Plain partitions and TimescaleDB chunks alike: what is older than the retention goes,
    and lowering the retention later drops more at once (no policy left at its old value)."""
    site = Site(db, conn, "Retention-1")
    site.meter("IT", "it")
    today = datetime.now(UTC).date()
    for days_ago in (10, 4, 0):
        day = datetime.combine(today - timedelta(days=days_ago), datetime.min.time(), UTC)
        site.points("meter_power_watts", "IT", day + timedelta(hours=1), [(0, 100.0)])

    def kept() -> list[int]:
        return sorted((today - ts.date()).days for (ts,) in conn.execute(
            "SELECT ts FROM samples").fetchall())

    assert kept() == [0, 4, 10]
    db.partitions.apply_retention(conn, 7, today)
    assert kept() == [0, 4]
    db.partitions.apply_retention(conn, 2, today)
    assert kept() == [0]


def test_enterprise_pue_leaves_out_site_hours_missing_one_energy(db, conn, settings) -> None:
    whole, half = Site(db, conn, "Xinzhou-1"), Site(db, conn, "Xinzhou-2")
    for s in (whole, half):
        s.meter("IT", "it")
        s.meter("F", "facility")
    whole.points("meter_power_watts", "IT", H10, regular(-60, 3661, 60, 1000))
    whole.points("meter_power_watts", "F", H10, regular(-60, 3661, 60, 1250))
    half.points("meter_power_watts", "F", H10, regular(-60, 3661, 60, 900))  # IT meter silent
    roll(db, settings, now=at(11, 300))
    assert half.row(H10)["it_kwh"] is None and half.row(H10)["pue"] is None
    ent = conn.execute("SELECT enterprise_id FROM sites WHERE id = %s", (whole.id,)).fetchone()[0]
    it_kwh, facility_kwh, pue = conn.execute(
        "SELECT it_kwh, facility_kwh, pue FROM rollup_enterprise_hourly"
        " WHERE enterprise_id = %s AND hour = %s", (ent, H10)).fetchone()
    # Energy totals keep every measurement: 1 kWh IT; 1.25 + 0.9 kWh facility. The PUE uses
    # only the hour measured on both sides: 1.25 / 1 (with the half-metered site, 2.15 / 1).
    assert (it_kwh, facility_kwh) == (Decimal("1"), Decimal("2.15"))
    assert pue == Decimal("1.25")
