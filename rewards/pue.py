"""Measure 4: a new or retrofitted data centre whose measured annual PUE falls below 1.18 for
the first time earns an amount per physical rack, capped per enterprise.

For each data centre (all the sites an enterprise registered under one data-centre name) and
policy year, from the hourly rollups of the year's in-window hours:

- **Annual PUE** = Σ facility kWh ÷ Σ IT kWh over the site-hours in which both were measured
  (ISO/IEC 30134-2; never a mean of hourly ratios).
- **Metered share** = the hours in which every site of the centre measured both energies with
  at least the policy file's ``full_coverage_hour`` of each meter role covered, ÷ the window's
  hours. Below ``min_metered_share`` the PUE is not accepted, whatever its value.
- **New or retrofitted**: an accepted ``commissioning`` declaration for the centre dated on or
  after ``new_since`` and not after the window's end.
- **First time**: no approved or paid measure-4 award for the centre in another year.
- **Racks**: the most physical racks the centre's sites reported together in one hour.
- **Award** = racks × ``per_rack``, within what the enterprise's cap leaves (centres taken in
  name order), rounded once to the fen; nothing when the other-support register covers it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal

from jinsuan.contract.policytime import days_bounds, hours_in
from rewards.centres import (
    CapRooms,
    award,
    centres,
    marked,
    most_racks,
    new_centre,
    paid_before,
    window_rows,
)
from rewards.inputs import MEASURED, Award, Figure, Inputs, Site, SiteHour
from rewards.policy import Parameter, Policy

MEASURE = "4"
NEAR_MISS = Decimal("0.02")
"""A PUE this close above the threshold is reported as a near miss (for the bureau's view of
centres about to qualify), which pays nothing."""


def assess_pue(inputs: Inputs, policy: Policy) -> list[Award]:
    window = policy.window(inputs.year)
    if window is None:
        return []
    params = policy.measures[MEASURE].parameters
    start, end = days_bounds(*window)
    rows = window_rows(inputs, start, end)
    assumptions = tuple(sorted(p.name for p in params.values() if p.assumption))
    rooms = CapRooms(inputs, MEASURE, params["cap"])
    awards = []
    for (enterprise, centre), sites in centres(inputs).items():
        figures, reasons = _centre(inputs, window, hours_in(start, end), enterprise, centre,
                                   sites, rows, params)
        racks = most_racks(sites, rows)
        per_rack = params["per_rack"]
        raw = racks * per_rack.value  # type: ignore[operator]
        awards.append(award(
            inputs, MEASURE, enterprise, centre, reasons=reasons, figures=figures,
            assumptions=assumptions, rooms=rooms, raw=raw,
            how=Figure("before the cap", f"{raw}", MEASURED,
                       f"{racks} racks × {per_rack.value} yuan ({marked(per_rack)})")))
    return awards


def _centre(inputs: Inputs, window: tuple[date, date], window_hours: int, enterprise: str,
            centre: str, sites: list[Site], rows: dict[int, list[SiteHour]],
            params: dict[str, Parameter]) -> tuple[list[Figure], list[str]]:
    """The figures of one centre, and why it is not eligible (nothing when it is)."""
    full = params["full_coverage_hour"].value
    facility = it = Decimal(0)
    paired = 0
    complete: dict = defaultdict(int)  # hour -> sites fully metered in it
    figures: list[Figure] = []
    for site in sites:
        site_rows = rows.get(site.id, [])
        site_paired = [r for r in site_rows if r.it_kwh is not None and r.facility_kwh is not None]
        site_full = [r for r in site_paired if min(r.coverage_it, r.coverage_facility) >= full]
        for r in site_full:
            complete[r.hour] += 1
        flagged = sum(1 for r in site_rows if r.quality)
        facility += sum((r.facility_kwh for r in site_paired), Decimal(0))  # type: ignore[misc]
        it += sum((r.it_kwh for r in site_paired), Decimal(0))  # type: ignore[misc]
        paired += len(site_paired)
        figures.append(Figure(
            f"site {site.name}", f"{len(site_paired)}", MEASURED,
            f"hours with IT and facility energy measured ({len(site_full)} fully metered,"
            f" {flagged} with counter quality flags) of {len(site_rows)} rollup rows"))
    metered = sum(1 for n in complete.values() if n == len(sites))
    share = Decimal(metered) / window_hours
    annual = (facility / it).quantize(Decimal("0.0001")) if it > 0 else None
    figures += [
        Figure("facility kWh", f"{facility}", MEASURED, f"over {paired} paired site-hours"),
        Figure("IT kWh", f"{it}", MEASURED, f"over {paired} paired site-hours"),
        Figure("annual PUE", "none" if annual is None else f"{annual}", MEASURED,
               "facility kWh ÷ IT kWh, to 4 decimals"),
        Figure("metered share", f"{share:.4f}", MEASURED,
               f"{metered} of {window_hours} hours fully metered at every site of the centre"),
        Figure("racks", f"{most_racks(sites, rows)}", MEASURED,
               "the most racks reported together in one hour"),
    ]
    commissioning, reasons = new_centre(inputs, enterprise, centre,
                                        params["new_since"].value,  # type: ignore[arg-type]
                                        window[1], retrofit_counts=True)
    figures += commissioning
    minimum = params["min_metered_share"].value
    if share < minimum:  # type: ignore[operator]
        reasons.append(f"not eligible: only {share:.4f} of the hours fully metered, below"
                       f" {minimum}")
    threshold = params["pue_below"].value
    if annual is None:
        reasons.append("not eligible: no hour with both energies measured")
    elif not annual < threshold:  # type: ignore[operator]
        near = annual < threshold + NEAR_MISS  # type: ignore[operator]
        reasons.append(f"{'near miss' if near else 'not eligible'}: annual PUE {annual} is not"
                       f" below {threshold}")
    paid = paid_before(inputs, MEASURE, enterprise, centre)
    if paid:
        reasons.append(paid)
    return figures, reasons
