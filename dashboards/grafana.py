"""Run a dashboard's SQL the way Grafana's PostgreSQL datasource does, outside Grafana.

Grafana rewrites a panel's query before sending it: ``$__timeFilter(col)`` and friends become
the dashboard's time range, ``$__interval`` the bucket width, and ``$var`` / ``${var:csv}`` the
values chosen in the dashboard's variables ("All" meaning every value the variable's own query
lists). :func:`expand` does that rewrite for the subset of macros these dashboards use, and
refuses anything else, so a panel that would not run in Grafana does not run here either.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

DASHBOARD_DIR = Path(__file__).resolve().parent
POSTGRES = "postgres"
PROMETHEUS = "prometheus"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DashboardError(ValueError):
    """A dashboard or query that Grafana would refuse or not understand."""


@cache
def load_all() -> dict[str, dict[str, Any]]:
    """Every dashboard, by uid; two files with one uid are refused, as Grafana refuses them."""
    out: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        uid = dashboard["uid"]
        if uid in out:
            raise DashboardError(f"{path.name} and {files[uid]} both have the uid {uid!r}")
        out[uid], files[uid] = dashboard, path.name
    return out


def load(uid: str) -> dict[str, Any]:
    try:
        return load_all()[uid]
    except KeyError:
        raise DashboardError(f"no dashboard with uid {uid!r} in {DASHBOARD_DIR}") from None


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel(dashboard: Mapping[str, Any], title: str) -> dict[str, Any]:
    found = [p for p in all_panels(dashboard) if p.get("title") == title]
    if len(found) != 1:
        raise DashboardError(
            f"dashboard {dashboard['uid']!r} has {len(found)} panels titled {title!r}")
    return found[0]


def datasource_type(ref: Mapping[str, Any] | None) -> str | None:
    return None if ref is None else ref.get("type")


def target_source(panel: Mapping[str, Any], target: Mapping[str, Any]) -> str | None:
    return datasource_type(target.get("datasource") or panel.get("datasource"))


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


def seconds(interval: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhd])'?", interval.strip())
    if match is None:
        raise DashboardError(f"cannot read interval {interval!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand(
    sql: str,
    values: Mapping[str, list[str]],
    *,
    start: datetime,
    end: datetime,
    interval: str = "1h",
) -> str:
    """``sql`` with Grafana's macros and variables substituted; unknown ones are refused."""
    out = sql.replace("$__interval_ms", str(seconds(interval) * 1000))
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
            step = seconds(args[1])
            grouped = f"floor(extract(epoch from {args[0]})/{step})*{step}"
            return grouped + (' AS "time"' if name == "timeGroupAlias" else "")
        raise DashboardError(f"macro $__{name} is not supported by this substitution")

    out = re.sub(r"\$__(\w+)\(([^()]*)\)", macro, out)

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        form = match.group(2) or "sqlstring"
        if name not in values:
            raise DashboardError(f"${name} is not a variable of the dashboard")
        chosen = values[name]
        if not chosen:  # Grafana sends an empty selection as a value that matches nothing
            return "NULL"
        if form == "sqlstring":
            return ",".join(_quote(v) for v in chosen)
        if form == "csv":
            return ",".join(chosen)
        raise DashboardError(f"variable format {form!r} is not supported by this substitution")

    out = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)", variable, out)
    if "$" in out:
        raise DashboardError(f"unexpanded $ left in {out!r}")
    return out


def rows(conn: psycopg.Connection, sql: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql)  # type: ignore[arg-type]  # built by expand(), not from user input
        return cur.fetchall()


def resolve_variables(
    conn: psycopg.Connection,
    dashboard: Mapping[str, Any],
    chosen: Mapping[str, list[str]] | None = None,
    *,
    start: datetime,
    end: datetime,
) -> dict[str, list[str]]:
    """The value of each SQL variable: as ``chosen``, else what Grafana would pick.

    That is "All" (every value its query lists) where the variable offers it, and its first
    value where it does not (a single-choice variable, like the site detail's site). Variables
    are resolved in order, so a later one's query sees the earlier ones' values, as Grafana's
    chained variables do.
    """
    chosen = chosen or {}
    resolved: dict[str, list[str]] = {}
    for variable in variables(dashboard):
        name = variable["name"]
        if name in chosen:
            resolved[name] = list(chosen[name])
        elif variable.get("type") == "query" and datasource_type(
                variable.get("datasource")) == POSTGRES:
            listed = rows(conn, expand(variable["query"], resolved, start=start, end=end))
            listed_values = [
                str(row["__value"] if "__value" in row else next(iter(row.values())))
                for row in listed
            ]
            offers_all = variable.get("includeAll") or variable.get("multi")
            resolved[name] = listed_values if offers_all else listed_values[:1]
    return resolved


def panel_rows(
    conn: psycopg.Connection,
    uid: str,
    title: str,
    *,
    start: datetime,
    end: datetime,
    interval: str = "1h",
    chosen: Mapping[str, list[str]] | None = None,
    ref: str = "A",
) -> list[dict[str, Any]]:
    """Rows of one SQL target of one panel, for the range, as Grafana would fetch them."""
    dashboard = load(uid)
    found = panel(dashboard, title)
    targets = [t for t in found.get("targets", []) if t.get("refId") == ref]
    if len(targets) != 1 or target_source(found, targets[0]) != POSTGRES:
        raise DashboardError(f"panel {title!r} of {uid!r} has no SQL target {ref!r}")
    values = resolve_variables(conn, dashboard, chosen, start=start, end=end)
    return rows(conn, expand(targets[0]["rawSql"], values, start=start, end=end,
                             interval=interval))
