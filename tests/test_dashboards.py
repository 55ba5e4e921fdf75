"""The Grafana dashboards: structure, and every query run for real.

SQL targets (and SQL variable queries) get Grafana's macros and variables substituted by
``grafana_sql`` and are executed against a migrated database holding a small known fleet, as the
read-only role of ``deploy/postgres/grafana-readonly.sql``; the figures the bureau reads (PUE,
year-to-date PUE and coverage, time-weighted PFlops, domestic share) are checked against the same
arithmetic done here by hand. PromQL targets are evaluated by a real Prometheus that scrapes
registries built from the platform's and the agent's own metric code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
import yaml
from servers import running_prometheus

from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
from dashboards import grafana
from dashboards.grafana import DashboardError, all_panels, datasource_type, target_source
from tests import simulated_fleet
from tests.scheduling_story import Story, play
from tests.simulated_fleet import SimulatedFleet

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
DATASOURCES = DASHBOARDS / "provisioning" / "datasources" / "jinsuan.yaml"
READONLY_SQL = ROOT / "deploy" / "postgres" / "grafana-readonly.sql"

RANGE_FROM = datetime(2026, 1, 1, tzinfo=UTC)
RANGE_TO = datetime(2026, 2, 1, tzinfo=UTC)


# --- loading -------------------------------------------------------------------------------

def sql_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(where, sql)`` for every PostgreSQL target and variable query."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if target_source(panel, target) == grafana.POSTGRES:
                found.append((f"panel {panel['title']!r} {target['refId']}", target["rawSql"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if datasource_type(variable.get("datasource")) == grafana.POSTGRES:
            found.append((f"variable {variable['name']}", variable["query"]))
    return found


def prom_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{dashboard['uid']} panel {panel['title']!r} {target['refId']}", target)
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        if target_source(panel, target) == grafana.PROMETHEUS
    ]


def panel_sql(dashboard: Mapping[str, Any], title: str) -> str:
    (target,) = grafana.panel(dashboard, title)["targets"]
    return target["rawSql"]


def grafana_sql(sql: str, variables: Mapping[str, list[str]], *, interval: str = "1h",
                start: datetime = RANGE_FROM, end: datetime = RANGE_TO) -> str:
    return grafana.expand(sql, variables, start=start, end=end, interval=interval)


def test_substitution_expands_like_grafana() -> None:
    sql = (
        "SELECT $__timeGroupAlias(r.hour, $__interval), x FROM t "
        "WHERE $__timeFilter(r.hour) AND c IN (${city:sqlstring}) AND s IN (${site:csv}) "
        "AND y < $__timeTo() AND z = $city AND e IN (${none:csv})"
    )
    got = grafana_sql(sql, {"city": ["太原", "O'Hare"], "site": ["1", "2"], "none": []},
                      interval="1d")
    assert "floor(extract(epoch from r.hour)/86400)*86400 AS \"time\"" in got
    assert "r.hour BETWEEN '2026-01-01T00:00:00+00:00' AND '2026-02-01T00:00:00+00:00'" in got
    assert "c IN ('太原','O''Hare')" in got and "s IN (1,2)" in got
    assert "z = '太原','O''Hare'" in got
    assert "e IN (NULL)" in got  # an empty selection matches nothing, as in Grafana
    with pytest.raises(DashboardError, match="not a variable"):
        grafana_sql("SELECT $nope", {})
    with pytest.raises(DashboardError, match="not supported"):
        grafana_sql("SELECT $__unixEpochFilter(t)", {})


# --- structure -------------------------------------------------------------------------------

SQL_DASHBOARDS = ("jinsuan-province-overview", "jinsuan-energy", "jinsuan-site-detail",
                  "jinsuan-scheduling")


def provisioned_uids() -> dict[str, str]:
    provisioning = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    return {ds["uid"]: ds["type"] for ds in provisioning["datasources"]}


def _datasource_refs(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for panel in all_panels(dashboard):
        if panel.get("datasource"):
            yield f"panel {panel['title']!r}", panel["datasource"]
        for target in panel.get("targets", []):
            if target.get("datasource"):
                yield f"panel {panel['title']!r} {target['refId']}", target["datasource"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("datasource"):
            yield f"variable {variable['name']}", variable["datasource"]


def _queries_text(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for where, sql in sql_queries(dashboard):
        yield where, sql
    for where, target in prom_queries(dashboard):
        yield where, target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if datasource_type(variable.get("datasource")) == grafana.PROMETHEUS:
            yield f"variable {variable['name']}", variable["query"]


def used_variables(text: str) -> set[str]:
    """Names of the dashboard variables a query refers to (not Grafana's ``$__`` macros)."""
    return {a or b for a, b in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(?!__)(\w+)", text)}


def test_the_four_bureau_dashboards_and_platform_operations_exist() -> None:
    uids = list(grafana.load_all())  # refuses two files with one uid
    assert len(uids) == len(list(DASHBOARDS.glob("*.json")))
    assert set(SQL_DASHBOARDS) | {"jinsuan-platform-operations"} <= set(uids)
    assert all(re.fullmatch(r"jinsuan-[a-z-]+", uid) for uid in uids), "uids are stable names"


def test_two_dashboards_with_one_uid_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text('{"uid": "jinsuan-same"}', encoding="utf-8")
    monkeypatch.setattr(grafana, "DASHBOARD_DIR", tmp_path)
    grafana.load_all.cache_clear()
    try:
        with pytest.raises(DashboardError, match=r"b\.json and a\.json both have the uid"):
            grafana.load_all()
    finally:
        monkeypatch.undo()
        grafana.load_all.cache_clear()


@pytest.mark.parametrize("name", sorted(grafana.load_all()))
def test_dashboard_structure(name: str) -> None:
    dashboard = grafana.load(name)
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["title"] and dashboard["editable"] is False
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    uids = provisioned_uids()
    for where, ref in _datasource_refs(dashboard):
        assert ref.get("uid") in uids, f"{name} {where}: datasource {ref} is not provisioned"
        assert ref.get("type") == uids[ref["uid"]], f"{name} {where}: type does not match"
    for panel in all_panels(dashboard):
        where = f"{name} {panel['title']!r}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{where} runs off the grid"
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refIds"
        if panel["type"] in ("row", "text"):
            continue
        assert panel.get("targets"), f"{where} has no query"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
        if panel["type"] == "timeseries":
            for target in panel["targets"]:
                if target_source(panel, target) == grafana.POSTGRES:
                    assert target["format"] == "time_series", where
                    assert "$__timeGroupAlias(" in target["rawSql"], \
                        f"{where} does not bucket by the dashboard's interval"
                    sql = target["rawSql"]
                    assert "$__timeFilter(" in sql or (
                        "$__timeFrom()" in sql and "$__timeTo()" in sql), \
                        f"{where} ignores the dashboard's time range"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert len(names) == len(set(names)), f"{name}: duplicate variables"
    for where, text in _queries_text(dashboard):
        unknown = used_variables(text) - set(names)
        assert not unknown, f"{name} {where} uses undefined variables {unknown}"
    # A variable's query may only use the variables before it (Grafana resolves them in order).
    for index, variable in enumerate(dashboard["templating"]["list"]):
        earlier = set(names[:index])
        assert used_variables(variable["query"]) <= earlier, f"{name} {variable['name']}"


@pytest.mark.parametrize("uid", SQL_DASHBOARDS)
def test_sql_dashboards_filter_by_city_enterprise_data_centre_and_site(uid: str) -> None:
    dashboard = grafana.load(uid)
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names[:4] == ["city", "enterprise", "data_centre", "site"]
    site = dashboard["templating"]["list"][3]
    assert used_variables(site["query"]) == {"city", "enterprise", "data_centre"}
    for where, sql in sql_queries(dashboard):
        if where.startswith("panel"):
            assert "${site:csv}" in sql, f"{uid} {where} ignores the site selection"


def _aggregate_arguments(text: str, function: str) -> Iterator[str]:
    """The argument text of every call to ``function`` (balanced parentheses)."""
    for match in re.finditer(rf"\b{function}\s*\(", text, re.IGNORECASE):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[index], 0)
            if depth == 0:
                yield text[start:index]
                break


def averages_pue(query: str) -> bool:
    return any(
        re.search(r"pue", argument, re.IGNORECASE)
        for function in (r"avg", r"avg_over_time", r"mean")
        for argument in _aggregate_arguments(query, function)
    )


def test_averages_pue_detector() -> None:
    assert averages_pue("SELECT AVG( r.pue ) FROM rollup_site_hourly r")
    assert averages_pue("SELECT avg(coalesce(pue, 1)) FROM x")
    assert averages_pue("avg_over_time(jinsuan_site_pue_last_hour[1d])")
    assert not averages_pue("SELECT sum(facility_kwh) / sum(it_kwh) AS pue, avg(coverage_it)")


@pytest.mark.parametrize("name", sorted(grafana.load_all()))
def test_no_query_averages_pue(name: str) -> None:
    dashboard = grafana.load(name)
    queries = [sql for _, sql in sql_queries(dashboard)]
    queries += [target["expr"] for _, target in prom_queries(dashboard)]
    assert queries
    for query in queries:
        assert not averages_pue(query), f"{name}: averages PUE: {query}"


def test_energy_dashboard_draws_the_measure_4_line() -> None:
    panel = grafana.panel(grafana.load("jinsuan-energy"), "PUE per data centre")
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, 1.18]


