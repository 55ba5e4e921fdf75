"""The Rewards dashboard against awards made by the rewards room's own code, figures by hand.

Four sites of three enterprises get hand-made hourly rollups over the 2024 policy window
(2024-07-01 .. 2024-12-31 Asia/Shanghai: 184 days, 4,416 hours); ``rewards.store.assess`` makes
the awards, twice (the second time after late data and an accepted declaration, superseding the
first), and ``rewards.approval`` moves some of them to proposed, approved and paid. Every query
of ``dashboards/rewards.json`` is expanded as Grafana would and run as Grafana's read-only role
(``deploy/postgres/grafana-readonly.sql``); its figures are checked against arithmetic done here.

The sites, each reporting every hour of the window with IT 100 kWh and all meters covering the
whole hour:

=====  ===========================  ====  ============  ============  ======  =====
site   enterprise                   city  data centre   facility kWh  PFlops  racks
=====  ===========================  ====  ============  ============  ======  =====
ty-a   晋能算力                     太原  太原一号      115 (1.15)    2.0     10
dt-a   晋能算力                     大同  大同一号      119 (1.19)    1.0     4
ty-b   Example Compute Co.          太原  太原二号      130 (1.30)    1.5     6
ll-c   吕梁云                       吕梁  吕梁云一号    (never reported)
=====  ===========================  ====  ============  ============  ======  =====
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from conftest import fresh_database
from test_dashboards import FILLED_ELSEWHERE, READONLY_SQL, check_columns, grafana_sql, sql_queries

from dashboards import grafana
from jinsuan.kernel.auth import Role, authenticate, create_key
from jinsuan.kernel.sites import create_site
from rewards import approval
from rewards.store import assess, policy_for

UID = "jinsuan-rewards"
YEAR = 2024
WINDOW_START = datetime(2024, 6, 30, 16, tzinfo=UTC)  # 2024-07-01 00:00 in Shanghai
WINDOW_HOURS = 184 * 24  # 4,416
START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)  # not read

# name: enterprise, city, data centre, facility kWh per 100 IT kWh, FP16 PFlops, racks
SITES: dict[str, tuple[str, str, str, int, float, int]] = {
    "ty-a": ("晋能算力", "太原", "太原一号", 115, 2.0, 10),
    "dt-a": ("晋能算力", "大同", "大同一号", 119, 1.0, 4),
    "ty-b": ("Example Compute Co.", "太原", "太原二号", 130, 1.5, 6),
    "ll-c": ("吕梁云", "吕梁", "吕梁云一号", 0, 0.0, 0),  # never reports
}

# Measure 5b, by hand (2024 has 8,784 hours; the bureau's assumed rate is 20,000 yuan per
# PFlops-year, cap 500,000 per enterprise and year):
# 晋能算力: (2.0 + 1.0) PFlops × 4,416 h = 8,832 + 4,416 = 13,248 PFlops-hours;
#   13,248 / 8,784 × 20,000 = 30,163.934426... -> 30,163.93 (太原 8,832 of it, 大同 4,416)
# Example: 1.5 × 4,416 = 6,624 PFlops-hours; 6,624 / 8,784 × 20,000 = 15,081.967213 -> 15,081.97
#   (the superseded first assessment saw half the hours: 3,312 / 8,784 × 20,000 -> 7,540.98)
# 吕梁云: nothing measured -> 0.00, not eligible.
JINNENG_5B, EXAMPLE_5B, EXAMPLE_5B_BEFORE = (Decimal("30163.93"), Decimal("15081.97"),
                                             Decimal("7540.98"))
# Measure 4: 太原一号 1.1500 < 1.18, commissioned 2024-03-01 (declared, accepted), fully
# metered: 10 racks × 1,000 yuan = 10,000.00. 大同一号 1.1900: a near miss (within 0.02), 0.
# 太原二号 1.3000: not eligible, 0. 吕梁云一号: no declaration, no energy measured, 0.
TAIYUAN_1 = Decimal("10000.00")


def _rollups(conn: psycopg.Connection, site_id: int, name: str, first: int, last: int,
             start: datetime = WINDOW_START) -> None:
    """Hours ``first`` .. ``last`` after ``start`` of a site, as the hourly rollup writes them."""
    _, _, _, facility, pflops, racks = SITES[name]
    conn.execute(
        "INSERT INTO rollup_site_hourly (site_id, hour, it_kwh, facility_kwh, pue, fp16_pflops,"
        " accelerators, racks, coverage_it, coverage_facility, coverage_accelerators)"
        " SELECT %s, %s + n * interval '1 hour', 100, %s, %s / 100.0, %s, 8, %s, 1, 1, 1"
        " FROM generate_series(%s::integer, %s::integer) AS n",
        (site_id, start, facility, facility, pflops, racks, first, last))


def _declare(conn: psycopg.Connection, enterprise_id: int, centre: str) -> None:
    """A commissioning declaration, accepted by the bureau."""
    conn.execute(
        "INSERT INTO reward_declarations (enterprise_id, data_centre, kind, value, evidence,"
        " status, reviewed_at, reason) VALUES (%s, %s, 'commissioning',"
        " '{\"date\": \"2024-03-01\", \"retrofit\": false}',"
        " '[{\"name\": \"竣工验收报告.pdf\", \"sha256\": \"" + "ab" * 32 + "\"}]',"
        " 'accepted', now(), 'checked')", (enterprise_id, centre))


class Store:
    """What the fixture made: site and enterprise ids, and the assessments by (year, measure)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sites: dict[str, int] = {}
        self.enterprises: dict[str, int] = {}
        self.first: dict[str, int] = {}
        self.latest: dict[tuple[int, str], int] = {}


