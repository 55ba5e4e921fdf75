"""Measure 2: a compute enterprise whose cloud-service revenue is at least 15% of its revenue
earns an amount per physical rack, once, capped in total (措施二: 云服务收入占比达到15%以上的
算力企业).

For each enterprise and policy year:

- **Cloud-revenue share**: the newest accepted ``cloud_revenue_share`` declaration of the
  enterprise (revenue is not something the agents can measure).
- **Racks** = Σ over the enterprise's data centres of the most physical racks the centre's
  sites reported together in one hour of the year's in-window rollups.
- **Eligible** when the declared share is ≥ ``min_share`` (以上: the threshold itself counts),
  the enterprise reported racks, and no approved or paid measure-2 award exists for it in
  another year (one-time).
- **Award** = racks × ``per_rack``, within what the cap leaves (per enterprise over the policy
  period, as the policy file says), rounded once to the fen; nothing when the other-support
  register covers measure 2 for the enterprise.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from jinsuan.contract.policytime import days_bounds
from rewards.centres import (
    CapRooms,
    award,
    centres,
    declared,
    latest,
    marked,
    most_racks,
    paid_before,
    window_rows,
)
from rewards.inputs import MEASURED, Award, Figure, Inputs
from rewards.policy import Policy

MEASURE = "2"


def assess_cloud(inputs: Inputs, policy: Policy) -> list[Award]:
    """Every enterprise's measure-2 award for ``inputs.year`` (none outside the policy)."""
    window = policy.window(inputs.year)
    if window is None:
        return []
    params = policy.measures[MEASURE].parameters
    minimum, per_rack = params["min_share"], params["per_rack"]
    assumptions = tuple(sorted(p.name for p in params.values() if p.assumption))
    rows = window_rows(inputs, *days_bounds(*window))
    rooms = CapRooms(inputs, MEASURE, params["cap"])
    racks_of: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (enterprise, centre), sites in centres(inputs).items():
        racks_of[enterprise].append((centre, most_racks(sites, rows)))
    awards = []
    for enterprise, centre_racks in racks_of.items():
        figures = [Figure(f"data centre {centre}", f"{racks}", MEASURED,
                          "racks: the most reported together in one hour")
                   for centre, racks in centre_racks]
        racks = sum(r for _, r in centre_racks)
        figures.append(Figure("racks", f"{racks}", MEASURED,
                              f"Σ over the {len(centre_racks)} data centres above"))
        reasons = []
        found = latest(inputs, "cloud_revenue_share", enterprise, None)
        if found is None:
            reasons.append("not eligible: no accepted cloud_revenue_share declaration")
        else:
            share = Decimal(found.value["share"])
            figures.append(declared(found, "cloud-service revenue share", f"{share}"))
            if share < minimum.value:  # type: ignore[operator]
                reasons.append(f"not eligible: declared cloud-service revenue share {share},"
                               f" below {minimum.value}")
        if racks == 0:
            reasons.append("not eligible: no physical racks in the enterprise's rollups")
        paid = paid_before(inputs, MEASURE, enterprise, None)
        if paid:
            reasons.append(paid)
        raw = racks * per_rack.value  # type: ignore[operator]
        awards.append(award(
            inputs, MEASURE, enterprise, None, reasons=reasons, figures=figures,
            assumptions=assumptions, rooms=rooms, raw=raw,
            how=Figure("before the cap", f"{raw}", MEASURED,
                       f"{racks} racks × {per_rack.value} yuan ({marked(per_rack)})")))
    return awards
