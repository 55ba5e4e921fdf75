"""Measure 6: a new or rebuilt data centre whose basic software and hardware are at least 90%
domestic (信创) earns a one-time reward (措施六: 基础软硬件实现国产化90%以上的新建、改建数据中心).

For each data centre (all the sites an enterprise registered under one data-centre name) and
policy year:

- **Accelerators measured**: from the inventory the centre's agents reported, as it stood at
  the window's end (see :func:`rewards.store.read_inputs`): the domestic share **by count**
  (domestic accelerators ÷ all) and **by FP16 capacity** (Σ dense FP16 peaks of the domestic
  ones ÷ Σ of all, datasheet and estimated peaks alike; an accelerator without any peak figure
  counts by number only). Both are shown; the policy file's ``accelerator_share`` says which
  the rule uses: ``count``, ``capacity``, or ``both`` (each must reach the threshold).
- **The rest declared**: an accepted ``domestic_share_other`` declaration for the centre, the
  share of its other basic software and hardware that is domestic (the agents cannot see it).
- **Eligible** when the accelerator share(s) and the declared share are each at least
  ``min_share`` (以上: the threshold itself counts), the centre is new or rebuilt (an accepted
  ``commissioning`` declaration, a retrofit included, dated from ``new_since`` to the window's
  end), and no approved or paid measure-6 award exists for it in another year (paid once).
- **Award** = ``reward`` (the policy names only a maximum; the file says what is paid), within
  what the cap leaves, rounded once to the fen; nothing when the other-support register covers
  measure 6 for the enterprise.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

from jinsuan.contract.policytime import days_bounds
from rewards.centres import (
    CapRooms,
    award,
    centres,
    declared,
    latest,
    marked,
    new_centre,
    paid_before,
)
from rewards.inputs import MEASURED, Award, Figure, Inputs, SiteAccelerators
from rewards.policy import Policy

MEASURE = "6"
COUNT, CAPACITY, BOTH = "count", "capacity", "both"


def assess_domestic(inputs: Inputs, policy: Policy) -> list[Award]:
    """Every data centre's measure-6 award for ``inputs.year`` (none outside the policy)."""
    window = policy.window(inputs.year)
    if window is None:
        return []
    measure = policy.measures[MEASURE]
    params = measure.parameters
    minimum, rule = params["min_share"], measure.choice("accelerator_share")
    assumptions = tuple(sorted(p.name for p in params.values() if p.assumption))
    rooms = CapRooms(inputs, MEASURE, params["cap"])
    start, end = days_bounds(*window)
    inventory = [a for a in inputs.accelerators if start <= a.as_of <= end]
    awards = []
    for (enterprise, centre), sites in centres(inputs).items():
        figures: list[Figure] = []
        rows: list[SiteAccelerators] = []
        for site in sites:
            mine = [a for a in inventory if a.site_id == site.id]
            rows += mine
            figures.append(_site(site.name, mine))
        shares = _shares(rows, figures)
        figures.append(Figure("minimum share", f"{minimum.value}", marked(minimum),
                              f"{minimum.unit}: {minimum.note}"))
        reasons = []
        used = (COUNT, CAPACITY) if rule == BOTH else (rule,)
        for name in used:
            share = shares[name]
            if share is None:
                reasons.append(f"not eligible: no accelerator share by {name} (no accelerators"
                               f"{' with an FP16 peak' if name == CAPACITY else ''} in the"
                               " inventory)")
            elif share < minimum.value:  # type: ignore[operator]
                reasons.append(f"not eligible: domestic accelerators by {name} {_shown(share)},"
                               f" below {minimum.value}")
        other = latest(inputs, "domestic_share_other", enterprise, centre)
        if other is None:
            reasons.append("not eligible: no accepted domestic_share_other declaration")
        else:
            share = Decimal(other.value["share"])
            figures.append(declared(other, "other basic software and hardware domestic",
                                    f"{share}"))
            if share < minimum.value:  # type: ignore[operator]
                reasons.append(f"not eligible: declared domestic share of the other basic"
                               f" software and hardware {share}, below {minimum.value}")
        built, why_not = new_centre(inputs, enterprise, centre, measure.date("new_since"),
                                    window[1], retrofit_counts=True)
        figures += built
        reasons += why_not
        paid = paid_before(inputs, MEASURE, enterprise, centre)
        if paid:
            reasons.append(paid)
        reward = params["reward"]
        awards.append(award(
            inputs, MEASURE, enterprise, centre, reasons=reasons, figures=figures,
            assumptions=assumptions, rooms=rooms, raw=reward.value,  # type: ignore[arg-type]
            how=Figure("reward", f"{reward.value}", marked(reward), reward.note)))
    return awards


def _site(name: str, rows: list[SiteAccelerators]) -> Figure:
    domestic = sum(r.count for r in rows if r.domestic)
    tflops = sum((r.fp16_tflops + r.fp16_tflops_estimated for r in rows), Decimal(0))
    estimated = sum((r.fp16_tflops_estimated for r in rows), Decimal(0))
    missing = sum(r.without_peak for r in rows)
    when = max((r.as_of for r in rows), default=None)
    return Figure(f"site {name}", f"{domestic} of {sum(r.count for r in rows)} domestic",
                  MEASURED, "no accelerators in the inventory" if when is None else
                  f"{tflops} FP16 TFLOPS in all ({estimated} on estimated peaks, {missing}"
                  f" accelerators without a peak figure); inventory as written"
                  f" {when.isoformat()}")


def _shares(rows: list[SiteAccelerators], figures: list[Figure]) -> dict[str, Decimal | None]:
    """The centre's domestic shares by count and by capacity, appending their figures."""
    count = sum(r.count for r in rows)
    domestic = sum(r.count for r in rows if r.domestic)
    tflops = sum((r.fp16_tflops + r.fp16_tflops_estimated for r in rows), Decimal(0))
    domestic_tflops = sum((r.fp16_tflops + r.fp16_tflops_estimated for r in rows if r.domestic),
                          Decimal(0))
    estimated = sum((r.fp16_tflops_estimated for r in rows), Decimal(0))
    shares = {COUNT: Decimal(domestic) / count if count else None,
              CAPACITY: domestic_tflops / tflops if tflops else None}
    figures += [
        Figure("domestic accelerators by count",
               _shown(shares[COUNT]), MEASURED,
               f"{domestic} of {count} accelerators"),
        Figure("domestic accelerators by FP16 capacity",
               _shown(shares[CAPACITY]), MEASURED,
               f"{domestic_tflops} of {tflops} TFLOPS; {estimated} TFLOPS of it on estimated"
               " peaks"),
    ]
    return shares


def _shown(share: Decimal | None) -> str:
    """A share to 4 decimals, cut rather than rounded: one below the threshold never shows as
    reaching it."""
    return "none" if share is None else f"{share.quantize(Decimal('0.0001'), ROUND_DOWN)}"
