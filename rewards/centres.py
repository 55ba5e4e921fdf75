"""What the measures assessed per data centre or per enterprise share (1, 2, 3, 4, 6, 10): the
centres and their in-window rollups, the racks a centre reported, the accepted declaration of a
kind, whether a centre was already paid, whether it is new, what a cap leaves, and how an
award is settled once its reasons are known.

A data centre is every site an enterprise registered under one data-centre name
(``sites.data_centre``); a per-centre award is keyed by (enterprise, centre).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal

from jinsuan.contract.money import to_fen
from rewards.caps import cap_room, double_support
from rewards.inputs import (
    ASSUMPTION,
    COUNTED_STATES,
    DECLARED,
    POLICY,
    Award,
    Declaration,
    Figure,
    Inputs,
    PriorAward,
    Site,
    SiteHour,
)
from rewards.policy import Parameter

PER_CENTRE = "data-centre"
"""A cap's ``per`` when each data centre has its own cap over the policy period."""


def centres(inputs: Inputs) -> dict[tuple[str, str], list[Site]]:
    """The sites of each (enterprise, data centre), in name order of both."""
    found: dict[tuple[str, str], list[Site]] = defaultdict(list)
    for site in inputs.sites:
        found[(site.enterprise, site.data_centre)].append(site)
    return {key: sorted(sites, key=lambda s: s.name) for key, sites in sorted(found.items())}


def window_rows(inputs: Inputs, start: datetime, end: datetime) -> dict[int, list[SiteHour]]:
    """Each site's rollup rows of the hours in ``[start, end)``."""
    rows: dict[int, list[SiteHour]] = defaultdict(list)
    for row in inputs.hours:
        if start <= row.hour < end:
            rows[row.site_id].append(row)
    return rows


def most_racks(sites: list[Site], rows: dict[int, list[SiteHour]]) -> int:
    """The most physical racks ``sites`` reported together in one hour of their rollups."""
    by_hour: dict[datetime, int] = defaultdict(int)
    for site in sites:
        for row in rows.get(site.id, []):
            by_hour[row.hour] += row.racks
    return max(by_hour.values(), default=0)


def accepted(inputs: Inputs, kind: str, enterprise: str,
             centre: str | None) -> list[Declaration]:
    """The accepted declarations of ``kind`` for the enterprise (and centre), oldest first."""
    return sorted((d for d in inputs.declarations if d.kind == kind
                   and d.enterprise == enterprise and d.data_centre == centre),
                  key=lambda d: d.id)


def latest(inputs: Inputs, kind: str, enterprise: str, centre: str | None) -> Declaration | None:
    """The newest accepted declaration of ``kind``: a later one supersedes an earlier."""
    found = accepted(inputs, kind, enterprise, centre)
    return found[-1] if found else None


def declared(declaration: Declaration, name: str, value: str) -> Figure:
    """A figure taken from an accepted declaration, naming it and its evidence."""
    return Figure(name, value, DECLARED, f"declaration {declaration.id}, evidence "
                  + ", ".join(f"{n} ({h[:12]}…)" for n, h in declaration.evidence))


def awarded_before(inputs: Inputs, measure: str, enterprise: str,
                   centre: str | None) -> list[PriorAward]:
    """The approved or paid awards of ``measure`` for the enterprise (and centre; None: the
    enterprise's own awards) in other years."""
    return [a for a in inputs.prior_awards if a.measure == measure and a.enterprise == enterprise
            and a.data_centre == centre and a.year != inputs.year
            and a.state in COUNTED_STATES]


def paid_before(inputs: Inputs, measure: str, enterprise: str, centre: str | None) -> str | None:
    """Why ``measure``, paid once, pays nothing now: an approved or paid award of it for the
    same enterprise (and centre) in another year; None when there is none."""
    paid = awarded_before(inputs, measure, enterprise, centre)
    if not paid:
        return None
    first = min(paid, key=lambda a: (a.year, a.id))
    return (f"not eligible: already awarded for {first.year} (award {first.id}, {first.state});"
            f" measure {measure} pays {'a centre' if centre else 'an enterprise'} once")


