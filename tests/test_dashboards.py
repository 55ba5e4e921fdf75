"""The Grafana dashboards: structure, and every query run for real.

SQL targets (and SQL variable queries) get Grafana's macros and variables substituted by
``grafana_sql`` and are executed against a migrated database holding a small known fleet, as the
read-only role of ``deploy/postgres/grafana-readonly.sql``; the figures the bureau reads (PUE,
year-to-date PUE and coverage, time-weighted PFlops, domestic share) are checked against the same
arithmetic done here by hand. PromQL targets are evaluated by a real Prometheus that scrapes
registries built from the platform's and the agent's own metric code.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
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

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
DATASOURCES = DASHBOARDS / "provisioning" / "datasources" / "jinsuan.yaml"
READONLY_SQL = ROOT / "deploy" / "postgres" / "grafana-readonly.sql"

RANGE_FROM = datetime(2026, 1, 1, tzinfo=UTC)
RANGE_TO = datetime(2026, 2, 1, tzinfo=UTC)
_INTERVALS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# --- loading -------------------------------------------------------------------------------

def load_dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS.glob("*.json"))
    }


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def datasource_type(ref: Mapping[str, Any] | None) -> str | None:
    return None if ref is None else ref.get("type")


def sql_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(where, sql)`` for every PostgreSQL target and variable query."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if datasource_type(target.get("datasource") or panel.get("datasource")) == "postgres":
                found.append((f"panel {panel['title']!r} {target['refId']}", target["rawSql"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if datasource_type(variable.get("datasource")) == "postgres":
            found.append((f"variable {variable['name']}", variable["query"]))
    return found


def prom_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            source = target.get("datasource") or panel.get("datasource")
            if datasource_type(source) == "prometheus":
                found.append((f"panel {panel['title']!r} {target['refId']}", target))
    return found


def panel_sql(dashboard: Mapping[str, Any], title: str) -> str:
    (panel,) = [p for p in all_panels(dashboard) if p["title"] == title]
    (target,) = panel["targets"]
    return target["rawSql"]


# --- Grafana's SQL macros and variables, the subset the dashboards use ------------------------

def _seconds(interval: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhd])'?", interval.strip())
    if match is None:
        raise ValueError(f"cannot read interval {interval!r}")
    return int(match.group(1)) * _INTERVALS[match.group(2)]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def grafana_sql(
    sql: str,
    variables: Mapping[str, list[str]],
    *,
    interval: str = "1h",
    start: datetime = RANGE_FROM,
    end: datetime = RANGE_TO,
) -> str:
    """Expand the query as Grafana's PostgreSQL datasource would; refuse anything unknown."""
    out = sql.replace("$__interval_ms", str(_seconds(interval) * 1000))
    out = out.replace("$__interval", interval)
    frm, to = _quote(start.isoformat()), _quote(end.isoformat())

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "timeFilter":
            return f"{args[0]} BETWEEN {frm} AND {to}"
        if name == "timeFrom":
            return frm
        if name == "timeTo":
            return to
        if name in ("timeGroup", "timeGroupAlias"):
            step = _seconds(args[1])
            grouped = f"floor(extract(epoch from {args[0]})/{step})*{step}"
            return grouped + (' AS "time"' if name == "timeGroupAlias" else "")
        raise ValueError(f"macro $__{name} is not supported by this substitution")

    out = re.sub(r"\$__(\w+)\(([^()]*)\)", macro, out)

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        form = match.group(2) or "sqlstring"
        if name not in variables:
            raise ValueError(f"${name} is not a variable of the dashboard")
        values = variables[name]
        if form == "sqlstring":
            return ",".join(_quote(v) for v in values)
        if form == "csv":
            return ",".join(values)
        raise ValueError(f"variable format {form!r} is not supported by this substitution")

    out = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)", variable, out)
    if "$" in out:
        raise ValueError(f"unexpanded $ left in {out!r}")
    return out


def test_substitution_expands_like_grafana() -> None:
    sql = (
        "SELECT $__timeGroupAlias(r.hour, $__interval), x FROM t "
        "WHERE $__timeFilter(r.hour) AND c IN (${city:sqlstring}) AND s IN (${site:csv}) "
        "AND y < $__timeTo() AND z = $city"
    )
    got = grafana_sql(sql, {"city": ["太原", "O'Hare"], "site": ["1", "2"]}, interval="1d")
    assert "floor(extract(epoch from r.hour)/86400)*86400 AS \"time\"" in got
    assert "r.hour BETWEEN '2026-01-01T00:00:00+00:00' AND '2026-02-01T00:00:00+00:00'" in got
    assert "c IN ('太原','O''Hare')" in got and "s IN (1,2)" in got
    assert "z = '太原','O''Hare'" in got
    with pytest.raises(ValueError, match="not a variable"):
        grafana_sql("SELECT $nope", {})
    with pytest.raises(ValueError, match="not supported"):
        grafana_sql("SELECT $__unixEpochFilter(t)", {})


