"""Measure 1: a new intelligent-computing centre of at least 100 PFlops FP16 earns 15% of its
platform software and hardware investment, capped, and an interest subsidy on its project loans
(措施一: 智能算力规模达到100PFlops(半精度FP16)以上的新建项目).

For each data centre (all the sites an enterprise registered under one data-centre name) and
policy year, from the hourly rollups of the year's in-window hours:

- **Measured PFlops of an hour** = Σ over the centre's sites of (connected FP16 PFlops − the
  part resting on estimated peaks): dense nameplate peaks of the accelerators connected and
  reporting, time-weighted by their reported up-time. Estimated peaks are shown apart.
- **Hours at scale** = the window's hours whose measured PFlops are ≥ ``min_pflops`` (以上: the
  threshold itself counts); the policy says the scale is reached, the file's ``min_hours`` says
  for how many hours it must be.
- **Eligible** when hours at scale ≥ ``min_hours``, the centre is a new build (an accepted
  ``commissioning`` declaration, not a retrofit, dated from ``new_since`` to the window's end)
  and an accepted ``centre_investment`` declaration states its investment.
- **Investment part** = ``investment_share`` × the declared investment (the newest accepted
  declaration), within what the cap leaves, paid once: nothing when an approved or paid
  measure-1 award exists for the centre in another year (the first award always held it).
- **Interest part** = Σ over the centre's accepted ``loan`` declarations of principal ×
  min(declared annual rate, ``interest_rate``) × months ÷ 12, where the months counted are
  those of the loan's first ``interest_months`` (a month k starts on the start date plus k
  months) that start inside this year's window; the principal is taken as outstanding in full.
  It is outside the cap, which the policy sets on the 15% subsidy.
- **Award** = investment part + interest part, rounded once to the fen; nothing when the
  other-support register covers measure 1 for the enterprise.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from jinsuan.contract.money import to_fen
from jinsuan.contract.policytime import days_bounds, hours_in
from rewards.caps import double_support
from rewards.centres import (
    CapRooms,
    accepted,
    awarded_before,
    centres,
    declared,
    latest,
    marked,
    new_centre,
    window_rows,
)
from rewards.inputs import DECLARED, MEASURED, Award, Figure, Inputs
from rewards.policy import Parameter, Policy

MEASURE = "1"


def assess_scale(inputs: Inputs, policy: Policy) -> list[Award]:
    """Every data centre's measure-1 award for ``inputs.year`` (none outside the policy)."""
    window = policy.window(inputs.year)
    if window is None:
        return []
    measure = policy.measures[MEASURE]
    params = measure.parameters
    assumptions = tuple(sorted(p.name for p in params.values() if p.assumption))
    start, end = days_bounds(*window)
    window_hours = hours_in(start, end)
    rows = window_rows(inputs, start, end)
    rooms = CapRooms(inputs, MEASURE, params["cap"])
    minimum, min_hours = params["min_pflops"], params["min_hours"]
    awards = []
    for (enterprise, centre), sites in centres(inputs).items():
        measured: dict[datetime, Decimal] = defaultdict(Decimal)
        estimated: dict[datetime, Decimal] = defaultdict(Decimal)
        for site in sites:
            for row in rows.get(site.id, []):
                measured[row.hour] += row.fp16_pflops - row.fp16_pflops_estimated
                estimated[row.hour] += row.fp16_pflops_estimated
        at_scale = sum(1 for v in measured.values() if v >= minimum.value)  # type: ignore[operator]
        figures = [
            Figure("highest hour, measured PFlops", f"{max(measured.values(), default=0)}",
                   MEASURED, "Σ over the centre's sites of connected FP16 PFlops less those on"
                   " estimated peaks, in one hour"),
            Figure("highest hour, PFlops on estimated peaks",
                   f"{max(estimated.values(), default=0)}", MEASURED,
                   "shown apart; never counted toward the scale"),
            Figure("hours at scale", f"{at_scale}", MEASURED,
                   f"hours of the window's {window_hours} with at least {minimum.value}"
                   f" measured PFlops, over {len(measured)} hours with rollups"),
            Figure("minimum hours at scale", f"{min_hours.value}", marked(min_hours),
                   min_hours.note),
        ]
        reasons = []
        if at_scale < min_hours.value:  # type: ignore[operator]
            reasons.append(f"not eligible: {at_scale} hours at {minimum.value} measured PFlops"
                           f" or more, fewer than {min_hours.value}")
        built, why_not = new_centre(inputs, enterprise, centre, measure.date("new_since"),
                                    window[1], retrofit_counts=False)
        figures += built
        reasons += why_not
        investment = latest(inputs, "centre_investment", enterprise, centre)
        if investment is None:
            reasons.append("not eligible: no accepted centre_investment declaration")
        else:
            figures.append(declared(investment, "investment declared",
                                    investment.value["amount"]))
        amount = Decimal("0.00")
        refusal = double_support(inputs, MEASURE, enterprise)
        if not reasons and refusal:
            reasons.append(refusal)
        elif not reasons:
            assert investment is not None
            part, why = _investment_part(inputs, enterprise, centre, investment.value, params,
                                         rooms, figures)
            interest = Decimal(0)
            for loan in accepted(inputs, "loan", enterprise, centre):
                subsidy, months, subsidised = _interest(loan.value, window,
                                                        params["interest_rate"],
                                                        params["interest_months"])
                interest += subsidy
                figures.append(Figure(
                    f"loan {loan.id}", f"{subsidy}", DECLARED,
                    f"{loan.value['amount']} yuan × min({loan.value['rate']},"
                    f" {params['interest_rate'].value}) × {months} ÷ 12: {months} of the first"
                    f" {subsidised} months from {loan.value['start']} start inside the window"))
            figures.append(Figure("interest part", f"{interest}", DECLARED,
                                  "outside the cap; the principal is assumed outstanding"))
            amount = to_fen(part + interest)
            reasons.append(why)
        awards.append(Award(MEASURE, enterprise, centre, amount, amount > 0, tuple(reasons),
                            tuple(figures), assumptions))
    return awards


