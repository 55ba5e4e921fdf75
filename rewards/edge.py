"""Measure 3: an edge computing centre that served at least 300,000 terminals in the year earns
an amount per physical rack, once, capped (措施三: 年度服务终端数超过30万(含)的边缘计算中心).

For each data centre (all the sites an enterprise registered under one data-centre name) and
policy year:

- **Terminals served** = Σ over the centre's sites of the site's largest
  ``site_terminals_served`` reading taken inside the year's window. The gauge counts the
  distinct terminals a site has served since 1 January (Asia/Shanghai) and resets then; the
  window lies inside one such year, so its largest reading is the year's count so far, and a
  reading of the year before (stamped before midnight on 1 January) is never taken. In 2024
  the count includes terminals served before 1 July: the gauge cannot tell them apart. A
  terminal served by two sites of one centre counts twice (the gauge carries no identities).
- **Edge computing centre**: a centre at least one of whose sites reported the gauge in the
  window (an agent reports it only where the operator configured the terminals probe).
- **Eligible** when terminals served ≥ ``min_terminals`` (含: the threshold itself counts),
  the centre reported racks, and no approved or paid measure-3 award exists for the centre in
  another year (paid once).
- **Racks**: the most physical racks the centre's sites reported together in one hour.
- **Award** = racks × ``per_rack``, within what the cap leaves (per data centre, or shared by
  the enterprise's centres in name order, as the policy file says), rounded once to the fen;
  nothing when the other-support register covers measure 3 for the enterprise.
"""

from __future__ import annotations

from jinsuan.contract.policytime import days_bounds
from rewards.centres import CapRooms, award, centres, marked, most_racks, paid_before, window_rows
from rewards.inputs import MEASURED, Award, Figure, Inputs
from rewards.policy import Policy

MEASURE = "3"


def assess_edge(inputs: Inputs, policy: Policy) -> list[Award]:
    """Every data centre's measure-3 award for ``inputs.year`` (none outside the policy)."""
    window = policy.window(inputs.year)
    if window is None:
        return []
    params = policy.measures[MEASURE].parameters
    minimum, per_rack = params["min_terminals"], params["per_rack"]
    assumptions = tuple(sorted(p.name for p in params.values() if p.assumption))
    start, end = days_bounds(*window)
    rows = window_rows(inputs, start, end)
    served = {t.site_id: t for t in inputs.terminals if start <= t.at < end}
    rooms = CapRooms(inputs, MEASURE, params["cap"])
    awards = []
    for (enterprise, centre), sites in centres(inputs).items():
        figures = []
        for site in sites:
            reading = served.get(site.id)
            figures.append(Figure(
                f"site {site.name}", "none" if reading is None else f"{reading.terminals}",
                MEASURED, "no site_terminals_served reading in the window" if reading is None
                else f"largest of {reading.readings} site_terminals_served readings from"
                f" {window[0]} to {window[1]}, taken {reading.at.isoformat()}"))
        counted = [served[s.id] for s in sites if s.id in served]
        terminals = sum(t.terminals for t in counted)
        racks = most_racks(sites, rows)
        figures += [
            Figure("terminals served", f"{terminals}", MEASURED,
                   f"Σ over the {len(counted)} reporting sites above"),
            Figure("minimum terminals", f"{minimum.value}", marked(minimum),
                   f"{minimum.unit}: {minimum.note}"),
            Figure("racks", f"{racks}", MEASURED,
                   "the most racks reported together in one hour"),
        ]
        reasons = []
        if not counted:
            reasons.append("not eligible: no site reported site_terminals_served in the window;"
                           " not an edge computing centre")
        elif terminals < minimum.value:  # type: ignore[operator]
            reasons.append(f"not eligible: {terminals} terminals served, below {minimum.value}")
        if racks == 0:
            reasons.append("not eligible: no physical racks in the centre's rollups")
        paid = paid_before(inputs, MEASURE, enterprise, centre)
        if paid:
            reasons.append(paid)
        raw = racks * per_rack.value  # type: ignore[operator]
        awards.append(award(
            inputs, MEASURE, enterprise, centre, reasons=reasons, figures=figures,
            assumptions=assumptions, rooms=rooms, raw=raw,
            how=Figure("before the cap", f"{raw}", MEASURED,
                       f"{racks} racks × {per_rack.value} yuan ({marked(per_rack)})")))
    return awards