# --- structure -------------------------------------------------------------------------------

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


def test_both_dashboards_exist_and_are_distinct() -> None:
    dashboards = load_dashboards()
    assert {"bureau-overview.json", "site-operations.json"} <= set(dashboards)
    uids = [d["uid"] for d in dashboards.values()]
    assert all(uids) and len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_dashboard_structure(name: str) -> None:
    dashboard = load_dashboards()[name]
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["title"]
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    uids = provisioned_uids()
    for where, ref in _datasource_refs(dashboard):
        assert ref.get("uid") in uids, f"{name} {where}: datasource {ref} is not provisioned"
        assert ref.get("type") == uids[ref["uid"]], f"{name} {where}: type does not match"
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{name} {panel['title']!r} runs off the grid"
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"{name} {panel['title']!r}: duplicate refIds"
        if panel["type"] not in ("row", "text"):
            assert panel.get("targets"), f"{name} {panel['title']!r} has no query"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert len(names) == len(set(names))


def test_bureau_dashboard_filters_by_city_enterprise_and_site() -> None:
    dashboard = load_dashboards()["bureau-overview.json"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["city", "enterprise", "site"]
    assert all(v["multi"] and v["includeAll"] for v in dashboard["templating"]["list"])
    # Every panel query is restricted to the selected sites.
    for where, sql in sql_queries(dashboard):
        if where.startswith("panel"):
            assert "${site:csv}" in sql, f"{where} ignores the site selection"


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


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_no_query_averages_pue(name: str) -> None:
    dashboard = load_dashboards()[name]
    queries = [sql for _, sql in sql_queries(dashboard)]
    queries += [target["expr"] for _, target in prom_queries(dashboard)]
    assert queries
    for query in queries:
        assert not averages_pue(query), f"{name}: averages PUE: {query}"


# --- SQL against the real schema -------------------------------------------------------------

def _hour(day: int, hour: int, month: int = 1, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


class Fleet:
    """A small known fleet: three sites in two cities, hourly rollups around New Year."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.sites: dict[str, int] = {}
        self.city = {"taiyuan-1": "太原", "taiyuan-2": "太原", "datong-1": "大同"}
        ent = {}
        for name in ("晋能算力", "Example Compute Co."):
            ent[name] = conn.execute(
                "INSERT INTO enterprises (name) VALUES (%s) RETURNING id", (name,)
            ).fetchone()[0]
        owner = {"taiyuan-1": "晋能算力", "taiyuan-2": "Example Compute Co.",
                 "datong-1": "晋能算力"}
        for site, city in self.city.items():
            self.sites[site] = conn.execute(
                "INSERT INTO sites (enterprise_id, name, city) VALUES (%s, %s, %s) RETURNING id",
                (ent[owner[site]], site, city),
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
            "site": [str(self.sites[s]) for s in chosen],
        }


@pytest.fixture
def grafana(conn: psycopg.Connection) -> Iterator[tuple[psycopg.Connection, Fleet]]:
    """The fleet, and the connection switched to the read-only role; all rolled back after."""
    with conn.transaction(force_rollback=True):
        fleet = Fleet(conn)
        conn.execute(READONLY_SQL.read_text(encoding="utf-8"))
        conn.execute("SET LOCAL ROLE jinsuan_grafana")
        yield conn, fleet


def run(conn: psycopg.Connection, sql: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_every_sql_query_runs_as_the_read_only_role(
    grafana: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = grafana
    queries = [
        (f"{name} {where}", sql)
        for name, dashboard in load_dashboards().items()
        for where, sql in sql_queries(dashboard)
    ]
    assert len(queries) >= 10
    for interval in ("1h", "1d"):
        for where, sql in queries:
            with conn.transaction():
                try:
                    rows = run(conn, grafana_sql(sql, fleet.variables(), interval=interval))
                except psycopg.Error as exc:
                    pytest.fail(f"{where}: {exc}")
            assert rows, f"{where} returned nothing for a fleet with data"
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("SELECT * FROM api_keys")


def test_read_only_role_cannot_write(grafana: tuple[psycopg.Connection, Fleet]) -> None:
    conn, _ = grafana
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("UPDATE rollup_site_hourly SET pue = 1")


def bureau() -> dict[str, Any]:
    return load_dashboards()["bureau-overview.json"]


def _ratio(rows: list[dict[str, Any]]) -> Decimal:
    paired = [r for r in rows if r["it_kwh"] is not None and r["facility_kwh"] is not None]
    return sum(r["facility_kwh"] for r in paired) / sum(r["it_kwh"] for r in paired)


def _in_range(row: Mapping[str, Any]) -> bool:
    return RANGE_FROM <= row["hour"] <= RANGE_TO


def test_pue_over_the_range_is_a_ratio_of_energy_sums(
    grafana: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = grafana
    sql = panel_sql(bureau(), "PUE per site over the range")
    got = {r["site"]: r["PUE"] for r in run(conn, grafana_sql(sql, fleet.variables()))}
    assert set(got) == set(fleet.sites)
    for site in fleet.sites:
        rows = [r for r in fleet.rows if r["site"] == site and _in_range(r)]
        expected = _ratio(rows)
        assert got[site] == pytest.approx(expected, rel=Decimal("1e-12"))
        mean = sum(r["pue"] for r in rows if r["pue"] is not None) / len(
            [r for r in rows if r["pue"] is not None]
        )
        assert abs(mean - expected) > Decimal("1e-4"), "fixture too uniform to tell them apart"


def test_pue_per_site_by_day_is_a_ratio_per_bucket(
    grafana: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = grafana
    sql = panel_sql(bureau(), "PUE per site")
    rows = run(conn, grafana_sql(sql, fleet.variables(["datong-1"]), interval="1d"))
    assert {r["metric"] for r in rows} == {"datong-1"}
    days = sorted({r["hour"].date() for r in fleet.rows if _in_range(r)})
    assert [datetime.fromtimestamp(float(r["time"]), UTC).date() for r in rows] == days
    for row in rows:
        day = datetime.fromtimestamp(float(row["time"]), UTC).date()
        mine = [r for r in fleet.rows
                if r["site"] == "datong-1" and _in_range(r) and r["hour"].date() == day]
        assert row["value"] == pytest.approx(_ratio(mine), rel=Decimal("1e-12"))


def test_year_to_date_table_uses_the_shanghai_year_and_flags_gaps(
    grafana: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = grafana
    sql = panel_sql(bureau(), "Sites: PUE and data coverage, year to date")
    end = datetime(2026, 1, 2, 6, tzinfo=UTC)
    got = {r["site"]: r for r in run(conn, grafana_sql(sql, fleet.variables(), end=end))}
    year_start = datetime(2026, 1, 1, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert year_start.astimezone(UTC) == datetime(2025, 12, 31, 16, tzinfo=UTC)
    for site in fleet.sites:
        rows = [r for r in fleet.rows if r["site"] == site and year_start <= r["hour"] < end]
        row = got[site]
        assert row["hours rolled up"] == len(rows) == 38
        assert row["PUE year to date"] == pytest.approx(_ratio(rows), rel=Decimal("1e-12"))
        assert row["coverage IT"] == pytest.approx(
            sum(r["coverage_it"] for r in rows) / len(rows)
        )
        gaps = [r for r in rows if min(r["coverage_it"], r["coverage_facility"],
                                       r["coverage_accelerators"]) < 0.95]
        assert row["hours with gaps"] == len(gaps) > 0
        assert row["city"] == fleet.city[site]
    assert got["taiyuan-1"]["IT metered at"] == "pdu_output, ups_output"
    assert got["datong-1"]["IT metered at"] is None
    # The table highlights coverage below 95%.
    (panel,) = [p for p in all_panels(bureau()) if p["title"].startswith("Sites: PUE")]
    (coverage,) = [o for o in panel["fieldConfig"]["overrides"]
                   if o["matcher"]["options"] == "^coverage"]
    steps = next(p["value"]["steps"] for p in coverage["properties"] if p["id"] == "thresholds")
    assert steps == [{"color": "red", "value": None}, {"color": "green", "value": 0.95}]


def test_connected_pflops_by_city_is_time_weighted(
    grafana: tuple[psycopg.Connection, Fleet],
) -> None:
    conn, fleet = grafana
    sql = panel_sql(bureau(), "Connected FP16 PFlops by city")
    rows = run(conn, grafana_sql(sql, fleet.variables(), interval="1d"))
    assert {r["metric"] for r in rows} == {"太原", "大同"}
    for row in rows:
        day = datetime.fromtimestamp(float(row["time"]), UTC).date()
        mine = [r for r in fleet.rows if _in_range(r) and r["hour"].date() == day
                and fleet.city[r["site"]] == row["metric"]]
        hours = {r["hour"] for r in mine}
        assert row["value"] == pytest.approx(sum(r["fp16_pflops"] for r in mine) / len(hours))


def test_latest_hour_and_domestic_share(grafana: tuple[psycopg.Connection, Fleet]) -> None:
    conn, fleet = grafana
    (latest,) = run(conn, grafana_sql(panel_sql(bureau(), "Connected in the latest hour"),
                                      fleet.variables()))
    last = max(r["hour"] for r in fleet.rows if _in_range(r))
    at_last = [r for r in fleet.rows if r["hour"] == last]
    assert latest["sites"] == 3
    assert latest["accelerators"] == sum(r["accelerators"] for r in at_last)
    assert latest["FP16 PFlops"] == pytest.approx(sum(r["fp16_pflops"] for r in at_last))

    (share,) = run(conn, grafana_sql(panel_sql(bureau(), "Domestic (信创) accelerators"),
                                     fleet.variables()))
    total = sum(a[5] for a in fleet.accelerators)
    domestic = sum(a[5] for a in fleet.accelerators if a[3])
    assert share["domestic share of accelerators"] == pytest.approx(domestic / total)
    tflops = sum(a[4] * a[5] for a in fleet.accelerators)
    domestic_tflops = sum(a[4] * a[5] for a in fleet.accelerators if a[3])
    assert share["domestic share of FP16 peak"] == pytest.approx(domestic_tflops / tflops)


def test_site_variable_follows_the_city(grafana: tuple[psycopg.Connection, Fleet]) -> None:
    conn, fleet = grafana
    (site_variable,) = [v for v in bureau()["templating"]["list"] if v["name"] == "site"]
    variables = {**fleet.variables(), "city": ["大同"]}
    rows = run(conn, grafana_sql(site_variable["query"], variables))
    assert [(r["__text"], r["__value"]) for r in rows] == [("datong-1", fleet.sites["datong-1"])]


# --- PromQL against a real Prometheus --------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def _agent_registry() -> Any:
    from agents.exporter import AgentMetrics
    from jinsuan.metrics import CATALOGUE, Scope
    from jinsuan.wire import AcceleratorInfo, Inventory, MeterInfo

    metrics = AgentMetrics("site-1")
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
    """A real Prometheus scraping the platform's and an agent's metric registries."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus)")
    from prometheus_client import start_http_server

    platform_server, _ = start_http_server(0, addr="127.0.0.1", registry=_platform_registry())
    agent_server, _ = start_http_server(0, addr="127.0.0.1", registry=_agent_registry())
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "jinsuan-platform",
             "static_configs": [{"targets": [f"127.0.0.1:{platform_server.server_port}"]}]},
            {"job_name": "jinsuan-agent",
             "static_configs": [{"targets": [f"127.0.0.1:{agent_server.server_port}"]}]},
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = _free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(work / "log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Ready once both targets have been scraped at least three times, so every rate() has
        # two points inside its window.
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (work / "log").read_text()
            try:
                response = httpx.get(f"{url}/api/v1/query", params={
                    "query": "min(count_over_time(up[1m]))"}, timeout=2)
                # Until its storage is open Prometheus answers 503 with a plain-text body.
                if response.status_code == 200:
                    result = response.json()["data"]["result"]
                    if result and float(result[0]["value"][1]) >= 3:
                        break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped both targets"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
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


def test_every_promql_query_evaluates_with_data(prometheus: str) -> None:
    dashboard = load_dashboards()["site-operations.json"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    match_all = dict.fromkeys(names, ".*")
    targets = prom_queries(dashboard)
    assert len(targets) >= 20
    for where, target in targets:
        expr = promql(target["expr"], match_all)
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
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"])
        assert match, variable["query"]
        selector = promql(match.group(1), match_all)
        answer = httpx.get(f"{prometheus}/api/v1/label/{match.group(2)}/values",
                           params={"match[]": selector}, timeout=5).json()
        assert answer["data"], f"variable {variable['name']}: {variable['query']} lists nothing"


def test_site_operations_reads_what_the_code_exports() -> None:
    """Each dashboard metric is one the platform or agent code defines (no Prometheus needed)."""
    from prometheus_client import generate_latest

    exported = set()
    for registry in (_platform_registry(), _agent_registry()):
        for line in generate_latest(registry).decode().splitlines():
            if line and not line.startswith("#"):
                exported.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))
    dashboard = load_dashboards()["site-operations.json"]
    used = {m for _, t in prom_queries(dashboard) for m in re.findall(r"\bjinsuan_\w+", t["expr"])}
    used |= {m for v in dashboard["templating"]["list"]
             for m in re.findall(r"\bjinsuan_\w+", v["query"])}
    assert used - exported == set()
    assert any(m.startswith("jinsuan_site_") for m in used)
    assert any(m.startswith("jinsuan_accelerator_") for m in used)
    assert any(m.startswith("jinsuan_agent_spool") for m in used)