def _investment_part(inputs: Inputs, enterprise: str, centre: str, value: dict[str, Any],
                     params: dict[str, Parameter], rooms: CapRooms,
                     figures: list[Figure]) -> tuple[Decimal, str]:
    """The 15% subsidy, once per centre and capped, with the reason it is what it is."""
    earlier = awarded_before(inputs, MEASURE, enterprise, centre)
    if earlier:
        first = min(earlier, key=lambda a: (a.year, a.id))
        return Decimal(0), (f"eligible: investment part already awarded for {first.year}"
                            f" (award {first.id}, {first.state}); the interest part only")
    share = params["investment_share"]
    raw = Decimal(value["amount"]) * share.value  # type: ignore[operator]
    room, cap_figure = rooms.left(enterprise, centre)
    part = min(raw, room)
    rooms.take(enterprise, centre, part)
    figures += [Figure("investment part before the cap", f"{raw}", DECLARED,
                       f"{value['amount']} yuan × {share.value} ({marked(share)})"),
                cap_figure, Figure("investment part", f"{part}", DECLARED, "")]
    return part, "capped" if part < raw else "eligible"


def _interest(value: dict[str, Any], window: tuple[date, date], rate: Parameter,
              months: Parameter) -> tuple[Decimal, int, int]:
    """A loan's interest subsidy in the window, the months it counts and the months that may
    be subsidised at all."""
    begin = date.fromisoformat(value["start"])
    subsidised = min(int(value["months"]), int(months.value))  # type: ignore[arg-type]
    counted = sum(1 for k in range(subsidised) if window[0] <= _plus_months(begin, k) <= window[1])
    annual = min(Decimal(value["rate"]), rate.value)  # type: ignore[type-var]
    return Decimal(value["amount"]) * annual * counted / 12, counted, subsidised


def _plus_months(day: date, months: int) -> date:
    """``day`` moved ``months`` calendar months on, kept inside the month (31 Jan + 1: 28/29
    Feb)."""
    year, month = divmod(day.month - 1 + months, 12)
    year += day.year
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))
