"""The month's figures, fetched with the dashboards' own panel queries (nothing re-written here).

Each figure is the rows of one panel, run by :func:`dashboards.grafana.panel_rows` for the
month's range with daily buckets, exactly as Grafana runs it when the bureau picks that month.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg

from dashboards import grafana
from dashboards.report.month import Month, ReportError

PROVINCE = "jinsuan-province-overview"
ENERGY = "jinsuan-energy"
SCHEDULING = "jinsuan-scheduling"
INTERVAL = "1d"

Rows = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Capacity:
    latest: dict[str, Any]
    by_city: Rows
    by_enterprise: Rows
    models: Rows
    domestic: dict[str, Any]
    racks: Rows
    sites: Rows

    @property
    def empty(self) -> bool:
        return not self.by_city


@dataclass(frozen=True, slots=True)
class Energy:
    pue: dict[str, Any]
    annual: dict[str, Any]
    totals: dict[str, Any]
    gaps: dict[str, Any]
    pue_daily: Rows
    per_centre: Rows
    energy_daily: Rows
    coverage_daily: Rows
    year_to_date: Rows

    @property
    def empty(self) -> bool:
        return not self.energy_daily


@dataclass(frozen=True, slots=True)
class Jobs:
    outcomes: Rows
    placements: Rows
    usage: Rows
    wait: dict[str, Any]
    requeues: Rows

    @property
    def empty(self) -> bool:
        return not (self.outcomes or self.placements or self.usage)

    def ended(self, state: str) -> int:
        """Jobs that ended in ``state`` (succeeded, failed, cancelled) over the month."""
        return sum(int(row[state]) for row in self.outcomes)

    def placed_by_site(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for row in self.placements:
            totals[str(row["metric"])] = totals.get(str(row["metric"]), 0) + int(row["value"])
        return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True, slots=True)
class MonthFigures:
    month: Month
    chosen: dict[str, list[str]]
    capacity: Capacity
    energy: Energy
    jobs: Jobs


def fetch(conn: psycopg.Connection, month: Month,
          chosen: Mapping[str, list[str]] | None = None) -> MonthFigures:
    """Every panel the report draws, for ``month``; ``chosen`` as the dashboards' variables."""
    chosen = dict(chosen or {})
    _check_chosen(conn, month, chosen)
    # Each dashboard's variables once, not again for every panel read from it.
    resolved = {uid: grafana.resolve_variables(conn, grafana.load(uid), chosen,
                                               start=month.start, end=month.last_instant)
                for uid in (PROVINCE, ENERGY, SCHEDULING)}

    def rows(uid: str, title: str) -> Rows:
        return grafana.panel_rows(conn, uid, title, start=month.start, end=month.last_instant,
                                  interval=INTERVAL, chosen=resolved[uid])

    def one(uid: str, title: str) -> dict[str, Any]:
        found = rows(uid, title)
        return found[0] if found else {}

    capacity = Capacity(
        latest=one(PROVINCE, "Connected in the latest hour"),
        by_city=rows(PROVINCE, "Connected FP16 PFlops by city"),
        by_enterprise=rows(PROVINCE, "Connected FP16 PFlops by enterprise"),
        models=rows(PROVINCE, "Accelerators by model"),
        domestic=one(PROVINCE, "Domestic (信创) accelerators"),
        racks=rows(PROVINCE, "Racks by data centre"),
        sites=rows(PROVINCE, "Sites reporting"),
    )
    energy = Energy(
        pue=one(ENERGY, "PUE of the selection over the range"),
        annual=one(ENERGY, "Annual PUE, year to date"),
        totals=one(ENERGY, "Energy over the range"),
        gaps=one(ENERGY, "Site-hours with gaps"),
        pue_daily=rows(ENERGY, "PUE per data centre"),
        per_centre=rows(ENERGY, "PUE per data centre over the range"),
        energy_daily=rows(ENERGY, "IT and facility energy"),
        coverage_daily=rows(ENERGY, "Data coverage"),
        year_to_date=rows(ENERGY, "Data centres: PUE and data coverage, year to date"),
    )
    jobs = Jobs(
        outcomes=rows(SCHEDULING, "Job outcomes"),
        placements=rows(SCHEDULING, "Placements by site"),
        usage=rows(SCHEDULING, "Usage by tenant"),
        wait=one(SCHEDULING, "Wait to first placement over the range"),
        requeues=rows(SCHEDULING, "Requeues after site failures"),
    )
    return MonthFigures(month, chosen, capacity, energy, jobs)


def _check_chosen(conn: psycopg.Connection, month: Month, chosen: Mapping[str, list[str]]) -> None:
    """Refuse a filter value the dashboards' own variable would not offer (a typo, say)."""
    offered = grafana.resolve_variables(conn, grafana.load(PROVINCE), start=month.start,
                                        end=month.last_instant)
    for name, values in chosen.items():
        if name not in offered:
            raise ReportError(f"{name!r} is not a filter of the dashboards "
                              f"(they have {', '.join(sorted(offered))})")
        unknown = [v for v in values if v not in offered[name]]
        if unknown:
            listed = ", ".join(offered[name]) or "none"
            raise ReportError(f"{name} {', '.join(unknown)} is not known (known: {listed})")


def bucket_start(row: Mapping[str, Any]) -> datetime:
    """The UTC start of a ``$__timeGroupAlias`` bucket (the query returns epoch seconds)."""
    return datetime.fromtimestamp(float(row["time"]), UTC)


def series(rows: Rows) -> dict[str, list[tuple[datetime, float]]]:
    """Grafana's long format (time, metric, value) as one series per metric."""
    out: dict[str, list[tuple[datetime, float]]] = {}
    for row in rows:
        if row["value"] is not None:
            out.setdefault(str(row["metric"]), []).append((bucket_start(row), float(row["value"])))
    return out


def number(value: Any) -> Decimal | None:
    """A figure from a row as Decimal (psycopg gives numeric as Decimal, float8 as float)."""
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))
