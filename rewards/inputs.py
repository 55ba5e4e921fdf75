"""What an assessment is computed from, frozen: the store's rows copied into plain values.

The calculations (:mod:`rewards.access`, :mod:`rewards.pue` and the others named in
:data:`rewards.store.CALCULATIONS`) are pure functions of these and a policy;
:mod:`rewards.store` reads them from the database and keeps an exact copy with each
assessment, with their digest, so that the assessment can be re-computed and explained later
whatever has changed in the store since.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

MEASURED, DECLARED, ASSUMPTION, POLICY = "measured", "declared", "assumption", "policy"
"""Where a figure comes from: the platform's measurements, an accepted declaration, a
parameter the bureau set in the policy file, or the policy's own text."""

COUNTED_STATES = ("approved", "paid")
"""Award states that count as support already given (caps over several years, paid once)."""


@dataclass(frozen=True, slots=True)
class Site:
    id: int
    name: str
    enterprise: str
    city: str
    data_centre: str


@dataclass(frozen=True, slots=True)
class SiteHour:
    """One row of ``rollup_site_hourly``, as the assessment saw it."""

    site_id: int
    hour: datetime  # UTC start of the hour
    fp16_pflops: Decimal  # connected, time-weighted, estimated peaks included
    fp16_pflops_estimated: Decimal  # the part resting on estimated peaks
    coverage_accelerators: Decimal
    it_kwh: Decimal | None
    facility_kwh: Decimal | None
    coverage_it: Decimal
    coverage_facility: Decimal
    racks: int
    quality: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Declaration:
    """An accepted declaration: a fact the agents cannot measure, with its evidence."""

    id: int
    enterprise: str
    data_centre: str | None
    kind: str  # "commissioning": {"date": "2024-09-01", "retrofit": false}
    value: dict[str, Any]
    evidence: tuple[tuple[str, str], ...]  # (document name, SHA-256)


@dataclass(frozen=True, slots=True)
class PriorAward:
    """An award of an earlier assessment that was approved or paid."""

    id: int
    measure: str
    year: int
    enterprise: str
    data_centre: str | None
    amount: Decimal
    state: str


@dataclass(frozen=True, slots=True)
class OtherSupport:
    """An entry of the register of other provincial support (同一内容不重复支持)."""

    id: int
    enterprise: str
    measure: str
    fund: str
    amount: Decimal
    granted_on: date


@dataclass(frozen=True, slots=True)
class TerminalsServed:
    """A site's largest ``site_terminals_served`` reading inside the year's window (the gauge
    counts the distinct terminals served since 1 January, Asia/Shanghai)."""

    site_id: int
    terminals: int
    at: datetime  # when the largest reading was taken (UTC)
    readings: int  # readings inside the window


@dataclass(frozen=True, slots=True)
class SiteAccelerators:
    """A site's accelerators, domestic or not, in its inventory at the window's end."""

    site_id: int
    domestic: bool
    count: int
    fp16_tflops: Decimal  # Σ dense FP16 peaks from a datasheet
    fp16_tflops_estimated: Decimal  # Σ estimated peaks (a model without a datasheet figure)
    without_peak: int  # accelerators with no FP16 figure at all
    as_of: datetime  # the inventory write the snapshot is (UTC)


@dataclass(frozen=True, slots=True)
class OutboundUsage:
    """What the scheduler metered for out-of-province users at one enterprise's in-province
    sites in the year's window: Σ ``usage_records.cost_yuan`` (originals and adjustments) of
    tenants bound to voucher applicants registered outside the province."""

    enterprise: str
    cost_yuan: Decimal
    records: int


@dataclass(frozen=True, slots=True)
class Inputs:
    year: int
    sites: tuple[Site, ...]
    hours: tuple[SiteHour, ...]
    declarations: tuple[Declaration, ...] = ()
    prior_awards: tuple[PriorAward, ...] = ()
    other_support: tuple[OtherSupport, ...] = ()
    terminals: tuple[TerminalsServed, ...] = ()
    accelerators: tuple[SiteAccelerators, ...] = ()
    outbound: tuple[OutboundUsage, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def sha256(self) -> str:
        """The digest of the inputs' canonical JSON: equal inputs, equal digest."""
        return hashlib.sha256(canonical(self.as_json())).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inputs:
        return cls(
            year=data["year"],
            sites=tuple(Site(**s) for s in data["sites"]),
            hours=tuple(SiteHour(
                site_id=h["site_id"], hour=datetime.fromisoformat(h["hour"]),
                fp16_pflops=Decimal(h["fp16_pflops"]),
                fp16_pflops_estimated=Decimal(h["fp16_pflops_estimated"]),
                coverage_accelerators=Decimal(h["coverage_accelerators"]),
                it_kwh=_decimal(h["it_kwh"]), facility_kwh=_decimal(h["facility_kwh"]),
                coverage_it=Decimal(h["coverage_it"]),
                coverage_facility=Decimal(h["coverage_facility"]), racks=h["racks"],
                quality=tuple(h["quality"])) for h in data["hours"]),
            declarations=tuple(Declaration(
                id=d["id"], enterprise=d["enterprise"], data_centre=d["data_centre"],
                kind=d["kind"], value=d["value"],
                evidence=tuple(tuple(e) for e in d["evidence"]))  # type: ignore[misc]
                for d in data["declarations"]),
            prior_awards=tuple(PriorAward(**{**a, "amount": Decimal(a["amount"])})
                               for a in data["prior_awards"]),
            other_support=tuple(OtherSupport(**{**o, "amount": Decimal(o["amount"]),
                                                "granted_on": date.fromisoformat(o["granted_on"])})
                                for o in data["other_support"]),
            terminals=tuple(TerminalsServed(**{**t, "at": datetime.fromisoformat(t["at"])})
                            for t in data["terminals"]),
            accelerators=tuple(SiteAccelerators(**{
                **a, "fp16_tflops": Decimal(a["fp16_tflops"]),
                "fp16_tflops_estimated": Decimal(a["fp16_tflops_estimated"]),
                "as_of": datetime.fromisoformat(a["as_of"])})
                for a in data["accelerators"]),
            outbound=tuple(OutboundUsage(**{**o, "cost_yuan": Decimal(o["cost_yuan"])})
                           for o in data["outbound"]),
        )


@dataclass(frozen=True, slots=True)
class Figure:
    """One number of an award, with where it comes from and how it was obtained."""

    name: str
    value: str
    source: str  # MEASURED, DECLARED, ASSUMPTION or POLICY
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Award:
    """What one enterprise (or one of its data centres) is assessed for one measure."""

    measure: str
    enterprise: str
    data_centre: str | None
    amount: Decimal
    eligible: bool
    reasons: tuple[str, ...]  # why eligible or not, in order, each naming its rule
    figures: tuple[Figure, ...]
    assumptions: tuple[str, ...] = field(default=())  # the assumed parameters it rests on

    def as_json(self) -> dict[str, Any]:
        return _plain(asdict(self))


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def number(value: float | Decimal | None) -> Decimal | None:
    """A stored figure as an exact ``Decimal``: a float through its shortest repr, so the same
    float always gives the same decimal."""
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(repr(value))


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
