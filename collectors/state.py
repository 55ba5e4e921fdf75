"""The latest state of sites, computed from raw samples: what the live table and /metrics show.

Definitions (see ``shared/policy/MEASURES.md``):

- an accelerator is *reporting* when its ``accelerator_up`` series has a sample in the last
  ``connected_within``, and *connected* when the latest such sample is 1 (it answered its
  probe and is healthy); connected FP16 PFlops is the nameplate sum over connected
  accelerators, with those whose figure is an estimate, or unknown, counted apart;
- IT and facility kW are the sums of the latest power reading of each meter of that role
  within ``connected_within``;
- the window's PUE is facility energy over IT energy over ``window`` (ISO/IEC 30134-2),
  each meter's energy from its cumulative counter where it sends one, else from trapezoidal
  integration of its power (``collectors.energy``); coverage is the least covered meter's;
- racks are the physical racks in the site's inventory as its agents reported it.

Three queries serve any number of sites: site facts, each accelerator's latest health sample
(an index probe per accelerator), and the meters' samples over the window.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from collectors.energy import (
    Integral,
    coverage,
    integrate_counter,
    integrate_power,
    max_gap_for,
    pue,
)
from jinsuan.contract.metrics import CATALOGUE

_MARGIN = timedelta(minutes=15)  # samples fetched before the window, to interpolate its start
_MICROSECOND = timedelta(microseconds=1)  # timestamptz's resolution: (a, b] is [a + 1µs, b + 1µs)


@dataclass(frozen=True, slots=True)
class SiteState:
    site_id: int
    site: str
    city: str
    enterprise_id: int
    enterprise: str
    as_of: datetime
    last_report_at: datetime | None
    racks: int
    accelerators_inventory: int
    accelerators_reporting: int
    accelerators_connected: int
    fp16_pflops_connected: float
    fp16_estimated: int  # connected accelerators whose FP16 figure is an estimate
    fp16_unknown: int  # connected accelerators with no FP16 figure (not counted in PFlops)
    it_kw: float | None
    facility_kw: float | None
    window_s: float
    it_kwh: float | None
    facility_kwh: float | None
    pue: float | None
    coverage_it: float
    coverage_facility: float


@dataclass
class _Acc:
    reporting: int = 0
    connected: int = 0
    tflops: float = 0.0
    estimated: int = 0
    unknown: int = 0


@dataclass
class _Role:
    meters: int = 0
    kw: float | None = None
    joules: float = 0.0
    coverage: float = 1.0


def site_states(
    conn: psycopg.Connection,
    *,
    enterprise_id: int | None = None,
    city: str | None = None,
    site_ids: list[int] | None = None,
    window: timedelta = timedelta(hours=1),
    connected_within: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
) -> list[SiteState]:
    """The state of every site matching the filters (all given filters apply), by site name."""
    end = now or datetime.now(UTC)
    start = end - window
    sites = conn.execute(
        "SELECT s.id, s.name, s.city, s.enterprise_id, e.name,"
        " (SELECT max(g.last_report_at) FROM agents g WHERE g.site_id = s.id),"
        " (SELECT count(*) FROM racks r WHERE r.site_id = s.id),"
        " (SELECT count(*) FROM accelerators a WHERE a.site_id = s.id)"
        " FROM sites s JOIN enterprises e ON e.id = s.enterprise_id"
        " WHERE (%(ent)s::bigint IS NULL OR s.enterprise_id = %(ent)s)"
        " AND (%(city)s::text IS NULL OR s.city = %(city)s)"
        " AND (%(ids)s::bigint[] IS NULL OR s.id = ANY(%(ids)s))"
        " ORDER BY s.name",
        {"ent": enterprise_id, "city": city, "ids": site_ids},
    ).fetchall()
    if not sites:
        return []
    ids = [row[0] for row in sites]
    accelerators = _accelerators(conn, ids, end - connected_within, end)
    roles = _meters(conn, ids, start, end, end - connected_within)
    states = []
    for sid, name, site_city, ent_id, ent_name, last_report, racks, inventory in sites:
        acc = accelerators.get(sid, _Acc())
        it = roles.get((sid, "it"), _Role(coverage=0.0))
        facility = roles.get((sid, "facility"), _Role(coverage=0.0))
        it_j = it.joules if it.meters else None
        facility_j = facility.joules if facility.meters else None
        states.append(SiteState(
            site_id=sid, site=name, city=site_city, enterprise_id=ent_id, enterprise=ent_name,
            as_of=end, last_report_at=last_report, racks=racks,
            accelerators_inventory=inventory,
            accelerators_reporting=acc.reporting,
            accelerators_connected=acc.connected,
            fp16_pflops_connected=acc.tflops / 1000,
            fp16_estimated=acc.estimated,
            fp16_unknown=acc.unknown,
            it_kw=it.kw, facility_kw=facility.kw,
            window_s=window.total_seconds(),
            it_kwh=None if it_j is None else it_j / 3.6e6,
            facility_kwh=None if facility_j is None else facility_j / 3.6e6,
            pue=pue(facility_j, it_j),
            coverage_it=it.coverage, coverage_facility=facility.coverage,
        ))
    return states


def _accelerators(
    conn: psycopg.Connection, site_ids: list[int], since: datetime, end: datetime
) -> dict[int, _Acc]:
    rows = conn.execute(
        "SELECT a.site_id, a.fp16_tflops, a.fp16_estimated, latest.value"
        " FROM accelerators a"
        " JOIN series s ON s.site_id = a.site_id AND s.metric = 'accelerator_up'"
        "  AND s.device = a.uuid"
        " CROSS JOIN LATERAL samples_last(s.id, %s, %s, 1) latest"
        " WHERE a.site_id = ANY(%s)",
        (since + _MICROSECOND, end + _MICROSECOND, site_ids),  # (since, end]
    ).fetchall()
    out: dict[int, _Acc] = defaultdict(_Acc)
    for site_id, tflops, estimated, up in rows:
        acc = out[site_id]
        acc.reporting += 1
        if up != 1:
            continue
        acc.connected += 1
        if tflops is None:
            acc.unknown += 1
        else:
            acc.tflops += tflops
            acc.estimated += estimated
    return out


def _meters(
    conn: psycopg.Connection,
    site_ids: list[int],
    start: datetime,
    end: datetime,
    power_since: datetime,
) -> dict[tuple[int, str], _Role]:
    """Per (site, role): meter count, latest kW, energy over ``[start, end)`` and coverage."""
    rows = conn.execute(
        "SELECT m.site_id, m.id, m.role, s.metric, extract(epoch FROM x.ts)::float8, x.value"
        " FROM meters m"
        " JOIN series s ON s.site_id = m.site_id AND s.device = m.id"
        "  AND s.metric IN ('meter_energy_joules_total', 'meter_power_watts')"
        " LEFT JOIN samples x ON x.series_id = s.id AND x.ts >= %s AND x.ts <= %s"
        " WHERE m.site_id = ANY(%s)"
        " ORDER BY s.id, x.ts",
        (start - _MARGIN, end, site_ids),
    ).fetchall()
    points: dict[tuple[int, str, str], dict[str, list[tuple[float, float]]]] = defaultdict(
        lambda: {"meter_energy_joules_total": [], "meter_power_watts": []}
    )
    for site_id, meter, role, metric, t, value in rows:
        series = points[(site_id, role, meter)][metric]
        if t is not None:
            series.append((t, value))
    lo, hi, fresh = start.timestamp(), end.timestamp(), power_since.timestamp()
    out: dict[tuple[int, str], _Role] = {}
    for (site_id, role, _meter), by_metric in points.items():
        agg = out.setdefault((site_id, role), _Role())
        agg.meters += 1
        counter, power = by_metric["meter_energy_joules_total"], by_metric["meter_power_watts"]
        if counter:
            energy = integrate_counter(counter, lo, hi, max_gap_for([t for t, _ in counter]),
                                       CATALOGUE["meter_energy_joules_total"].max_rate)
        elif power:
            energy = integrate_power(power, lo, hi, max_gap_for([t for t, _ in power]))
        else:
            energy = Integral(0.0, 0.0)
        agg.joules += energy.joules
        agg.coverage = min(agg.coverage, coverage(energy.covered_s, lo, hi))
        if power and power[-1][0] > fresh:
            agg.kw = (agg.kw or 0.0) + power[-1][1] / 1000
    return out