@pytest.fixture(scope="module")
def store(pg_admin_url: str, template_db: str) -> Iterator[Store]:
    with fresh_database(pg_admin_url, template_db) as url, \
            psycopg.connect(url, autocommit=True) as conn:
        made = Store(url)
        for name, (enterprise, city, centre, *_) in SITES.items():
            site = create_site(conn, enterprise=enterprise, name=name, city=city,
                               data_centre=centre)
            made.sites[name], made.enterprises[enterprise] = site.id, site.enterprise_id
        for name in ("ty-a", "dt-a"):
            _rollups(conn, made.sites[name], name, 0, WINDOW_HOURS - 1)
        _rollups(conn, made.sites["ty-b"], "ty-b", 0, WINDOW_HOURS // 2 - 1)
        _declare(conn, made.enterprises["晋能算力"], "大同一号")
        _declare(conn, made.enterprises["Example Compute Co."], "太原二号")
        made.first = {a.measure: a.id for a in assess(conn, YEAR, ["5b", "4"], by_key=None)}

        # Late data for ty-b and 太原一号's declaration accepted: both measures are re-assessed.
        _rollups(conn, made.sites["ty-b"], "ty-b", WINDOW_HOURS // 2, WINDOW_HOURS - 1)
        _declare(conn, made.enterprises["晋能算力"], "太原一号")
        # And one day of 2025 at ty-a (2 January in Shanghai), assessed for 2025.
        _rollups(conn, made.sites["ty-a"], "ty-a", 0, 23,
                 start=datetime(2025, 1, 1, 16, tzinfo=UTC))
        for year in (YEAR, 2025):
            for done in assess(conn, year, ["5b", "4"], by_key=None):
                assert done.created
                made.latest[(year, done.measure)] = done.id

        maker, checker = (authenticate(conn, create_key(conn, Role.BUREAU, label=f"finance {n}"))
                          for n in (1, 2))
        awards = {(measure, enterprise, centre): award_id
                  for award_id, measure, enterprise, centre in conn.execute(
                      "SELECT a.id, a.measure, e.name, a.data_centre FROM reward_awards a"
                      " JOIN enterprises e ON e.id = a.enterprise_id"
                      " WHERE a.assessment_id = ANY(%s)",
                      ([made.latest[(YEAR, m)] for m in ("5b", "4")],))}
        jinneng = awards[("5b", "晋能算力", None)]
        example = awards[("5b", "Example Compute Co.", None)]
        taiyuan = awards[("4", "晋能算力", "太原一号")]
        for award_id in (jinneng, example, taiyuan):
            approval.propose(conn, award_id, maker)
        for award_id in (jinneng, example):
            approval.approve(conn, award_id, checker)
        approval.pay(conn, jinneng, maker, "ICBC-2025-000042")
        conn.execute(READONLY_SQL.read_text(encoding="utf-8"))
        yield made


@pytest.fixture
def as_grafana(store: Store) -> Iterator[psycopg.Connection]:
    with psycopg.connect(store.url, autocommit=True) as conn, \
            conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE jinsuan_grafana")
        yield conn


def rows(conn: psycopg.Connection, title: str, **chosen: list[str]) -> list[dict[str, Any]]:
    return grafana.panel_rows(conn, UID, title, start=START, end=END,
                              chosen={"year": [str(YEAR)], **chosen})


def by(got: list[dict[str, Any]], *key: str) -> dict[Any, dict[str, Any]]:
    out = {row[key[0]] if len(key) == 1 else tuple(row[k] for k in key): row for row in got}
    assert len(out) == len(got), "one row per key"
    return out


# --- the dashboard as a whole ------------------------------------------------------------------

def test_every_query_runs_as_grafana_and_returns_the_columns_it_draws(
        as_grafana: psycopg.Connection, store: Store) -> None:
    """tests/test_dashboards.py runs these queries on a store with no awards; here every one
    must return the rows its panel draws."""
    assert FILLED_ELSEWHERE[UID] == "tests/test_dashboard_rewards.py"
    dashboard = grafana.load(UID)
    values = grafana.resolve_variables(as_grafana, dashboard, start=START, end=END)
    assert values["year"] == ["2026"], "the latest policy year is shown first"
    assert set(values["city"]) == {"太原", "大同", "吕梁"}
    assert sorted(values["enterprise"]) == sorted(str(i) for i in store.enterprises.values())
    values["year"] = [str(YEAR)]
    queries = sql_queries(dashboard)
    assert len(queries) == 6 + 4 + 3  # six award panels, four voucher panels, three variables
    for where, sql in queries:
        assert grafana.rows(as_grafana, grafana_sql(sql, values)), f"{where} returned nothing"
    for panel in grafana.all_panels(dashboard):
        for target in panel.get("targets", []):
            got = grafana.rows(as_grafana, grafana_sql(target["rawSql"], values))
            check_columns(f"{UID} {panel['title']!r}", panel, target, got)


def test_the_year_variable_lists_the_policy_years(as_grafana: psycopg.Connection) -> None:
    (year,) = [v for v in grafana.variables(grafana.load(UID)) if v["name"] == "year"]
    listed = grafana.rows(as_grafana, grafana_sql(year["query"], {}))
    assert [r["__value"] for r in listed] == [2026, 2025, 2024]
    assert not year["multi"] and not year["includeAll"]


def test_the_read_only_role_reads_no_inputs_policy_text_or_keys(
        as_grafana: psycopg.Connection) -> None:
    for sql in ("SELECT inputs FROM reward_assessments",
                "SELECT policy_text FROM reward_assessments",
                "SELECT created_by FROM reward_assessments",
                "SELECT proposed_by FROM reward_awards",
                "SELECT approved_by FROM reward_awards",
                "SELECT payment_reference FROM reward_awards",
                "SELECT * FROM reward_declarations",
                "SELECT * FROM ledger_entries"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_grafana.transaction():
            as_grafana.execute(sql)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_grafana.transaction():
        as_grafana.execute("UPDATE reward_awards SET state = 'paid'")


# --- awards by measure, city and enterprise --------------------------------------------------

def test_awards_by_measure_count_only_the_latest_assessment(
        as_grafana: psycopg.Connection, store: Store) -> None:
    # The superseded assessments are there, with other figures: Example's 5b was 7,540.98 and
    # 太原一号, undeclared then, was not eligible.
    with psycopg.connect(store.url) as admin:
        assert admin.execute(
            "SELECT count(*) FROM reward_assessments WHERE year = %s", (YEAR,)).fetchone()[0] == 4
        assert admin.execute(
            "SELECT amount FROM reward_awards a JOIN enterprises e ON e.id = a.enterprise_id"
            " WHERE a.assessment_id = %s AND e.name = 'Example Compute Co.'",
            (store.first["5b"],)).fetchone()[0] == EXAMPLE_5B_BEFORE
    got = by(rows(as_grafana, "Awards by measure"), "measure")
    assert set(got) == {"4", "5b"}
    # 5b: three enterprises, 晋能算力 and Example eligible; 30,163.93 + 15,081.97 = 45,245.90.
    assert (got["5b"]["awards"], got["5b"]["eligible"], got["5b"]["amount"]) == (
        3, 2, JINNENG_5B + EXAMPLE_5B) == (3, 2, Decimal("45245.90"))
    # 4: four data centres, 太原一号 alone eligible.
    assert (got["4"]["awards"], got["4"]["eligible"], got["4"]["amount"]) == (4, 1, TAIYUAN_1)
    assert got["4"]["assessment"] == store.latest[(YEAR, "4")] != store.first["4"]
    assert got["5b"]["assessment"] == store.latest[(YEAR, "5b")]
    policy = policy_for(YEAR)
    assert got["5b"]["policy"] == f"{policy.id} v{policy.version}" == "jinzhengbanfa-2024-35 v1"


def test_another_year_shows_its_own_awards(as_grafana: psycopg.Connection) -> None:
    # 2025: one day at ty-a, 24 h × 2.0 = 48 PFlops-hours; 48 / 8,760 × 20,000 = 109.589... ->
    # 109.59. No centre measured enough of 2025 for measure 4, and none is a near miss.
    got = by(rows(as_grafana, "Awards by measure", year=["2025"]), "measure")
    assert (got["5b"]["awards"], got["5b"]["eligible"], got["5b"]["amount"]) == (
        3, 1, Decimal("109.59"))
    assert (got["4"]["awards"], got["4"]["eligible"], got["4"]["amount"]) == (
        4, 0, Decimal("0.00"))
    assert rows(as_grafana, "Eligibility near misses", year=["2025"]) == []


def test_awards_by_city_split_5b_by_pflops_hours_measured(as_grafana: psycopg.Connection
                                                          ) -> None:
    got = by(rows(as_grafana, "Awards by city"), "city", "measure")
    figures = {key: (r["awards"], r["eligible"], r["amount"]) for key, r in got.items()}
    # 晋能算力's 5b: 8,832 of its 13,248 PFlops-hours in 太原, 4,416 in 大同:
    # 30,163.93 × 2/3 = 20,109.2867, + Example's 15,081.97 = 35,191.2567 -> 35,191.26;
    # 30,163.93 × 1/3 = 10,054.6433 -> 10,054.64. 吕梁云 measured nothing: 0, counted in 吕梁.
    assert figures == {
        ("太原", "5b"): (2, 2, Decimal("35191.26")),
        ("大同", "5b"): (1, 1, Decimal("10054.64")),
        ("吕梁", "5b"): (1, 0, Decimal("0.00")),
        ("太原", "4"): (2, 1, TAIYUAN_1),
        ("大同", "4"): (1, 0, Decimal("0.00")),
        ("吕梁", "4"): (1, 0, Decimal("0.00")),
    }
    # The cities add up to the awards: 35,191.26 + 10,054.64 = 45,245.90.
    assert sum(r["amount"] for (_, m), r in got.items() if m == "5b") == JINNENG_5B + EXAMPLE_5B
    description = grafana.panel(grafana.load(UID), "Awards by city")["description"]
    assert "in proportion to the PFlops-hours measured" in description


def test_a_city_selection_shows_that_citys_part(as_grafana: psycopg.Connection) -> None:
    got = by(rows(as_grafana, "Awards by measure", city=["太原"]), "measure")
    # Both enterprises have a site in 太原; 5b as in 'Awards by city', measure 4 its two centres.
    assert (got["5b"]["awards"], got["5b"]["amount"]) == (2, Decimal("35191.26"))
    assert (got["4"]["awards"], got["4"]["eligible"], got["4"]["amount"]) == (2, 1, TAIYUAN_1)
    datong = by(rows(as_grafana, "Awards by enterprise", city=["大同"]), "enterprise", "measure")
    assert {k: r["amount"] for k, r in datong.items()} == {
        ("晋能算力", "5b"): Decimal("10054.64"), ("晋能算力", "4"): Decimal("0.00")}


def test_awards_by_enterprise(as_grafana: psycopg.Connection, store: Store) -> None:
    got = by(rows(as_grafana, "Awards by enterprise"), "enterprise", "measure")
    assert {k: (r["awards"], r["eligible"], r["amount"], r["states"]) for k, r in got.items()} == {
        ("晋能算力", "5b"): (1, 1, JINNENG_5B, "paid"),
        ("晋能算力", "4"): (2, 1, TAIYUAN_1, "assessed, proposed"),
        ("Example Compute Co.", "5b"): (1, 1, EXAMPLE_5B, "approved"),
        ("Example Compute Co.", "4"): (1, 0, Decimal("0.00"), "assessed"),
        ("吕梁云", "5b"): (1, 0, Decimal("0.00"), "assessed"),
        ("吕梁云", "4"): (1, 0, Decimal("0.00"), "assessed"),
    }
    example = str(store.enterprises["Example Compute Co."])
    only = by(rows(as_grafana, "Awards by measure", enterprise=[example]), "measure")
    assert (only["5b"]["amount"], only["4"]["amount"]) == (EXAMPLE_5B, Decimal("0.00"))


# --- paid against approved -------------------------------------------------------------------

def test_paid_against_approved(as_grafana: psycopg.Connection) -> None:
    got = by(rows(as_grafana, "Paid against approved"), "measure")
    five_b = got["5b"]
    # 晋能算力's 30,163.93 paid; Example's 15,081.97 approved and not paid; 吕梁云's 0 assessed.
    assert (five_b["assessed"], five_b["proposed"], five_b["approved, not paid"],
            five_b["paid"], five_b["approved in all"]) == (
        Decimal("0.00"), Decimal("0.00"), EXAMPLE_5B, JINNENG_5B, Decimal("45245.90"))
    # 30,163.93 / 45,245.90 = 0.66666...
    assert five_b["paid share"] == pytest.approx(Decimal("30163.93") / Decimal("45245.90"))
    four = got["4"]
    assert (four["assessed"], four["proposed"], four["approved, not paid"], four["paid"],
            four["approved in all"], four["paid share"]) == (
        Decimal("0.00"), TAIYUAN_1, Decimal("0.00"), Decimal("0.00"), Decimal("0.00"), None)
    # 太原 alone: two thirds of the paid 30,163.93 (20,109.2867 -> 20,109.29) and Example's.
    taiyuan = by(rows(as_grafana, "Paid against approved", city=["太原"]), "measure")["5b"]
    assert (taiyuan["paid"], taiyuan["approved, not paid"], taiyuan["approved in all"]) == (
        Decimal("20109.29"), EXAMPLE_5B, Decimal("35191.26"))


# --- near misses and assumptions -------------------------------------------------------------

def test_near_misses_list_the_centre_within_0_02_of_1_18(as_grafana: psycopg.Connection,
                                                         store: Store) -> None:
    (row,) = rows(as_grafana, "Eligibility near misses")
    # 大同一号: 119 / 100 = 1.1900, at or above 1.18 and below 1.20; fully metered, 4 racks.
    # 太原一号 (1.15, eligible) and 太原二号 (1.30) are not listed, nor the superseded
    # assessment's copy of 大同一号.
    assert (row["enterprise"], row["data centre"], row["city"]) == ("晋能算力", "大同一号", "大同")
    assert (row["annual PUE"], row["metered share"], row["racks"]) == (
        Decimal("1.1900"), Decimal("1.0000"), 4)
    assert row["reasons"] == "near miss: annual PUE 1.1900 is not below 1.18"
    assert rows(as_grafana, "Eligibility near misses", city=["太原"]) == []
    example = str(store.enterprises["Example Compute Co."])
    assert rows(as_grafana, "Eligibility near misses", enterprise=[example]) == []


def test_assumptions_in_force_are_those_the_awards_name(as_grafana: psycopg.Connection) -> None:
    policy = policy_for(YEAR)
    assumed = {p.name for m in ("4", "5b") for p in policy.measures[m].parameters.values()
               if p.assumption}
    assert assumed == {"5b.rate", "5b.cap", "4.full_coverage_hour", "4.min_metered_share",
                       "4.new_since", "4.per_rack"}
    got = by(rows(as_grafana, "Assumptions in force"), "assumption")
    assert set(got) == assumed
    for name, row in got.items():
        measure = name.split(".")[0]
        assert row["measure"] == measure and row["policy"] == "jinzhengbanfa-2024-35 v1"
        # Every award of a measure rests on its assumptions: 3 of 5b (45,245.90), 4 of 4.
        assert (row["awards"], row["eligible"], row["amount"]) == (
            (3, 2, Decimal("45245.90")) if measure == "5b" else (4, 1, TAIYUAN_1))
    rate = policy.measures["5b"].parameters["rate"]
    assert got["5b.rate"]["value in the awards"] == str(rate.value) == "20000.00"
    assert got["5b.rate"]["note"] == f"{rate.unit}: {rate.note}"
    assert got["5b.cap"]["value in the awards"] == "500000.00"
    # Measure 4's awards show no figure named for its assumptions: the policy file has them.
    assert got["4.per_rack"]["value in the awards"] is None
    # Only the selection's awards: 吕梁云 alone rests on 5b's assumptions for 0 yuan.
    lvliang = by(rows(as_grafana, "Assumptions in force", city=["吕梁"]), "assumption")
    assert (lvliang["5b.rate"]["awards"], lvliang["5b.rate"]["amount"]) == (1, Decimal("0.00"))


def test_the_fixture_window_is_the_policy_window() -> None:
    """The hand-worked figures assume 2024's window is 1 July .. 31 December."""
    first, last = policy_for(YEAR).window(YEAR)  # type: ignore[misc]
    assert (str(first), str(last)) == ("2024-07-01", "2024-12-31")
    assert WINDOW_START + timedelta(hours=WINDOW_HOURS) == datetime(2024, 12, 31, 16, tzinfo=UTC)

