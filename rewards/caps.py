"""The rules every measure shares: how much room a cap leaves, and the double-support register.
"""

from __future__ import annotations

from decimal import Decimal

from rewards.inputs import COUNTED_STATES, Inputs
from rewards.policy import Parameter

PER_YEAR = "enterprise-year"
PER_PERIOD = "enterprise"


def cap_room(inputs: Inputs, measure: str, enterprise: str, data_centre: str | None,
             cap: Parameter) -> tuple[Decimal, str]:
    """What ``enterprise`` may still be awarded under ``cap``, and how that was worked out.

    A cap per enterprise and year leaves its whole amount each year; a cap per enterprise (for
    the policy's whole period) leaves the amount less what earlier years' approved or paid
    awards of the measure already took.
    """
    assert isinstance(cap.value, Decimal)
    if cap.per == PER_YEAR:
        return cap.value, f"{cap.value} yuan per enterprise and year"
    if cap.per != PER_PERIOD:
        raise ValueError(f"measures.{cap.name}.per: {cap.per!r} is not {PER_YEAR!r} or"
                         f" {PER_PERIOD!r}")
    earlier = [a for a in inputs.prior_awards
               if a.measure == measure and a.enterprise == enterprise and a.year != inputs.year
               and a.state in COUNTED_STATES]
    taken = sum((a.amount for a in earlier), Decimal("0.00"))
    listed = ", ".join(f"award {a.id} ({a.year}, {a.amount})" for a in earlier) or "none"
    return (max(cap.value - taken, Decimal("0.00")),
            f"{cap.value} yuan per enterprise over the policy period, less {taken} already"
            f" awarded in other years ({listed})")


def double_support(inputs: Inputs, measure: str, enterprise: str) -> str | None:
    """Why an award is refused under the rule that the same applicant is not supported twice
    for the same item, naming the register entry; None when no entry covers it."""
    for entry in sorted(inputs.other_support, key=lambda e: e.id):
        if entry.enterprise == enterprise and entry.measure == measure:
            return (f"refused: {enterprise} was already supported for measure {measure} by"
                    f" {entry.fund} ({entry.amount} yuan, {entry.granted_on}); other-support"
                    f" register entry {entry.id}")
    return None
