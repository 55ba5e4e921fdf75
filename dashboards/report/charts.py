"""The report's charts: each draws one panel's rows onto a matplotlib Axes.

A chart is drawn twice: onto its page of the PDF (vector, text searchable) and onto a figure of
its own saved as PNG beside the PDF. Time axes are in Beijing time. The dashboards group by
``$__timeGroupAlias(hour, 1d)``, which cuts days at 00:00 UTC (08:00 in Beijing), so a month's
first and last buckets are part-days; each point is drawn at the middle of the part of its
bucket that lies in the month, and energy bars are as wide as that part.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import matplotlib.dates as mdates
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, MultipleLocator, PercentFormatter

from dashboards.report.figures import MonthFigures, bucket_start, number, series
from dashboards.report.month import Month
from jinsuan.contract.policytime import SHANGHAI

DAY = timedelta(days=1)
COLOURS = ("#3274d9", "#e0752d", "#56a64b", "#a352cc", "#d44a3a", "#8ab8ff", "#f2cc0c",
           "#5794f2", "#b877d9", "#73bf69")
GRID = "#d8d9da"
TARGET = "#c4162a"
COVERAGE_FLAG = 0.95


def _span(month: Month, start: datetime) -> tuple[datetime, datetime]:
    """The part of the day bucket starting at ``start`` that lies in the month."""
    return max(start, month.start), min(start + DAY, month.end)


def _middle(month: Month, start: datetime) -> datetime:
    lo, hi = _span(month, start)
    return lo + (hi - lo) / 2


def _time_axis(ax: Axes, month: Month) -> None:
    ax.set_xlim(month.start, month.end)
    ax.xaxis.set_major_locator(mdates.DayLocator(bymonthday=(1, 5, 10, 15, 20, 25), tz=SHANGHAI))
    ax.xaxis.set_minor_locator(mdates.DayLocator(tz=SHANGHAI))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d", tz=SHANGHAI))
    ax.set_xlabel("Beijing time")


def _style(ax: Axes) -> None:
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


def _lines(ax: Axes, month: Month, by_metric: dict[str, list[tuple[datetime, float]]],
           unit: str) -> None:
    for index, (metric, points) in enumerate(sorted(by_metric.items())):
        if not points:
            continue
        xs = [_middle(month, start) for start, _ in points]
        ax.plot(xs, [value for _, value in points], marker="o", markersize=2.5, linewidth=1.4,
                color=COLOURS[index % len(COLOURS)], label=metric)
    _time_axis(ax, month)
    ax.set_ylabel(unit)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _style(ax)


def capacity_by_city(ax: Axes, figures: MonthFigures) -> None:
    _lines(ax, figures.month, series(figures.capacity.by_city), "FP16 PFlops (daily mean)")
    ax.set_ylim(bottom=0)


def capacity_by_enterprise(ax: Axes, figures: MonthFigures) -> None:
    _lines(ax, figures.month, series(figures.capacity.by_enterprise), "FP16 PFlops (daily mean)")
    ax.set_ylim(bottom=0)


def accelerators_by_model(ax: Axes, figures: MonthFigures) -> None:
    rows = list(reversed(figures.capacity.models))
    labels = [f"{r['model']} ({r['vendor']})" for r in rows]
    colours = ["#c4162a" if r["domestic"] else "#3274d9" for r in rows]
    drawn = ax.barh(labels, [int(r["accelerators"]) for r in rows], color=colours)
    ax.bar_label(drawn, padding=3, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("accelerators seen in the month")
    ax.set_xlim(0, max(int(r["accelerators"]) for r in rows) * 1.12)
    handles = [Patch(color="#c4162a", label="domestic (信创)"),
               Patch(color="#3274d9", label="other")]
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="lower right")
    _style(ax)
    ax.grid(False, axis="y")


def pue_daily(ax: Axes, figures: MonthFigures, target: Decimal) -> None:
    ax.axhline(float(target), color=TARGET, linestyle="--", linewidth=1.2,
               label=f"measure 4: {target}")
    _lines(ax, figures.month, series(figures.energy.pue_daily), "PUE (Σ facility ÷ Σ IT per day)")
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, float(target) - 0.05), max(high, float(target) + 0.05))


def pue_by_centre(ax: Axes, figures: MonthFigures, target: Decimal) -> None:
    rows = [r for r in reversed(figures.energy.per_centre) if r["PUE"] is not None]
    values = [float(r["PUE"]) for r in rows]
    colours = ["#56a64b" if v < float(target) else "#e0752d" for v in values]
    bars = ax.barh([str(r["data centre"]) for r in rows], values, color=colours)
    ax.axvline(float(target), color=TARGET, linestyle="--", linewidth=1.2)
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=4, fontsize=8,
                 bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6})
    ax.text(float(target), 1.0, f" {target}", transform=ax.get_xaxis_transform(), color=TARGET,
            fontsize=8, va="bottom")
    ax.set_xlim(1.0, max([*values, float(target)]) * 1.08)
    ax.set_xlabel("PUE over the month (Σ facility kWh ÷ Σ IT kWh)")
    _style(ax)
    ax.grid(False, axis="y")


def energy_daily(ax: Axes, figures: MonthFigures) -> None:
    month = figures.month
    for offset, (column, colour) in enumerate((("IT", "#3274d9"), ("facility", "#e0752d"))):
        lefts, widths, heights = [], [], []
        for row in figures.energy.energy_daily:
            lo, hi = _span(month, bucket_start(row))
            half = (hi - lo) / 2
            lefts.append(lo + offset * half)
            widths.append(half * 0.9)
            heights.append(float(number(row[column]) or 0) / 1000)
        ax.bar(lefts, heights, width=widths, align="edge", color=colour, label=column)
    _time_axis(ax, month)
    ax.set_ylabel("MWh per day bucket")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _style(ax)


def coverage_daily(ax: Axes, figures: MonthFigures) -> None:
    month = figures.month
    columns = ("IT meters", "facility meters", "accelerators")
    for index, column in enumerate(columns):
        points = [(bucket_start(r), float(r[column])) for r in figures.energy.coverage_daily
                  if r[column] is not None]
        ax.plot([_middle(month, t) for t, _ in points], [v for _, v in points], marker="o",
                markersize=2.5, linewidth=1.4, color=COLOURS[index], label=column)
    for row in figures.energy.coverage_daily:
        values = [float(row[c]) for c in columns if row[c] is not None]
        if values and min(values) < COVERAGE_FLAG:
            lo, hi = _span(month, bucket_start(row))
            ax.axvspan(lo, hi, color=TARGET, alpha=0.12, linewidth=0)
    ax.axhline(COVERAGE_FLAG, color=TARGET, linestyle="--", linewidth=1)
    _time_axis(ax, month)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.yaxis.set_major_locator(MultipleLocator(0.05))
    ax.set_ylim(min(0.8, ax.get_ylim()[0]), 1.02)
    ax.set_ylabel("share of the hour measured")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _style(ax)


def counts(ax: Axes, labels: list[str], values: list[int], xlabel: str) -> None:
    """Horizontal bars of counts, largest on top, each labelled with its count."""
    drawn = ax.barh(list(reversed(labels)), list(reversed(values)), color=COLOURS[0])
    ax.bar_label(drawn, labels=[f"{v:,}" for v in reversed(values)], padding=3, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max([*values, 1]) * 1.15)
    _style(ax)
    ax.grid(False, axis="y")


OUTCOMES = (("succeeded", "#56a64b"), ("failed", "#c4162a"), ("cancelled", "#9fa4ab"))


def job_outcomes(ax: Axes, figures: MonthFigures) -> None:
    """Jobs ended per day bucket, stacked by how they ended."""
    month = figures.month
    rows = figures.jobs.outcomes
    spans = [_span(month, bucket_start(row)) for row in rows]
    lefts = [lo for lo, _ in spans]
    widths = [(hi - lo) * 0.85 for lo, hi in spans]
    base = [0] * len(rows)
    for state, colour in OUTCOMES:
        heights = [int(row[state]) for row in rows]
        ax.bar(lefts, heights, width=widths, bottom=base, align="edge", color=colour,
               label=state)
        base = [b + h for b, h in zip(base, heights, strict=True)]
    _time_axis(ax, month)
    ax.set_ylabel("jobs ended per day bucket")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _style(ax)


def placements_by_site(ax: Axes, figures: MonthFigures) -> None:
    totals = figures.jobs.placed_by_site()
    counts(ax, list(totals), list(totals.values()), "runs placed in the month")