def new_centre(inputs: Inputs, enterprise: str, centre: str, new_since: date, last_day: date,
               *, retrofit_counts: bool) -> tuple[list[Figure], list[str]]:
    """The commissioning figure of a centre and why it is not new, if it is not: an accepted
    ``commissioning`` declaration dated from ``new_since`` to ``last_day`` (the window's end),
    and no retrofit unless ``retrofit_counts``."""
    found = latest(inputs, "commissioning", enterprise, centre)
    if found is None:
        return [], ["not eligible: no accepted commissioning declaration"]
    day = date.fromisoformat(found.value["date"])
    retrofit = bool(found.value.get("retrofit"))
    what = "retrofitted" if retrofit else "commissioned"
    reasons = []
    if retrofit and not retrofit_counts:
        reasons.append(f"not eligible: retrofitted on {day}; the measure is for new builds")
    elif not new_since <= day <= last_day:
        reasons.append(f"not eligible: {what} on {day}, not between {new_since} (assumed start"
                       f" of 'new') and {last_day}")
    return [declared(found, f"{what} on", f"{day}")], reasons


def marked(parameter: Parameter) -> str:
    """Where a policy figure comes from: the bureau's assumption or the policy's text."""
    return ASSUMPTION if parameter.assumption else POLICY


class CapRooms:
    """What a measure's cap leaves as its awards are made in order: each data centre's own
    (its cap less what the measure awarded the centre in other years) when the cap is per
    data centre, else shared by the enterprise's awards (:func:`rewards.caps.cap_room`)."""

    def __init__(self, inputs: Inputs, measure: str, cap: Parameter) -> None:
        self.inputs, self.measure, self.cap = inputs, measure, cap
        self._start: dict[tuple[str, str | None], tuple[Decimal, str]] = {}
        self._left: dict[tuple[str, str | None], Decimal] = {}

    def _key(self, enterprise: str, centre: str | None) -> tuple[str, str | None]:
        return (enterprise, centre if self.cap.per == PER_CENTRE else None)

    def left(self, enterprise: str, centre: str | None) -> tuple[Decimal, Figure]:
        """The room left for the next award of ``enterprise`` (at ``centre``), and its figure."""
        key = self._key(enterprise, centre)
        if key not in self._start:
            self._start[key] = self._room(enterprise, centre)
            self._left[key] = self._start[key][0]
        (start, detail), room = self._start[key], self._left[key]
        if room != start:
            detail += f"; {start - room} of it awarded by this assessment to other centres"
        return room, Figure("cap left", f"{room}", marked(self.cap), detail)

    def take(self, enterprise: str, centre: str | None, amount: Decimal) -> None:
        self._left[self._key(enterprise, centre)] -= amount

    def _room(self, enterprise: str, centre: str | None) -> tuple[Decimal, str]:
        if self.cap.per != PER_CENTRE:
            return cap_room(self.inputs, self.measure, enterprise, centre, self.cap)
        assert isinstance(self.cap.value, Decimal)
        taken = sum((a.amount for a in awarded_before(self.inputs, self.measure, enterprise,
                                                      centre)), Decimal("0.00"))
        return (max(self.cap.value - taken, Decimal("0.00")),
                f"{self.cap.value} yuan per data centre over the policy period, less {taken}"
                " already awarded to it in other years")


def award(inputs: Inputs, measure: str, enterprise: str, centre: str | None, *,
          reasons: list[str], figures: list[Figure], assumptions: tuple[str, ...],
          rooms: CapRooms, raw: Decimal, how: Figure) -> Award:
    """The award once a measure has listed why it is not eligible (``reasons``; none: it is):
    nothing when a reason stands or the other-support register covers it, else ``raw`` (worked
    out as the figure ``how`` says) within what the cap leaves, rounded once to the fen."""
    amount = Decimal("0.00")
    refusal = double_support(inputs, measure, enterprise)
    if not reasons and refusal:
        reasons.append(refusal)
    elif not reasons:
        room, cap_figure = rooms.left(enterprise, centre)
        amount = to_fen(min(raw, room))
        rooms.take(enterprise, centre, amount)
        figures += [how, cap_figure]
        reasons.append("capped" if amount < raw else "eligible")
    return Award(measure, enterprise, centre, amount, amount > 0, tuple(reasons),
                 tuple(figures), assumptions)