# --- SQL against the real schema -------------------------------------------------------------

def _hour(day: int, hour: int, month: int = 1, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


class Fleet:
    """A small known fleet: three sites in two cities, hourly rollups around New Year.

    The two 太原 sites are halls of one data centre, of two enterprises (a colocation building).
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self.sites: dict[str, int] = {}
        self.city = {"taiyuan-1": "太原", "taiyuan-2": "太原", "datong-1": "大同"}
        self.centre = {"taiyuan-1": "太原一号", "taiyuan-2": "太原一号", "datong-1": "大同一号"}
        ent = {}
        for name in ("晋能算力", "Example Compute Co."):
            ent[name] = conn.execute(
                "INSERT INTO enterprises (name) VALUES (%s) RETURNING id", (name,)
            ).fetchone()[0]
        owner = {"taiyuan-1": "晋能算力", "taiyuan-2": "Example Compute Co.",
                 "datong-1": "晋能算力"}
        for site, city in self.city.items():
            self.sites[site] = conn.execute(
                "INSERT INTO sites (enterprise_id, name, city, data_centre)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (ent[owner[site]], site, city, self.centre[site]),
            ).fetchone()[0]
        self.enterprises = ent
        # Hours from 2025-12-31 12:00Z (20:00 in Shanghai, still 2025 there) to 2026-01-03.
        self.rows: list[dict[str, Any]] = []
        start = datetime(2025, 12, 31, 12, tzinfo=UTC)
        for index in range(60):
            hour = start + timedelta(hours=index)
            for n, (site, site_id) in enumerate(self.sites.items()):
                it = Decimal(100 + 40 * ((index * (n + 3)) % 7))
                facility = it * Decimal("1.1") + Decimal(5 * ((index + n) % 5))
                coverage = 1.0 if (index + n) % 9 else 0.5
                if site == "datong-1" and index % 11 == 0:
                    it = None  # the IT meter was silent: this hour has no PUE
                row = {
                    "site_id": site_id, "site": site, "hour": hour, "it_kwh": it,
                    "facility_kwh": facility,
                    "pue": None if it is None else facility / it,
                    "fp16_pflops": 10.0 * (n + 1) + index % 4, "accelerators": 64 * (n + 1),
                    "racks": 4 * (n + 1), "coverage_it": coverage if it else 0.0,
                    "coverage_facility": 1.0, "coverage_accelerators": 0.97,
                }
                self.rows.append(row)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rollup_site_hourly (site_id, hour, it_kwh, facility_kwh, pue,"
                " fp16_pflops, accelerators, racks, utilization, coverage_it,"
                " coverage_facility, coverage_accelerators) VALUES (%(site_id)s, %(hour)s,"
                " %(it_kwh)s, %(facility_kwh)s, %(pue)s, %(fp16_pflops)s, %(accelerators)s,"
                " %(racks)s, 0.5, %(coverage_it)s, %(coverage_facility)s,"
                " %(coverage_accelerators)s)",
                self.rows,
            )
            seen = (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 20, tzinfo=UTC))
            accelerators = [
                ("taiyuan-1", "NVIDIA H800", "NVIDIA", False, 989.4, 6),
                ("taiyuan-1", "Huawei Ascend 910B3", "Huawei", True, 313.0, 10),
                ("datong-1", "Huawei Ascend 910B3", "Huawei", True, 313.0, 4),
                ("taiyuan-2", "NVIDIA H20", "NVIDIA", False, 148.0, 8),
            ]
            self.accelerators = accelerators
            for site, model, vendor, domestic, tflops, count in accelerators:
                for i in range(count):
                    cur.execute(
                        "INSERT INTO accelerators (site_id, uuid, model, vendor, domestic,"
                        " fp16_tflops, fp16_source, first_seen, last_seen)"
                        " VALUES (%s, %s, %s, %s, %s, %s, 'datasheet', %s, %s)",
                        (self.sites[site], f"{model}-{i}", model, vendor, domestic, tflops,
                         *seen),
                    )
            # One device long gone before the range: it must not count.
            cur.execute(
                "INSERT INTO accelerators (site_id, uuid, model, vendor, domestic, fp16_tflops,"
                " first_seen, last_seen) VALUES (%s, 'old', 'NVIDIA V100', 'NVIDIA', false,"
                " 125, '2025-01-01Z', '2025-06-01Z')",
                (self.sites["datong-1"],),
            )
            for site, measures in (("taiyuan-1", "ups_output"), ("taiyuan-1", "pdu_output")):
                cur.execute(
                    "INSERT INTO meters (site_id, id, role, measures, first_seen, last_seen)"
                    " VALUES (%s, %s, 'it', %s, now(), now())",
                    (self.sites[site], f"it-{measures}", measures),
                )

    def variables(self, sites: list[str] | None = None) -> dict[str, list[str]]:
        chosen = sites or list(self.sites)
        return {
            "city": sorted(set(self.city.values())),
            "enterprise": [str(i) for i in self.enterprises.values()],
            "data_centre": sorted(set(self.centre.values())),
            "site": [str(self.sites[s]) for s in chosen],
        }


@pytest.fixture
def known(conn: psycopg.Connection) -> Iterator[tuple[psycopg.Connection, Fleet]]:
    """The fleet, and the connection switched to the read-only role; all rolled back after."""
    with conn.transaction(force_rollback=True):
        fleet = Fleet(conn)
        conn.execute(READONLY_SQL.read_text(encoding="utf-8"))
        conn.execute("SET LOCAL ROLE jinsuan_grafana")
        yield conn, fleet


def test_read_only_role_cannot_write(known: tuple[psycopg.Connection, Fleet]) -> None:
    conn, _ = known
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("UPDATE rollup_site_hourly SET pue = 1")


def province() -> dict[str, Any]:
    return grafana.load("jinsuan-province-overview")


def energy() -> dict[str, Any]:
    return grafana.load("jinsuan-energy")


def _ratio(rows: list[dict[str, Any]]) -> Decimal:
    paired = [r for r in rows if r["it_kwh"] is not None and r["facility_kwh"] is not None]
    return sum(r["facility_kwh"] for r in paired) / sum(r["it_kwh"] for r in paired)


def _in_range(row: Mapping[str, Any]) -> bool:
    return RANGE_FROM <= row["hour"] <= RANGE_TO


def test_pue_over_the_range_is_a_ratio_of_energy_sums_per_data_centre(
    known: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = known
    sql = panel_sql(energy(), "PUE per data centre over the range")
    got = {r["data centre"]: r for r in grafana.rows(conn, grafana_sql(sql, fleet.variables()))}
    assert set(got) == {"太原一号", "大同一号"}
    for centre in got:
        rows = [r for r in fleet.rows if fleet.centre[r["site"]] == centre and _in_range(r)]
        expected = _ratio(rows)
        assert got[centre]["PUE"] == pytest.approx(expected, rel=Decimal("1e-12"))
        mean = sum(r["pue"] for r in rows if r["pue"] is not None) / len(
            [r for r in rows if r["pue"] is not None]
        )
        assert abs(mean - expected) > Decimal("1e-4"), "fixture too uniform to tell them apart"
    # Two halls of one data centre: neither hall's own ratio is the centre's.
    halls = [_ratio([r for r in fleet.rows if r["site"] == s and _in_range(r)])
             for s in ("taiyuan-1", "taiyuan-2")]
    assert all(abs(h - got["太原一号"]["PUE"]) > Decimal("1e-4") for h in halls)


def test_pue_per_data_centre_by_day_is_a_ratio_per_bucket(
    known: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = known
    sql = panel_sql(energy(), "PUE per data centre")
    rows = grafana.rows(conn, grafana_sql(sql, fleet.variables(["datong-1"]), interval="1d"))
    assert {r["metric"] for r in rows} == {"大同一号"}
    days = sorted({r["hour"].date() for r in fleet.rows if _in_range(r)})
    assert [datetime.fromtimestamp(float(r["time"]), UTC).date() for r in rows] == days
    for row in rows:
        day = datetime.fromtimestamp(float(row["time"]), UTC).date()
        mine = [r for r in fleet.rows
                if r["site"] == "datong-1" and _in_range(r) and r["hour"].date() == day]
        assert row["value"] == pytest.approx(_ratio(mine), rel=Decimal("1e-12"))


def test_year_to_date_table_uses_the_shanghai_year_and_flags_gaps(
    known: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = known
    sql = panel_sql(energy(), "Data centres: PUE and data coverage, year to date")
    end = datetime(2026, 1, 2, 6, tzinfo=UTC)
    rows = grafana.rows(conn, grafana_sql(sql, fleet.variables(), end=end))
    got = {r["data centre"]: r for r in rows}
    year_start = datetime(2026, 1, 1, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert year_start.astimezone(UTC) == datetime(2025, 12, 31, 16, tzinfo=UTC)
    assert set(got) == set(fleet.centre.values())
    for centre, row in got.items():
        rows = [r for r in fleet.rows
                if fleet.centre[r["site"]] == centre and year_start <= r["hour"] < end]
        assert row["hours rolled up"] == len({r["hour"] for r in rows}) == 38
        assert row["PUE year to date"] == pytest.approx(_ratio(rows), rel=Decimal("1e-12"))
        assert row["coverage IT"] == pytest.approx(
            sum(r["coverage_it"] for r in rows) / len(rows)
        )
        gaps = {r["hour"] for r in rows if min(r["coverage_it"], r["coverage_facility"],
                                               r["coverage_accelerators"]) < 0.95}
        assert row["hours with gaps"] == len(gaps) > 0
    assert got["太原一号"]["city"] == "太原"
    assert got["太原一号"]["sites"] == "taiyuan-1, taiyuan-2"
    assert got["太原一号"]["enterprise"] == "Example Compute Co., 晋能算力"
    assert got["太原一号"]["IT metered at"] == "pdu_output, ups_output"
    assert got["大同一号"]["IT metered at"] is None
    # The table highlights coverage below 95%.
    panel = grafana.panel(energy(), "Data centres: PUE and data coverage, year to date")
    (coverage,) = [o for o in panel["fieldConfig"]["overrides"]
                   if o["matcher"]["options"] == "^coverage"]
    steps = next(p["value"]["steps"] for p in coverage["properties"] if p["id"] == "thresholds")
    assert steps == [{"color": "red", "value": None}, {"color": "green", "value": 0.95}]


def test_connected_pflops_by_city_is_time_weighted(
    known: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = known
    sql = panel_sql(province(), "Connected FP16 PFlops by city")
    rows = grafana.rows(conn, grafana_sql(sql, fleet.variables(), interval="1d"))
    assert {r["metric"] for r in rows} == {"太原", "大同"}
    for row in rows:
        day = datetime.fromtimestamp(float(row["time"]), UTC).date()
        mine = [r for r in fleet.rows if _in_range(r) and r["hour"].date() == day
                and fleet.city[r["site"]] == row["metric"]]
        hours = {r["hour"] for r in mine}
        assert row["value"] == pytest.approx(sum(r["fp16_pflops"] for r in mine) / len(hours))


def test_latest_hour_and_domestic_share(known: tuple[psycopg.Connection, Fleet]) -> None:
    conn, fleet = known
    latest_sql = panel_sql(province(), "Connected in the latest hour")
    (latest,) = grafana.rows(conn, grafana_sql(latest_sql, fleet.variables()))
    last = max(r["hour"] for r in fleet.rows if _in_range(r))
    at_last = [r for r in fleet.rows if r["hour"] == last]
    assert latest["sites"] == 3
    assert latest["accelerators"] == sum(r["accelerators"] for r in at_last)
    assert latest["FP16 PFlops"] == pytest.approx(sum(r["fp16_pflops"] for r in at_last))

    share_sql = panel_sql(province(), "Domestic (信创) accelerators")
    (share,) = grafana.rows(conn, grafana_sql(share_sql, fleet.variables()))
    total = sum(a[5] for a in fleet.accelerators)
    domestic = sum(a[5] for a in fleet.accelerators if a[3])
    assert share["domestic share of accelerators"] == pytest.approx(domestic / total)
    tflops = sum(a[4] * a[5] for a in fleet.accelerators)
    domestic_tflops = sum(a[4] * a[5] for a in fleet.accelerators if a[3])
    assert share["domestic share of FP16 peak"] == pytest.approx(domestic_tflops / tflops)


def test_site_variable_follows_the_city(known: tuple[psycopg.Connection, Fleet]) -> None:
    conn, fleet = known
    (site_variable,) = [v for v in province()["templating"]["list"] if v["name"] == "site"]
    variables = {**fleet.variables(), "city": ["大同"]}
    rows = grafana.rows(conn, grafana_sql(site_variable["query"], variables))
    assert [(r["__text"], r["__value"]) for r in rows] == [("datong-1", fleet.sites["datong-1"])]
    variables = {**fleet.variables(), "data_centre": ["太原一号"]}
    rows = grafana.rows(conn, grafana_sql(site_variable["query"], variables))
    assert [r["__text"] for r in rows] == ["taiyuan-1", "taiyuan-2"]


# --- every panel against a store filled from the simulator ---------------------------------

SIM_END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
SIM_START = SIM_END - timedelta(hours=30)


@pytest.fixture(scope="module")
def simulated(
    pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, SimulatedFleet]]:
    """A database filled by simulated agents through the intake and rolled up, in which the
    scheduler has also run five hours of jobs (tests/scheduling_story.py)."""
    def jobs_and_grafana_role(conn: psycopg.Connection, db: Any, _: SimulatedFleet) -> None:
        play(Story(conn, db, SIM_END - timedelta(hours=6)))
        conn.execute(READONLY_SQL.read_text(encoding="utf-8"))

    with simulated_fleet.simulated_store(
            pg_admin_url, template_db, tmp_path_factory.mktemp("simulated"), start=SIM_START,
            end=SIM_END, then=jobs_and_grafana_role) as store:
        yield store


@pytest.fixture
def as_grafana(simulated: tuple[str, SimulatedFleet]) -> Iterator[psycopg.Connection]:
    """A connection to the simulated store as Grafana's read-only role."""
    url, _ = simulated
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE jinsuan_grafana")
        yield conn


def _numeric(value: Any) -> bool:
    return value is None or (isinstance(value, int | float | Decimal)
                             and not isinstance(value, bool))


def check_columns(where: str, panel: Mapping[str, Any], target: Mapping[str, Any],
                  rows: list[dict[str, Any]]) -> None:
    """The rows have the shape the panel draws: Grafana would show them, not "No data"."""
    assert rows, f"{where} returned nothing for a fleet with data"
    columns = set(rows[0])
    if target.get("format") == "time_series":
        assert "time" in columns, f"{where}: a time series needs a time column"
        values = columns - {"time", "metric"}
        assert values, f"{where}: no value column"
        assert all(_numeric(row[c]) for row in rows for c in values), f"{where}: not numbers"
        assert all(isinstance(row.get("metric", ""), str) for row in rows), where
    elif panel["type"] in ("stat", "bargauge", "piechart"):
        numbers = [c for c in columns if all(_numeric(row[c]) for row in rows)]
        assert numbers, f"{where}: nothing numeric to show"
        if panel["type"] == "stat":
            assert set(numbers) == columns, f"{where}: a stat shows numbers only"
    named = {o["matcher"]["options"] for o in panel["fieldConfig"].get("overrides", [])
             if o["matcher"]["id"] == "byName"}
    named |= {s["displayName"] for s in panel.get("options", {}).get("sortBy", [])}
    named |= set(panel.get("options", {}).get("footer", {}).get("fields", []) or [])
    assert named <= columns, f"{where}: the panel styles columns {named - columns} it never gets"
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"]["id"] == "byRegexp":
            pattern = override["matcher"]["options"]
            assert any(re.search(pattern, c) for c in columns), \
                f"{where}: nothing matches {pattern}"


FILLED_ELSEWHERE = {"jinsuan-rewards": "tests/test_dashboard_rewards.py"}
"""Dashboards that read what the simulated store never makes (no rewards are assessed there):
their queries run here, and the test named checks their columns against the rows it makes."""


def test_every_sql_panel_returns_the_columns_it_draws(
    simulated: tuple[str, SimulatedFleet], as_grafana: psycopg.Connection,
) -> None:
    checked = 0
    for uid, dashboard in grafana.load_all().items():
        values = grafana.resolve_variables(as_grafana, dashboard, start=SIM_START, end=SIM_END)
        for variable in grafana.variables(dashboard):
            if datasource_type(variable.get("datasource")) == grafana.POSTGRES:
                assert values[variable["name"]], f"{uid} variable {variable['name']} lists nothing"
        if uid == "jinsuan-site-detail":
            assert len(values["site"]) == 1, "the site detail dashboard shows one site"
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                if target_source(panel, target) != grafana.POSTGRES:
                    continue
                for interval in ("1h", "1d"):
                    where = f"{uid} {panel['title']!r} {target['refId']} at {interval}"
                    sql = grafana.expand(target["rawSql"], values, start=SIM_START, end=SIM_END,
                                         interval=interval)
                    try:
                        rows = grafana.rows(as_grafana, sql)
                    except psycopg.Error as exc:
                        pytest.fail(f"{where}: {exc}")
                    if uid not in FILLED_ELSEWHERE:
                        check_columns(where, panel, target, rows)
                        checked += 1
    assert checked >= 60


def test_the_read_only_role_reads_no_secrets(as_grafana: psycopg.Connection) -> None:
    for sql in ("SELECT * FROM api_keys", "SELECT public_key FROM agents",
                "SELECT signature FROM reports", "SELECT * FROM enrolment_tokens"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_grafana.execute(sql)


def test_sites_reporting_and_stale(
    simulated: tuple[str, SimulatedFleet], as_grafana: psycopg.Connection,
) -> None:
    _, fleet = simulated
    mine = {"site": [str(site.id) for site in fleet.sites.values()]}
    rows = grafana.panel_rows(as_grafana, "jinsuan-province-overview", "Sites reporting",
                              start=SIM_START, end=SIM_END, chosen=mine)
    state = {r["site"]: r["state"] for r in rows}
    assert state == {name: "stale" if site.spec.quiet_for else "reporting"
                     for name, site in fleet.sites.items()}
    quiet = next(r for r in rows if r["state"] == "stale")
    # Its last report was the last step before it went quiet.
    assert quiet["behind by"] == pytest.approx(
        (timedelta(hours=3) + fleet.step).total_seconds())
    (counts,) = grafana.panel_rows(as_grafana, "jinsuan-province-overview",
                                   "Sites reporting vs stale", start=SIM_START, end=SIM_END,
                                   chosen=mine)
    assert (counts["reporting"], counts["stale or silent"]) == (3, 1)
    # Seen from a moment before the site went quiet, it was reporting.
    earlier = SIM_END - timedelta(hours=4)
    rows = grafana.panel_rows(as_grafana, "jinsuan-province-overview", "Sites reporting",
                              start=SIM_START, end=earlier, chosen=mine)
    assert {r["state"] for r in rows} == {"reporting"}
    # The scheduling story's sites have no agent that ever reported.
    rows = grafana.panel_rows(as_grafana, "jinsuan-province-overview", "Sites reporting",
                              start=SIM_START, end=SIM_END)
    assert {r["site"]: r["state"] for r in rows if r["site"] not in state} == dict.fromkeys(
        ("ty-1", "ty-2", "dt-1"), "never reported")


def test_racks_by_data_centre_add_up_the_halls(
    simulated: tuple[str, SimulatedFleet], as_grafana: psycopg.Connection,
) -> None:
    _, fleet = simulated
    rows = grafana.panel_rows(as_grafana, "jinsuan-province-overview", "Racks by data centre",
                              start=SIM_START, end=SIM_END)
    got = {r["data centre"]: r for r in rows}
    for centre in {s.spec.data_centre for s in fleet.sites.values()}:
        halls = [s.spec for s in fleet.sites.values() if s.spec.data_centre == centre]
        # The simulator fills racks of 4 accelerators (accelerators_per_rack=4), model by model.
        racks = sum(sum(-(-n // 4) for n in hall.fleet.values()) for hall in halls)
        assert got[centre]["racks"] == racks
        # A hall whose agent went quiet has nothing connected in its latest hour.
        connected = sum(sum(h.fleet.values()) for h in halls if not h.quiet_for)
        assert got[centre]["accelerators"] == connected
    assert len([s for s in fleet.sites.values() if s.spec.data_centre == "太原一号数据中心"]) == 2


def test_accelerator_power_is_what_the_simulator_read(
    simulated: tuple[str, SimulatedFleet], as_grafana: psycopg.Connection,
) -> None:
    """Re-run the site's simulator for one hour and average its power readings by hand."""
    _, fleet = simulated
    site = fleet.sites["datong-cloud"]
    hour = SIM_END - timedelta(hours=5)
    rows = grafana.panel_rows(as_grafana, "jinsuan-site-detail", "Accelerator power",
                              start=hour, end=hour + timedelta(hours=1) - timedelta(seconds=1),
                              chosen={"site": [str(site.id)]})
    index = list(fleet.sites).index("datong-cloud")
    simulator = SimulatedSite(SimulatedSiteConfig(
        seed=index + 1, fleet=site.spec.fleet, accelerators_per_rack=4,
        pue_design=site.spec.pue_design), name="datong-cloud")
    readings: dict[str, list[float]] = {}
    moment = hour
    while moment < hour + timedelta(hours=1):
        for point in simulator.read(moment).points:
            if point.metric == "accelerator_power_watts":
                readings.setdefault(point.device, []).append(point.value)
        moment += fleet.step
    got = {r["metric"].rsplit(" ", 1)[-1]: r["value"] for r in rows}
    assert set(got) == set(readings) and len(got) == sum(site.spec.fleet.values())
    for device, values in readings.items():
        assert got[device] == pytest.approx(sum(values) / len(values))
    assert {float(r["time"]) for r in rows} == {hour.timestamp()}


def test_agent_lag_shows_the_backfill(
    simulated: tuple[str, SimulatedFleet], as_grafana: psycopg.Connection,
) -> None:
    """The simulated reports were made over 30 hours and stored just now: lag is their age."""
    _, fleet = simulated
    site = fleet.sites["taiyuan-hall-a"]
    rows = grafana.panel_rows(as_grafana, "jinsuan-site-detail", "Agent lag",
                              start=SIM_START, end=SIM_END, chosen={"site": [str(site.id)]})
    assert {r["metric"] for r in rows} == {"taiyuan-hall-a-agent"}
    first, last = rows[0], rows[-1]
    assert first["value"] > last["value"] > 0
    # The first bucket's worst lag is its first batch's: made 30 minutes after SIM_START.
    made = SIM_START + fleet.step * (simulated_fleet.STEPS_PER_BATCH - 1)
    age = (datetime.now(UTC) - made).total_seconds()
    assert float(first["value"]) == pytest.approx(age, abs=120)


@pytest.mark.parametrize(("uid", "title"), [
    ("jinsuan-province-overview", "Connected FP16 PFlops by city"),
    ("jinsuan-province-overview", "Connected FP16 PFlops by enterprise"),
    ("jinsuan-province-overview", "Accelerators and racks connected"),
    ("jinsuan-energy", "PUE per data centre"),
    ("jinsuan-energy", "PUE per data centre over the range"),
    ("jinsuan-energy", "IT and facility energy"),
    ("jinsuan-energy", "Data coverage"),
])
def test_site_series_from_daily_rollups_equal_those_from_hourly(
        conn: psycopg.Connection, uid: str, title: str) -> None:
    """Over more than 31 days these panels read the daily rollup; its figures are those of the
    hourly rows: energy and PUE over the hours where both roles were measured, means that count
    each hour once however many sites report in it."""
    with conn.transaction(force_rollback=True):
        fleet = Fleet(conn)
        for row in fleet.rows:
            conn.execute("SELECT roll_hour_for_dashboards(%s, %s)", (row["site_id"], row["hour"]))
        conn.execute(READONLY_SQL.read_text(encoding="utf-8"))
        conn.execute("SET LOCAL ROLE jinsuan_grafana")
        chosen = fleet.variables()
        first, last = datetime(2025, 12, 31, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
        daily = grafana.panel_rows(conn, uid, title, interval="1d",
                                   start=first - timedelta(days=30), end=last, chosen=chosen)
        hourly = grafana.panel_rows(conn, uid, title, interval="1d", start=first,
                                    end=last - timedelta(microseconds=1), chosen=chosen)
    key = ("time", "metric", "data centre")
    assert len(daily) == len(hourly) >= 2
    by_key = {tuple(r.get(k) for k in key): r for r in hourly}
    for row in daily:
        other = by_key[tuple(row.get(k) for k in key)]
        for column, value in row.items():
            if column not in (*key, "city"):
                assert float(value) == pytest.approx(float(other[column])), (row, column)


def _relations(plan: Mapping[str, Any]) -> Iterator[str]:
    if "Relation Name" in plan:
        yield plan["Relation Name"]
    for child in plan.get("Plans", []):
        yield from _relations(child)


def _reads_samples(conn: psycopg.Connection, sql: str) -> bool:
    ((explained,),) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchall()
    return any(re.match(r"samples(_|$)|_hyper_", name)
               for name in _relations(explained[0]["Plan"]))


@pytest.mark.parametrize("days", [2, 90, 365])
def test_no_panel_reads_raw_samples_over_more_than_a_day(
    simulated: tuple[str, SimulatedFleet], as_grafana: psycopg.Connection, days: int,
) -> None:
    """Raw samples grow with retention: over a longer range every panel reads rollups."""
    end = SIM_END
    start = end - timedelta(days=days)
    assert _reads_samples(as_grafana, "SELECT * FROM samples WHERE ts > now() - interval '1h'")
    for uid, dashboard in grafana.load_all().items():
        values = grafana.resolve_variables(as_grafana, dashboard, start=start, end=end)
        queries = [(v["name"], v["query"]) for v in grafana.variables(dashboard)
                   if datasource_type(v.get("datasource")) == grafana.POSTGRES]
        queries += [(p["title"], t["rawSql"]) for p in all_panels(dashboard)
                    for t in p.get("targets", []) if target_source(p, t) == grafana.POSTGRES]
        for title, sql in queries:
            for interval in ("5m", "2h", "1d"):
                expanded = grafana.expand(sql, values, start=start, end=end, interval=interval)
                assert not _reads_samples(as_grafana, expanded), \
                    f"{uid} {title!r} reads raw samples over {days} days at {interval}"


def test_a_panel_over_a_day_reads_the_raw_samples(as_grafana: psycopg.Connection) -> None:
    """The other side of the rule: a day or less is drawn from the samples themselves."""
    dashboard = grafana.load("jinsuan-site-detail")
    start = SIM_END - timedelta(hours=6)
    values = grafana.resolve_variables(as_grafana, dashboard, start=start, end=SIM_END)
    sql = grafana.expand(grafana.panel(dashboard, "Accelerator power")["targets"][0]["rawSql"],
                         values, start=start, end=SIM_END, interval="1m")
    assert _reads_samples(as_grafana, sql)


@pytest.mark.parametrize("interval", ["1h", "1d"])
@pytest.mark.parametrize("title", ["Accelerator power", "Accelerator utilisation",
                                   "Accelerator memory in use", "Accelerator health",
                                   "Meter power"])
def test_device_panels_from_rollups_equal_those_from_raw_samples(
    simulated: tuple[str, SimulatedFleet], as_grafana: psycopg.Connection, title: str,
    interval: str,
) -> None:
    """Buckets over the 30 simulated hours (from the hourly or the daily rollup) against the
    same buckets drawn from the raw samples one bucket at a time: the same figures, so the
    switch is invisible."""
    _, fleet = simulated
    chosen = {"site": [str(fleet.sites["datong-cloud"].id)]}
    end = SIM_END - timedelta(seconds=1)
    whole = grafana.panel_rows(as_grafana, "jinsuan-site-detail", title, start=SIM_START,
                               end=end, chosen=chosen, interval=interval)
    step = timedelta(seconds=grafana.seconds(interval))
    by_bucket: dict[tuple[Any, ...], dict[str, Any]] = {}
    edge = datetime.fromtimestamp(SIM_START.timestamp() // step.total_seconds()
                                  * step.total_seconds(), UTC)
    while edge < SIM_END:
        for row in grafana.panel_rows(as_grafana, "jinsuan-site-detail", title,
                                      start=max(edge, SIM_START), end=min(edge + step, end),
                                      chosen=chosen, interval=interval):
            by_bucket[(row["time"], row.get("metric"))] = row
        edge += step
    assert len(whole) == len(by_bucket) >= 2
    for row in whole:
        raw = by_bucket[(row["time"], row.get("metric"))]
        for column, value in row.items():
            if column not in ("time", "metric"):
                assert value == pytest.approx(raw[column], rel=1e-9), (title, row["time"], column)


# --- PromQL against a real Prometheus --------------------------------------------------------

def _platform_registry() -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

    from collectors.exposition import IngestMetrics, fleet_families
    from collectors.state import SiteState

    now = datetime.now(UTC)
    states = [
        SiteState(site_id=i, site=f"site-{i}", city=city, enterprise_id=1, enterprise="晋能",
                  as_of=now, last_report_at=now, racks=8, accelerators_inventory=64,
                  accelerators_reporting=64, accelerators_connected=60,
                  fp16_pflops_connected=59.4, fp16_estimated=0, fp16_unknown=0, it_kw=400.0,
                  facility_kw=500.0, window_s=3600, it_kwh=400.0, facility_kwh=500.0, pue=1.25,
                  coverage_it=1.0, coverage_facility=1.0)
        for i, city in ((1, "太原"), (2, "大同"))
    ]

    class Fleet(Collector):
        def collect(self) -> Iterator[Any]:
            yield from fleet_families(states)

    registry = CollectorRegistry()
    registry.register(Fleet())
    ingest = IngestMetrics(registry)
    ingest.batches.inc(3)
    ingest.samples.inc(3000)
    ingest.duplicates.inc()
    ingest.counter_resets.inc()
    ingest.rejected.labels(reason="signature").inc()
    ingest.latency.observe(0.02)
    return registry


AGENT_SITE = "site-1"


def _agent_registry() -> Any:
    from agents.exporter import AgentMetrics
    from jinsuan.contract.metrics import CATALOGUE, Scope
    from jinsuan.contract.wire import AcceleratorInfo, Inventory, MeterInfo

    metrics = AgentMetrics(AGENT_SITE)
    inventory = Inventory(
        racks=["A01"],
        accelerators=[AcceleratorInfo(uuid="GPU-1", model="NVIDIA H800", vendor="NVIDIA",
                                      rack="A01")],
        meters=[MeterInfo(id="ups-1", role="it", measures="ups_output"),
                MeterInfo(id="main", role="facility", measures="utility_input")],
    )
    devices = {Scope.ACCELERATOR: ["GPU-1"], Scope.METER: ["ups-1", "main"],
               Scope.SITE: ["site"]}
    values = {(name, device): 1.0 for name, metric in CATALOGUE.items()
              for device in devices[metric.scope]}
    metrics.latest.update(values, inventory)
    metrics.spool_pending.set(2)
    metrics.spool_pending_bytes.set(4096)
    metrics.batches_spooled.inc()
    metrics.batches_not_spooled.labels(reason="spool_full").inc()
    metrics.batches_sent.labels(status="200").inc()
    metrics.batches_rejected.labels(code="422").inc()
    metrics.upload_failures.labels(reason="timeout").inc()
    metrics.last_upload.set(time.time())
    metrics.cycles.inc()
    metrics.cycles_missed.inc()
    for probe in ("nvml", "modbus"):
        metrics.probe_duration.labels(probe=probe).set(0.2)
        metrics.probe_success.labels(probe=probe).set(1)
        metrics.probe_errors.labels(probe=probe).inc()
        metrics.probe_timeouts.labels(probe=probe).inc()
        metrics.points_discarded.labels(probe=probe).inc()
    return metrics.registry


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping registries built from the platform's and the agent's code."""
    from prometheus_client import start_http_server

    platform_server, _ = start_http_server(0, addr="127.0.0.1", registry=_platform_registry())
    agent_server, _ = start_http_server(0, addr="127.0.0.1", registry=_agent_registry())
    jobs = {"jinsuan-platform": [f"127.0.0.1:{platform_server.server_port}"],
            "jinsuan-agent": [f"127.0.0.1:{agent_server.server_port}"]}
    try:
        with running_prometheus(tmp_path_factory.mktemp("prometheus"), jobs) as url:
            yield url
    finally:
        platform_server.shutdown()
        agent_server.shutdown()


def promql(expr: str, variables: Mapping[str, str]) -> str:
    out = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    out = out.replace("$__range", "1h")

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise ValueError(f"${name} is not a variable of the dashboard")
        return variables[name]

    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", variable, out)
    assert "$" not in out
    return out


def _series_labels(url: str, metric: str) -> set[str]:
    answer = httpx.get(f"{url}/api/v1/series", params={"match[]": metric}, timeout=5).json()
    return {label for series in answer["data"] for label in series}


def _prom_variables(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Every variable as "All" for Prometheus (``.*``); the SQL-listed site name as the agent's."""
    values = {}
    for variable in dashboard["templating"]["list"]:
        sql = datasource_type(variable.get("datasource")) == grafana.POSTGRES
        values[variable["name"]] = AGENT_SITE if sql else ".*"
    return values


def test_every_promql_query_evaluates_with_data(prometheus: str) -> None:
    targets = [(uid, where, target) for uid, dashboard in grafana.load_all().items()
               for where, target in prom_queries(dashboard)]
    assert len(targets) >= 20
    assert {uid for uid, _, _ in targets} >= {"jinsuan-platform-operations",
                                                "jinsuan-site-detail"}
    for uid, where, target in targets:
        expr = promql(target["expr"], _prom_variables(grafana.load(uid)))
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
        assert answer.status_code == 200, f"{where}: {expr}: {answer.text}"
        assert answer.json()["data"]["result"], f"{where}: {expr} returned nothing"
        metrics = set(re.findall(r"\bjinsuan_\w+", expr))
        labels = set().union(*(_series_labels(prometheus, m) for m in metrics))
        assert labels, f"{where}: none of {metrics} was scraped"
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            used |= {label.strip() for label in group.split(",") if label.strip() != "le"}
        assert used <= labels, f"{where}: labels {used - labels} are not on {metrics}"
    for uid, dashboard in grafana.load_all().items():
        for variable in dashboard["templating"]["list"]:
            if datasource_type(variable.get("datasource")) != grafana.PROMETHEUS:
                continue
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"])
            assert match, variable["query"]
            selector = promql(match.group(1), _prom_variables(dashboard))
            answer = httpx.get(f"{prometheus}/api/v1/label/{match.group(2)}/values",
                               params={"match[]": selector}, timeout=5).json()
            assert answer["data"], f"{uid} variable {variable['name']} lists nothing"


def test_site_detail_picks_the_sites_agents_only(prometheus: str) -> None:
    """The agent panels join on jinsuan_agent_info: another site's name finds nothing."""
    dashboard = grafana.load("jinsuan-site-detail")
    for where, target in prom_queries(dashboard):
        other = {**_prom_variables(dashboard), "site_name": "some-other-site"}
        expr = promql(target["expr"], other)
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
        assert answer.json()["data"]["result"] == [], where


def test_dashboards_read_what_the_code_exports() -> None:
    """Each dashboard metric is one the platform or agent code defines (no Prometheus needed)."""
    from prometheus_client import generate_latest

    exported = set()
    for registry in (_platform_registry(), _agent_registry()):
        for line in generate_latest(registry).decode().splitlines():
            if line and not line.startswith("#"):
                exported.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))
    used = set()
    for dashboard in grafana.load_all().values():
        used |= {m for _, t in prom_queries(dashboard)
                 for m in re.findall(r"\bjinsuan_\w+", t["expr"])}
        used |= {m for v in dashboard["templating"]["list"]
                 for m in re.findall(r"\bjinsuan_\w+", v["query"])}
    assert used - exported == set()
    assert any(m.startswith("jinsuan_site_") for m in used)
    assert any(m.startswith("jinsuan_agent_spool") for m in used)
    assert "jinsuan_agent_info" in used
