"""Measure 10: a compute enterprise whose out-of-province compute service contracts (rack
leasing excluded) reach 200,000,000 yuan in the year earns 2% of them, capped per enterprise
and year (措施十: 年度省外算力服务(不含机架租赁)合同总额达到2亿元及以上的算力企业).

For each enterprise and policy year:

- **Declared contracts**: the newest accepted ``out_of_province_contracts`` declaration of the
  enterprise for the year; its declarant states that the amount excludes rack leasing. A
  contract's amount is not something the agents can measure, so the award rests on it.
- **Metered usage**: Σ of the cost of the usage records (originals and adjustments) the
  platform's scheduler metered at the enterprise's in-province sites for tenants of voucher
  applicants registered outside the province, that ended inside the year's window. It supports
  the declared amount and never replaces it: contracts served without the platform's scheduler
  are invisible to it, so how much of the declared amount may go unmetered
  (``max_unmetered_share``) is an assumption the bureau sets, not a rule of the policy.
- **Eligible** when the declared amount is ≥ ``min_contracts`` (及以上: the threshold itself
  counts) and declared − metered is no more than ``max_unmetered_share`` of the declared
  amount.
- **Award** = declared amount × ``rate``, within the cap (per enterprise and year), rounded
  once to the fen; nothing when the other-support register covers measure 10 for the
  enterprise.
"""

from __future__ import annotations

from decimal import Decimal

from rewards.centres import CapRooms, accepted, award, declared, marked
from rewards.inputs import DECLARED, MEASURED, Award, Declaration, Figure, Inputs
from rewards.policy import Policy

MEASURE = "10"
KIND = "out_of_province_contracts"


def assess_outbound(inputs: Inputs, policy: Policy) -> list[Award]:
    """Every enterprise's measure-10 award for ``inputs.year`` (none outside the policy): each
    enterprise with in-province sites, metered out-of-province usage or a declaration for the
    year."""
    window = policy.window(inputs.year)
    if window is None:
        return []
    params = policy.measures[MEASURE].parameters
    minimum, rate, cap = params["min_contracts"], params["rate"], params["cap"]
    unmetered_share = params["max_unmetered_share"]
    assumptions = tuple(sorted(p.name for p in params.values() if p.assumption))
    usage = {u.enterprise: u for u in inputs.outbound}
    enterprises = ({s.enterprise for s in inputs.sites} | set(usage)
                   | {d.enterprise for d in inputs.declarations
                      if d.kind == KIND and d.value["year"] == inputs.year})
    awards = []
    for enterprise in sorted(enterprises):
        metered = usage[enterprise].cost_yuan if enterprise in usage else Decimal("0.00")
        records = usage[enterprise].records if enterprise in usage else 0
        figures = [Figure(
            "metered out-of-province usage", f"{metered}", MEASURED,
            f"Σ cost of {records} usage records (originals and adjustments) ended {window[0]} .."
            f" {window[1]} at the enterprise's in-province sites by tenants of applicants"
            " registered outside the province; contracts served without the platform's"
            " scheduler are not seen")]
        reasons = []
        found = _declaration(inputs, enterprise)
        contracts = Decimal("0.00")
        if found is None:
            reasons.append(f"not eligible: no accepted {KIND} declaration for {inputs.year}")
        else:
            contracts = Decimal(found.value["amount"])
            figures.append(declared(found, "out-of-province contracts, rack leasing excluded",
                                    f"{contracts}"))
            if contracts < minimum.value:  # type: ignore[operator]
                reasons.append(f"not eligible: declared out-of-province contracts {contracts},"
                               f" below {minimum.value}")
            unmetered = contracts - metered
            allowed = contracts * unmetered_share.value  # type: ignore[operator]
            figures.append(Figure(
                "unmetered", f"{unmetered}", DECLARED,
                f"declared {contracts} − metered {metered}; at most {unmetered_share.value} of"
                f" the declared amount, {allowed}, may be unmetered"
                f" ({marked(unmetered_share)}: {unmetered_share.note})"))
            if unmetered > allowed:
                reasons.append(f"not eligible: declared {contracts}, metered {metered}; the"
                               f" unmetered {unmetered} is more than {unmetered_share.value} of"
                               f" the declared amount ({allowed})")
        raw = contracts * rate.value  # type: ignore[operator]
        awards.append(award(
            inputs, MEASURE, enterprise, None, reasons=reasons, figures=figures,
            assumptions=assumptions, rooms=CapRooms(inputs, MEASURE, cap), raw=raw,
            how=Figure("before the cap", f"{raw}", DECLARED,
                       f"{contracts} declared × {rate.value} ({marked(rate)})")))
    return awards


def _declaration(inputs: Inputs, enterprise: str) -> Declaration | None:
    """The newest accepted declaration of the enterprise's contracts in ``inputs.year``: a
    later one supersedes an earlier; one for another year does not count."""
    found = [d for d in accepted(inputs, KIND, enterprise, None)
             if d.value["year"] == inputs.year]
    return found[-1] if found else None
