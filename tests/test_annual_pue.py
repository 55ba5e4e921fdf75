"""PUE over a period, defined once in the store (migration 0013), and ``GET /v1/pue/annual``.

The rule every reader shares: Σ facility kWh ÷ Σ IT kWh over the site-hours in which both were
measured (ISO/IEC 30134-2), never a mean of hourly ratios; a data centre's over its sites'. The
API answers per data centre (measure 4's unit) or per site over the Asia/Shanghai year; the
long-range reader (``pue_site_range``, what the dashboards' year-to-date figures read) gives the
same figures from the daily rollup as from the hours; measure 4's own calculation
(``rewards.pue``, on its frozen copy of the hourly rows) and the scheduler agree with it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from collectors_kit import bearer, make_app, make_org
from fastapi.testclient import TestClient

from collectors.annual import By, annual
from dashboards import grafana
from jinsuan.contract.policytime import year_bounds
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.sites import create_site
from rewards.policy import POLICIES, load
from rewards.pue import assess_pue
from rewards.store import read_inputs
from scheduler.config import SchedulerConfig
from scheduler.snapshot import load_sites

H = timedelta(hours=1)


def _hour(conn, site_id: int, hour: datetime, it, facility, coverage: float = 1.0, *,
          coverage_facility: float | None = None, quality: tuple[str, ...] = ()) -> None:
    conn.execute(
        "INSERT INTO rollup_site_hourly (site_id, hour, it_kwh, facility_kwh, pue, fp16_pflops,"
        " accelerators, racks, coverage_it, coverage_facility, coverage_accelerators, quality)"
        " VALUES (%s, %s, %s, %s, NULL, 0, 0, 0, %s, %s, 1, %s)",
        (site_id, hour, it, facility, coverage,
         coverage if coverage_facility is None else coverage_facility, list(quality)),
    )
    # The daily site rollup, as the hourly rollup keeps it for every hour it writes.
    conn.execute("SELECT roll_hour_for_dashboards(%s, %s)", (site_id, hour))


@pytest.fixture
def client(settings, db):
    app, _ = make_app(settings, db)
    with TestClient(app) as test_client:
        yield test_client


def test_annual_pue_is_the_energy_ratio_of_the_shanghai_year(client, conn):
    yangquan = make_org(conn, "阳泉云算", "yangquan-1", "阳泉")
    datong = make_org(conn, "云冈数据", "datong-1", "大同")
    site = yangquan.site.id
    conn.execute("INSERT INTO meters (site_id, id, role, measures, first_seen, last_seen)"
                 " VALUES (%s, 'ups', 'it', 'ups_output', now(), now())", (site,))
    # 2025-12-31 23:00 in Shanghai: still 2025, so not counted in 2026.
    _hour(conn, site, datetime(2025, 12, 31, 15, tzinfo=UTC), 100, 200)
    # 2026-01-01 00:00 in Shanghai and later: counted.
    _hour(conn, site, datetime(2025, 12, 31, 16, tzinfo=UTC), 10, 12)
    _hour(conn, site, datetime(2026, 3, 1, 4, tzinfo=UTC), 30, 45, coverage=0.5)
    _hour(conn, site, datetime(2026, 7, 1, 4, tzinfo=UTC), None, 5)  # IT meter silent
    # 2 kWh IT, 2.000001 kWh facility: 1.0000005, rounded half to even like the hourly rows.
    _hour(conn, datong.site.id, datetime(2026, 5, 1, tzinfo=UTC), 2, Decimal("2.000001"))
    bureau = create_key(conn, Role.BUREAU)

    answer = client.get("/v1/pue/annual", params={"year": 2026, "by": "site"},
                        headers=bearer(bureau))
    assert answer.status_code == 200, answer.text
    by_site = {row["site"]: row for row in answer.json()}
    row = by_site["yangquan-1"]
    # (12 + 45) / (10 + 30) = 1.425: the silent-IT hour and the 2025 hour are left out, and it
    # is not the mean of the hourly ratios 1.2 and 1.5 (1.35).
    assert Decimal(row["pue"]) == Decimal("1.425")
    assert Decimal(row["it_kwh"]) == 40 and Decimal(row["facility_kwh"]) == 57
    assert (row["hours_measured"], row["hours_with_gaps"]) == (2, 1)
    assert row["hours_in_year"] == 8760 and row["it_metered_at"] == ["ups_output"]
    assert (row["by"], row["data_centre"], row["sites"]) == ("site", "yangquan-1", ["yangquan-1"])
    # Six decimals, half to even (ROUND_HALF_EVEN, collectors/rollup.py): 1.000000, where
    # PostgreSQL's round() would give 1.000001.
    assert by_site["datong-1"]["pue"] == "1.000000"

    mine = client.get("/v1/pue/annual", params={"year": 2026},
                      headers=bearer(datong.operator_key)).json()
    assert [(r["by"], r["data_centre"]) for r in mine] == [("data_centre", "datong-1")]
    assert client.get("/v1/pue/annual", params={"year": 1999},
                      headers=bearer(bureau)).status_code == 422
    assert client.get("/v1/pue/annual", params={"year": 2026, "by": "city"},
                      headers=bearer(bureau)).status_code == 422


# A data centre of one enterprise in two halls metered apart, in the Shanghai year 2026.
T1, T2, T3, T4 = (datetime(2026, 3, 1, 4, tzinfo=UTC) + n * H for n in range(4))


def _split_centre(conn) -> tuple[int, int]:
    hall_a = create_site(conn, enterprise="晋能算力", name="taiyuan-a", city="太原",
                         data_centre="太原一号").id
    hall_b = create_site(conn, enterprise="晋能算力", name="taiyuan-b", city="太原",
                         data_centre="太原一号").id
    # Hall A: 1.2 and 1.3 (that hour 90% covered), then its facility meter is silent.
    _hour(conn, hall_a, T1, 100, 120)
    _hour(conn, hall_a, T2, 100, 130, coverage=0.9)
    _hour(conn, hall_a, T3, 50, None, coverage_facility=0.0)
    # Hall B: 1.5, 1.3, 1.5; the counter rule corrected two of its hours.
    _hour(conn, hall_b, T1, 300, 450, quality=("it_glitches",))
    _hour(conn, hall_b, T3, 200, 260)
    _hour(conn, hall_b, T4, 100, 150, quality=("facility_resets", "it_glitches"))
    return hall_a, hall_b


def test_a_data_centre_split_across_two_sites_is_the_ratio_of_its_summed_energy(client, conn):
    _split_centre(conn)
    bureau = bearer(create_key(conn, Role.BUREAU))

    sites = {r["site"]: r for r in client.get(
        "/v1/pue/annual", params={"year": 2026, "by": "site"}, headers=bureau).json()}
    a, b = sites["taiyuan-a"], sites["taiyuan-b"]
    # Hall A: (120 + 130) / (100 + 100) = 1.25; T3 (IT 50 kWh, no facility energy) is in
    # neither sum, else it would read 250 / 250 = 1.0.
    assert (Decimal(a["pue"]), Decimal(a["it_kwh"]), Decimal(a["facility_kwh"])) == (
        Decimal("1.25"), 200, 250)
    assert (a["hours_measured"], a["hours_with_gaps"], a["quality"]) == (2, 1, {})
    # Hall B: (450 + 260 + 150) / (300 + 200 + 100) = 860 / 600 = 1.4333333… -> 1.433333.
    assert b["pue"] == "1.433333"
    assert (b["hours_measured"], b["hours_with_gaps"]) == (3, 0)
    assert b["quality"] == {"facility_resets": 1, "it_glitches": 2}

    (centre,) = client.get("/v1/pue/annual", params={"year": 2026}, headers=bureau).json()
    assert (centre["by"], centre["data_centre"], centre["enterprise"]) == (
        "data_centre", "太原一号", "晋能算力")
    assert (centre["site"], centre["site_id"], centre["sites"], centre["city"]) == (
        None, None, ["taiyuan-a", "taiyuan-b"], "太原")
    # The centre: (250 + 860) / (200 + 600) = 1110 / 800 = 1.3875. Not the mean of the halls'
    # PUEs ((1.25 + 1.433333) / 2 = 1.341667), nor of the hourly ratios (1.36), nor with hall
    # A's facility-less hour in the IT sum (1110 / 850 = 1.305882).
    assert Decimal(centre["pue"]) == Decimal("1.3875")
    assert (Decimal(centre["it_kwh"]), Decimal(centre["facility_kwh"])) == (800, 1110)
    # Measured: T1, T2, T3 (hall B measured it) and T4. With gaps: T2 (hall A 90% covered) and
    # T3 (hall A's facility meter silent: the centre's facility coverage is its least covered
    # hall's, 0).
    assert (centre["hours_measured"], centre["hours_with_gaps"]) == (4, 2)
    # it_glitches in T1 and T4, facility_resets in T4: hours of the centre, not site-hours.
    assert centre["quality"] == {"facility_resets": 1, "it_glitches": 2}


def test_the_long_range_reader_gives_the_hours_figures_from_the_daily_rollup(conn):
    """Over more than 31 days ``pue_site_range`` reads whole UTC days from rollup_site_daily and
    only the part-days at the ends hour by hour: the same sums as the hours themselves. The
    Shanghai year starts and ends at 16:00 UTC, inside a UTC day whose other hours belong to the
    year before or after: they must not come in with their day."""
    hall_a, hall_b = _split_centre(conn)
    edge_hours = [
        (hall_a, datetime(2025, 12, 31, 15, tzinfo=UTC), 70, 140),  # 2025 in Shanghai: out
        (hall_a, datetime(2025, 12, 31, 17, tzinfo=UTC), 40, 50),  # first part-day: in
        (hall_b, datetime(2026, 12, 31, 15, tzinfo=UTC), 60, 75),  # last part-day: in
        (hall_b, datetime(2026, 12, 31, 16, tzinfo=UTC), 90, 200),  # 2027 in Shanghai: out
    ]
    for site_id, hour, it, facility in edge_hours:
        _hour(conn, site_id, hour, it, facility)
    start, end = year_bounds(2026)
    ranged = conn.execute(
        "SELECT sum(it_kwh), sum(facility_kwh), pue_ratio(sum(facility_kwh), sum(it_kwh)),"
        " sum(hours), count(*) FILTER (WHERE at = day AND hours > 1)"
        " FROM pue_site_range(%s, %s)", (start, end)).fetchone()
    hourly = conn.execute(
        "SELECT sum(it_kwh), sum(facility_kwh), pue_ratio(sum(facility_kwh), sum(it_kwh))"
        " FROM pue_site_hourly WHERE hour >= %s AND hour < %s", (start, end)).fetchone()
    # IT: 800 (the halls above) + 40 + 60 = 900; facility: 1110 + 50 + 75 = 1235.
    assert ranged[:2] == hourly[:2] == (900, 1235)
    assert ranged[2] == hourly[2] and f"{ranged[2]:.6f}" == "1.372222"
    assert ranged[3] == 6 + 2  # the six hours above and the two part-day ones
    assert ranged[4] == 2  # 2026-03-01 read as one daily row per hall: the daily path was taken


def test_the_year_to_date_dashboard_and_the_api_give_one_figure(client, conn):
    """The energy dashboard's year to date (and so the monthly report's) reads the same
    definition as the API: over the whole year, through the daily rollup."""
    hall_a, hall_b = _split_centre(conn)
    _hour(conn, hall_a, datetime(2025, 12, 31, 17, tzinfo=UTC), 40, 50)  # first part-day
    _hour(conn, hall_b, datetime(2026, 12, 31, 15, tzinfo=UTC), 60, 75)  # last part-day
    _hour(conn, hall_b, datetime(2026, 12, 31, 16, tzinfo=UTC), 90, 200)  # 2027: out
    (centre,) = client.get("/v1/pue/annual", params={"year": 2026},
                           headers=bearer(create_key(conn, Role.BUREAU))).json()
    start, end = year_bounds(2026)
    end -= timedelta(milliseconds=1)  # the year's last instant, as the report's December ends
    (stat,) = grafana.panel_rows(conn, "jinsuan-energy", "Annual PUE, year to date",
                                 start=start, end=end)
    (row,) = grafana.panel_rows(conn, "jinsuan-energy",
                                "Data centres: PUE and data coverage, year to date",
                                start=start, end=end)
    # (1110 + 50 + 75) / (800 + 40 + 60) = 1235 / 900 = 1.3722222…
    assert centre["pue"] == "1.372222"
    for figure in (stat["annual PUE, year to date"], row["PUE year to date"]):
        assert figure.quantize(Decimal("0.000001")) == Decimal(centre["pue"])
    assert row["IT MWh"] * 1000 == Decimal(centre["it_kwh"]) == 900
    # T1 to T4 and the two part-day hours; T2, T3 with gaps in the API's sense.
    assert row["hours measured"] == centre["hours_measured"] == 6
    assert centre["hours_with_gaps"] == 2


def test_the_store_definition_is_the_one_measure_4_applies(conn):
    """rewards.pue computes measure 4 in Python on frozen hourly rows; over the same rows its
    annual PUE, facility and IT energy are those of the store's definition, by the hour and
    through the daily rollup, and those GET /v1/pue/annual answers."""
    hall_a, _ = _split_centre(conn)
    lone = create_site(conn, enterprise="云冈数据", name="datong-1", city="大同").id
    _hour(conn, lone, T1, 80, 100)
    _hour(conn, lone, T2, None, 40)  # IT meter silent: out of both sums
    _hour(conn, hall_a, datetime(2025, 12, 31, 17, tzinfo=UTC), 40, 50)  # first part-day
    policy = load(POLICIES / "jinzhengbanfa-2024-35-v1.toml")
    awards = assess_pue(read_inputs(conn, 2026, policy), policy)
    start, end = year_bounds(2026)
    assert policy.window(2026) == (date(2026, 1, 1), date(2026, 12, 31))  # the whole year
    api = {(r.enterprise, r.data_centre): r for r in annual(conn, 2026, By.DATA_CENTRE, None)}
    assert len(awards) == len(api) == 2
    for award in awards:
        figures = {f.name: f.value for f in award.figures}
        hourly, ranged = (conn.execute(
            "SELECT sum(p.facility_kwh), sum(p.it_kwh), pue_ratio(sum(p.facility_kwh),"
            f" sum(p.it_kwh)) FROM {source} p JOIN enterprises e ON e.id = p.enterprise_id"
            " WHERE e.name = %(enterprise)s AND p.data_centre = %(centre)s" + where,
            {"start": start, "end": end, "enterprise": award.enterprise,
             "centre": award.data_centre}).fetchone()
            for source, where in (
                ("pue_site_hourly", " AND p.hour >= %(start)s AND p.hour < %(end)s"),
                ("pue_site_range(%(start)s, %(end)s)", "")))
        assert (Decimal(figures["facility kWh"]), Decimal(figures["IT kWh"])) == hourly[:2]
        assert Decimal(figures["annual PUE"]) == hourly[2].quantize(Decimal("0.0001"))
        assert ranged == hourly
        answer = api[(award.enterprise, award.data_centre)]
        assert (answer.facility_kwh, answer.it_kwh) == hourly[:2]
        assert answer.pue == hourly[2].quantize(Decimal("0.000001"))
    by_centre = {a.data_centre: {f.name: f.value for f in a.figures} for a in awards}
    # 太原一号: (1110 + 50) / (800 + 40) = 1160 / 840 = 1.380952… -> 1.3810 (4 decimals there).
    assert by_centre["太原一号"]["annual PUE"] == "1.3810"
    # datong-1: 100 / 80 = 1.25; the hour with facility energy but no IT energy is left out.
    assert by_centre["datong-1"]["annual PUE"] == "1.2500"


def test_the_scheduler_places_on_the_same_pue_over_the_last_day(conn):
    site = create_site(conn, enterprise="晋能算力", name="taiyuan-1", city="太原").id
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    _hour(conn, site, now - 30 * H, 100, 200)  # more than a day ago: out
    _hour(conn, site, now - 3 * H, 100, 130)
    _hour(conn, site, now - 2 * H, 100, None)  # facility meter silent: out of both sums
    _hour(conn, site, now - 1 * H, None, 500)  # IT meter silent: out of both sums
    (view,) = load_sites(conn, SchedulerConfig(), now)
    # 130 / 100 = 1.3; summing every hour of each role would give 630 / 200 = 3.15.
    assert view.pue == pytest.approx(1.3)
