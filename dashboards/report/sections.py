"""The report's sections, in order: title page, capacity, energy and PUE, jobs, method.

Each section reads the month's figures (rows of dashboard panels) and writes onto the
document; a section with no figures for the month says so in words, never as a blank chart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from dashboards import grafana
from dashboards.report import charts
from dashboards.report.canvas import Report
from dashboards.report.figures import ENERGY, PROVINCE, SCHEDULING, number
from dashboards.report.month import Month
from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel.pdf.layout import Column

WARNING = "#8a1c1c"
MUTED = "#5a6270"
ACCENT = "#1f4e8c"


# --- formatting -------------------------------------------------------------------------------

def fmt(value: Any, places: int = 2) -> str:
    """A figure with thousands separators, or an en dash where there is none."""
    figure = number(value)
    return "–" if figure is None else f"{figure:,.{places}f}"


def share(value: Any) -> str:
    figure = number(value)
    return "–" if figure is None else f"{figure * 100:.1f}%"


def mwh(kwh: Any) -> Decimal | None:
    figure = number(kwh)
    return None if figure is None else figure / 1000


def yuan(value: Any) -> str:
    figure = number(value)
    return "–" if figure is None else f"¥{figure:,.2f}"


def duration(seconds: Any) -> str:
    figure = number(seconds)
    if figure is None:
        return "–"
    seconds = int(figure)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def month_name(month: Month) -> str:
    return datetime(month.year, month.month, 1).strftime("%B %Y")


def when(value: datetime | None) -> str:
    return "never" if value is None else f"{value.astimezone(SHANGHAI):%Y-%m-%d %H:%M}"


def nothing(report: Report, sentence: str) -> None:
    report.doc.paragraph(f"{month_name(report.month)}: {sentence}", size=10, color=WARNING)


NO_TELEMETRY = ("no figures: the store holds no rolled-up hours for this month and selection "
                "(no site reported, or the hourly rollup has not run yet).")

NO_JOBS = "no job ended, was placed or was charged in this month."


# --- title page -------------------------------------------------------------------------------

def title_page(report: Report) -> None:
    doc, figures, month = report.doc, report.figures, report.month
    capacity, energy, jobs = figures.capacity, figures.energy, figures.jobs
    doc.y += 0.5
    doc.paragraph("晋算 jinsuan · Shanxi integrated compute platform", size=11, color=MUTED)
    doc.paragraph(f"Monthly report, {month_name(month)}", size=24, color=ACCENT)
    doc.paragraph("Compute capacity, energy and PUE, and jobs, for the Data Bureau (数据局)",
                  size=12)
    doc.y += 0.1
    start, end = month.start.astimezone(SHANGHAI), month.end.astimezone(SHANGHAI)
    selection = "; ".join(f"{name.replace('_', ' ')}: {', '.join(values)}"
                          for name, values in figures.chosen.items())
    doc.bullets([
        f"Month: {month.label}, from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} Beijing "
        f"time (UTC+8), that is {month.start:%Y-%m-%d %H:%M} to {month.end:%Y-%m-%d %H:%M} UTC.",
        f"Selection: {selection or 'all cities, enterprises, data centres and sites'}.",
        f"Generated: {report.generated:%Y-%m-%d %H:%M:%S} Beijing time.",
        f"Data source: {report.source or 'the platform database'}, through the queries of the "
        f"Grafana dashboards {PROVINCE}, {ENERGY} and {SCHEDULING}.",
    ])
    doc.y += 0.1
    doc.subheading("The month at a glance", keep=3.0)
    if capacity.empty and energy.empty:
        nothing(report, NO_TELEMETRY)
    else:
        latest = capacity.latest
        doc.tiles([
            ("FP16 PFlops connected, end of month", fmt(latest.get("FP16 PFlops"))),
            ("accelerators connected, end of month", fmt(latest.get("accelerators"), 0)),
            ("racks, end of month", fmt(latest.get("racks"), 0)),
            ("domestic (信创) share of accelerators",
             share(capacity.domestic.get("domestic share of accelerators"))),
            (f"PUE of the month (measure 4: {report.target})", fmt(energy.pue.get("PUE"), 3)),
            ("annual PUE, year to date", fmt(energy.annual.get("annual PUE, year to date"), 3)),
            ("IT energy, MWh", fmt(mwh(energy.totals.get("IT energy")), 1)),
            ("facility energy, MWh", fmt(mwh(energy.totals.get("facility energy")), 1)),
            ("site-hours with gaps (coverage < 95%)",
             f"{fmt(energy.gaps.get('site-hours with gaps'), 0)} of "
             f"{fmt(energy.gaps.get('site-hours'), 0)}"),
        ])
    if jobs.empty:
        nothing(report, NO_JOBS)
    else:
        doc.tiles([
            ("jobs succeeded", fmt(jobs.ended("succeeded"), 0)),
            ("jobs failed", fmt(jobs.ended("failed"), 0)),
            ("usage charged", yuan(sum(number(r["cost yuan"]) or 0 for r in jobs.usage))),
        ])
    doc.subheading("Contents", keep=1.2)
    doc.bullets([
        "Capacity: connected FP16 PFlops by city and by enterprise, racks by data centre, "
        "accelerators by model and the domestic share, sites reporting.",
        f"Energy and PUE: PUE per data centre against the {report.target} of measure 4, day by "
        "day, IT and facility energy, data coverage and hours with gaps, year to date.",
        "Jobs: outcomes, placements by site, requeues, usage and cost by tenant.",
        "How these figures are measured.",
    ])


# --- capacity ---------------------------------------------------------------------------------

def capacity(report: Report) -> None:
    doc, capacity = report.doc, report.figures.capacity
    doc.new_page()
    doc.heading("Capacity")
    if capacity.empty:
        nothing(report, NO_TELEMETRY)
        return
    latest, domestic = capacity.latest, capacity.domestic
    doc.paragraph(
        f"At the end of the month (each site's latest hour in it) {fmt(latest['sites'], 0)} "
        f"sites had {fmt(latest['FP16 PFlops'])} FP16 PFlops connected on "
        f"{fmt(latest['accelerators'], 0)} accelerators in {fmt(latest['racks'], 0)} racks. "
        f"Domestic (信创) accelerators were "
        f"{share(domestic.get('domestic share of accelerators'))} of the accelerators seen in "
        f"the month and {share(domestic.get('domestic share of FP16 peak'))} of their FP16 peak.")
    report.chart("capacity-by-city", "Connected FP16 PFlops by city", charts.capacity_by_city,
                 caption="Daily mean of the hourly connected FP16 peak (dense, at nameplate).")
    report.chart("capacity-by-enterprise", "Connected FP16 PFlops by enterprise",
                 charts.capacity_by_enterprise)
    doc.subheading("Racks by data centre, end of month")
    doc.table([
        Column("data centre", lambda r: str(r["data centre"]), 0.34),
        Column("city", lambda r: str(r["city"]), 0.14),
        Column("racks", lambda r: fmt(r["racks"], 0), 0.16, "right"),
        Column("accelerators", lambda r: fmt(r["accelerators"], 0), 0.18, "right"),
        Column("FP16 PFlops", lambda r: fmt(r["FP16 PFlops"]), 0.18, "right"),
    ], capacity.racks)
    labels = [f"{r['model']} ({r['vendor']})" for r in capacity.models]
    if labels:
        report.chart("accelerators-by-model", "Accelerators by model",
                     charts.accelerators_by_model, labels=labels, legend=False,
                     height=min(0.9 + 0.3 * len(labels), 4.0))
        doc.table([
            Column("model", lambda r: str(r["model"]), 0.30),
            Column("vendor", lambda r: str(r["vendor"]), 0.14),
            Column("domestic (信创)", lambda r: "yes" if r["domestic"] else "no", 0.14, "center"),
            Column("accelerators", lambda r: fmt(r["accelerators"], 0), 0.14, "right"),
            Column("FP16 TFLOPS each", lambda r: fmt(r["FP16 TFLOPS each"], 1)
                   + (" (estimated)" if r["estimated"] else ""), 0.28, "right"),
        ], capacity.models)
    else:
        doc.subheading("Accelerators by model")
        nothing(report, "no accelerator inventory was reported in this month.")
    doc.subheading("Sites: last report before the end of the month")
    doc.table([
        Column("site", lambda r: str(r["site"]), 0.19),
        Column("city", lambda r: str(r["city"]), 0.08),
        Column("enterprise", lambda r: str(r["enterprise"]), 0.13),
        Column("data centre", lambda r: str(r["data centre"]), 0.2),
        Column("last report (Beijing)", lambda r: when(r["last report"]), 0.17),
        Column("before the end by", lambda r: duration(r["behind by"]), 0.13, "right"),
        Column("state", lambda r: str(r["state"]), 0.1, "right"),
    ], capacity.sites)
    doc.paragraph("State as the dashboard judges it at the month's last minute: reporting if "
                  "the last report is at most 15 minutes older, stale otherwise.", size=7.5,
                  color=MUTED)


# --- energy -----------------------------------------------------------------------------------

def energy(report: Report) -> None:
    doc, energy, month, target = report.doc, report.figures.energy, report.month, report.target
    doc.new_page()
    doc.heading("Energy and PUE")
    if energy.empty:
        nothing(report, NO_TELEMETRY)
        return
    measured = [r for r in energy.per_centre if r["PUE"] is not None]
    below = [r for r in measured if r["PUE"] < target]
    doc.paragraph(
        f"PUE of the month over the selection: {fmt(energy.pue.get('PUE'), 3)} (Σ facility "
        f"energy ÷ Σ IT energy over the hours in which both were measured); for the year to "
        f"the end of the month {fmt(energy.annual.get('annual PUE, year to date'), 3)}. "
        f"Data centres below {target} over the month: {len(below)} of {len(measured)}. "
        f"Measure 4 of 晋政办发〔2024〕35号 rewards a data centre whose measured annual PUE first "
        f"falls below {target}; a month below it is an indication, not a qualification.")
    _pue_per_centre(report, measured)
    report.chart("energy-daily", "IT and facility energy", charts.energy_daily,
                 caption=f"Month: IT {fmt(mwh(energy.totals.get('IT energy')), 1)} MWh, facility "
                 f"{fmt(mwh(energy.totals.get('facility energy')), 1)} MWh. Day buckets are UTC "
                 f"days (08:00 to 08:00 Beijing time), so the first and last are part-days.")
    gaps = energy.gaps
    report.chart("coverage-daily", "Data coverage", charts.coverage_daily,
                 caption=f"Mean share of each hour backed by samples. Shaded: day buckets with a "
                 f"mean below 95%. Site-hours with gaps in the month: "
                 f"{fmt(gaps.get('site-hours with gaps'), 0)} of {fmt(gaps.get('site-hours'), 0)}.")
    doc.subheading(f"Data centres: PUE and data coverage, year to date (to the end of "
                   f"{month.label})")
    doc.table([
        Column("data centre", lambda r: str(r["data centre"]), 0.19),
        Column("enterprise", lambda r: str(r["enterprise"]), 0.12),
        Column("PUE year to date", lambda r: fmt(r["PUE year to date"], 3), 0.09, "right"),
        Column("IT MWh", lambda r: fmt(r["IT MWh"], 1), 0.08, "right"),
        Column("IT metered at", lambda r: str(r["IT metered at"] or "–"), 0.11),
        Column("hours", lambda r: fmt(r["hours rolled up"], 0), 0.07, "right"),
        Column("coverage IT", lambda r: share(r["coverage IT"]), 0.09, "right"),
        Column("coverage facility", lambda r: share(r["coverage facility"]), 0.09, "right"),
        Column("coverage accel.", lambda r: share(r["coverage accelerators"]), 0.08, "right"),
        Column("hours with gaps", lambda r: fmt(r["hours with gaps"], 0), 0.08, "right"),
    ], energy.year_to_date)


def _pue_per_centre(report: Report, measured: list[dict[str, Any]]) -> None:
    doc, target, month = report.doc, report.target, report.month
    if not measured:
        doc.subheading("PUE per data centre")
        nothing(report, "no data centre had both IT and facility energy measured in any hour.")
        return
    report.chart("pue-by-centre", "PUE per data centre over the month",
                 partial(charts.pue_by_centre, target=target),
                 labels=[str(r["data centre"]) for r in measured], legend=False,
                 height=min(1.0 + 0.35 * len(measured), 4.0),
                 caption=f"Green: below {target}; orange: at or above it. Dashed: {target}.")
    doc.table([
        Column("data centre", lambda r: str(r["data centre"]), 0.3),
        Column("city", lambda r: str(r["city"]), 0.1),
        Column("PUE", lambda r: fmt(r["PUE"], 3), 0.12, "right"),
        Column("IT MWh", lambda r: fmt(r["IT MWh"], 1), 0.15, "right"),
        Column("facility MWh", lambda r: fmt(r["facility MWh"], 1), 0.15, "right"),
        Column("hours measured", lambda r: f"{fmt(r['hours measured'], 0)} of {month.hours}",
               0.18, "right"),
    ], report.figures.energy.per_centre)
    report.chart("pue-daily", "PUE per data centre, day by day",
                 partial(charts.pue_daily, target=target))


# --- jobs -------------------------------------------------------------------------------------

def jobs(report: Report) -> None:
    doc, jobs = report.doc, report.figures.jobs
    doc.new_page()
    doc.heading("Jobs")
    if jobs.empty:
        nothing(report, NO_JOBS)
        return
    placed = jobs.placed_by_site()
    ended = {state: jobs.ended(state) for state, _ in charts.OUTCOMES}
    doc.paragraph(
        f"Jobs ended in the month: {sum(ended.values())} ({ended['succeeded']} succeeded, "
        f"{ended['failed']} failed, {ended['cancelled']} cancelled). Runs placed: "
        f"{sum(placed.values())}, on {len(placed)} sites. Wait from submission to first "
        f"placement: {duration(jobs.wait.get('p50'))} at the median, "
        f"{duration(jobs.wait.get('p95'))} at the 95th percentile.")
    if jobs.outcomes:
        report.chart("job-outcomes", "Job outcomes", charts.job_outcomes)
    if placed:
        report.chart("placements-by-site", "Placements by site", charts.placements_by_site,
                     labels=list(placed), legend=False, height=min(0.9 + 0.3 * len(placed), 4.0))
    doc.subheading("Usage by tenant", keep=0.8)
    if jobs.usage:
        total = {key: sum(number(r[key]) or Decimal(0) for r in jobs.usage)
                 for key in ("jobs", "accelerator-hours", "FP16 PFlop-hours", "cost yuan")}
        energy = [number(r["energy kWh"]) for r in jobs.usage]
        total["energy kWh"] = None if None in energy else sum(energy, Decimal(0))
        doc.table(_usage_columns(), [*jobs.usage, {"tenant": "all tenants", **total}])
        doc.paragraph("Cost: accelerator-hours × each site's price per accelerator-hour for the "
                      "model, in yuan, as metered when each run ended.", size=7.5, color=MUTED)
    else:
        doc.paragraph("No run ended in the month, so nothing was metered.")
    if jobs.requeues:
        doc.subheading("Requeues after site failures", keep=0.8)
        requeues: dict[str, list[int]] = {}
        for row in jobs.requeues:
            counts = requeues.setdefault(str(row["metric"]), [0, 0])
            counts[0] += int(row["lease expired"])
            counts[1] += int(row["run failed"])
        doc.table([
            Column("site", lambda r: r["site"], 0.4),
            Column("lease expired", lambda r: str(r["lost"]), 0.3, "right"),
            Column("run failed", lambda r: str(r["failed"]), 0.3, "right"),
        ], [{"site": site, "lost": lost, "failed": failed}
            for site, (lost, failed) in sorted(requeues.items())])


def _usage_columns() -> list[Column]:
    return [
        Column("tenant", lambda r: str(r["tenant"]), 0.24),
        Column("jobs", lambda r: fmt(r["jobs"], 0), 0.1, "right"),
        Column("accelerator-hours", lambda r: fmt(r["accelerator-hours"], 1), 0.16, "right"),
        Column("FP16 PFlop-hours", lambda r: fmt(r["FP16 PFlop-hours"], 1), 0.16, "right"),
        Column("energy kWh", lambda r: fmt(r["energy kWh"], 1), 0.14, "right"),
        Column("cost", lambda r: yuan(r["cost yuan"]), 0.2, "right"),
    ]


# --- method -----------------------------------------------------------------------------------

_MARKUP = re.compile(r"\*\*|\*|`")


def method(report: Report) -> None:
    doc = report.doc
    doc.new_page()
    doc.heading("How these figures are measured")
    doc.bullets([
        f"Every figure is a query of the Grafana dashboards ({PROVINCE}, {ENERGY}, "
        f"{SCHEDULING}) run for {report.month.label} in Beijing time, so this report and the "
        f"dashboards cannot disagree.",
        "End-of-month figures (capacity, racks) take each site's latest rolled-up hour in the "
        "month. A site is reporting when its last report is at most 15 minutes older than the "
        "month's end, stale otherwise.",
        "Day-by-day charts use the dashboards' daily buckets, which are UTC days (08:00 to 08:00 "
        "Beijing time); monthly figures are summed over the month's own hours.",
    ])
    for uid, title in ((PROVINCE, "How these figures are measured"),
                       (ENERGY, "How PUE is measured")):
        text = grafana.panel(grafana.load(uid), title)["options"]["content"]
        doc.subheading(f"From the dashboard {uid}", keep=0.6)
        doc.bullets([_MARKUP.sub("", line.lstrip("- ").strip())
                     for line in text.splitlines() if line.strip()])


ALL: tuple[Callable[[Report], None], ...] = (title_page, capacity, energy, jobs, method)
