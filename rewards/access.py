"""Measure 5b, the access reward: paid by the scale of compute an enterprise kept connected.

For each enterprise and policy year, from the hourly rollups of its sites (no declaration
counts: capacity the agents never reported earns nothing):

- **PFlops-hours measured** = Σ over the year's in-window site-hours of (connected FP16 PFlops
  − the part resting on estimated peaks). A rollup hour's PFlops are already time-weighted by
  each accelerator's reported up-time, so a silent hour counts zero.
- **PFlops-years** = PFlops-hours ÷ the hours of the calendar year (8,760 or 8,784). A year cut
  by the policy's window (2024 from 1 July; nothing after 2026-12-31) thus earns only for the
  hours inside it.
- **Award** = PFlops-years × the bureau's rate, capped (per the policy file: per enterprise and
  year, or for the whole period less what earlier years were awarded), rounded once to the fen;
  nothing when the register of other support already covers 5b for the enterprise.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from jinsuan.contract.money import to_fen
from jinsuan.contract.policytime import days_bounds, hours_in, year_bounds
from rewards.caps import cap_room, double_support
from rewards.inputs import ASSUMPTION, MEASURED, POLICY, Award, Figure, Inputs, SiteHour
from rewards.policy import Policy

MEASURE = "5b"


def assess_access(inputs: Inputs, policy: Policy) -> list[Award]:
    """Every enterprise's 5b award for ``inputs.year`` (an empty list outside the policy)."""
    window = policy.window(inputs.year)
    if window is None:
        return []
    measure = policy.measures[MEASURE]
    start, end = days_bounds(*window)
    window_hours = hours_in(start, end)
    year_hours = hours_in(*year_bounds(inputs.year))
    rows: dict[int, list[SiteHour]] = defaultdict(list)
    for row in inputs.hours:
        if start <= row.hour < end:
            rows[row.site_id].append(row)
    by_enterprise: dict[str, list] = defaultdict(list)
    for site in inputs.sites:
        by_enterprise[site.enterprise].append(site)

    rate, cap = measure.parameters["rate"], measure.parameters["cap"]
    assumptions = tuple(p.name for p in (rate, cap) if p.assumption)
    awards = []
    for enterprise, sites in sorted(by_enterprise.items()):
        figures: list[Figure] = []
        measured_total = estimated_total = Decimal(0)
        connected_hours: set = set()
        for site in sorted(sites, key=lambda s: s.name):
            site_rows = rows.get(site.id, [])
            measured = sum((r.fp16_pflops - r.fp16_pflops_estimated for r in site_rows),
                           Decimal(0))
            estimated = sum((r.fp16_pflops_estimated for r in site_rows), Decimal(0))
            hours = {r.hour for r in site_rows if r.fp16_pflops - r.fp16_pflops_estimated > 0}
            connected_hours |= hours
            measured_total += measured
            estimated_total += estimated
            figures.append(Figure(
                f"site {site.name}", f"{measured}", MEASURED,
                f"PFlops-hours measured in {site.city} over {len(hours)} connected hours of"
                f" {window_hours} ({len(site_rows)} rollup rows); {estimated} PFlops-hours on"
                " estimated peaks, not counted"))
        pflops_years = measured_total / year_hours
        raw = pflops_years * rate.value  # type: ignore[operator]
        room, cap_detail = cap_room(inputs, MEASURE, enterprise, None, cap)
        refusal = double_support(inputs, MEASURE, enterprise)
        amount = Decimal("0.00") if refusal else to_fen(min(raw, room))
        figures += [
            Figure("PFlops-hours measured", f"{measured_total}", MEASURED,
                   f"Σ over the sites above, {window[0]} .. {window[1]}"),
            Figure("PFlops-hours on estimated peaks", f"{estimated_total}", MEASURED,
                   "shown apart; earns nothing"),
            Figure("hours connected", f"{len(connected_hours)}", MEASURED,
                   f"of {window_hours} in the window: share"
                   f" {Decimal(len(connected_hours)) / window_hours:.4f}"),
            Figure("time-weighted PFlops", f"{measured_total / window_hours:.6f}", MEASURED,
                   "PFlops-hours ÷ hours in the window"),
            Figure("PFlops-years", f"{pflops_years:.9f}", MEASURED,
                   f"PFlops-hours ÷ {year_hours} hours in {inputs.year}"),
            Figure("rate", f"{rate.value}", ASSUMPTION if rate.assumption else POLICY,
                   f"{rate.unit}: {rate.note}".rstrip(": ")),
            Figure("before the cap", f"{raw:.6f}", MEASURED, "PFlops-years × rate"),
            Figure("cap", f"{room}", ASSUMPTION if cap.assumption else POLICY, cap_detail),
        ]
        reasons = [refusal] if refusal else (
            ["capped" if raw > room else "below the cap"] if measured_total > 0
            else ["no compute connected and reporting in the window"])
        awards.append(Award(MEASURE, enterprise, None, amount, amount > 0, tuple(reasons),
                            tuple(figures), assumptions))
    return awards
