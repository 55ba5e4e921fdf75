"""An award's way to the bank: proposed by one bureau key, approved by another, paid.

Each step is a ledger entry (:mod:`jinsuan.kernel.ledger`), in the same transaction as the
award's new state, with these accounts:

- propose: ``budget:reward:<measure>:<year>`` → ``proposed:award:<id>``
- approve: ``proposed:award:<id>`` → ``payable:enterprise:<id>``
- pay:     ``payable:enterprise:<id>`` → ``paid:enterprise:<id>`` (with the payment reference)
- adjust:  the difference between ``budget:reward:…`` and ``payable:enterprise:<id>`` (an
  approved or paid award is never edited; a correction is a new entry with its reason)

So the budget account's balance is minus what the measure has committed, and an enterprise's
payable and paid balances are what it is owed and what it was paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from jinsuan.contract.money import is_fen
from jinsuan.kernel import ledger
from jinsuan.kernel.auth import Principal
from jinsuan.kernel.errors import Conflict, Forbidden, Invalid, NotFound
from jinsuan.kernel.ledger import Move
from rewards.store import latest_id


@dataclass(frozen=True, slots=True)
class AwardRow:
    id: int
    assessment_id: int
    measure: str
    year: int
    enterprise_id: int
    data_centre: str | None
    amount: Decimal
    state: str
    proposed_by: int | None


def _locked(conn: psycopg.Connection, award_id: int) -> AwardRow:
    row = conn.execute(
        "SELECT id, assessment_id, measure, year, enterprise_id, data_centre, amount, state,"
        " proposed_by FROM reward_awards WHERE id = %s FOR UPDATE", (award_id,)).fetchone()
    if row is None:
        raise NotFound(f"no award {award_id}", field="award")
    return AwardRow(*row)


def _ref(award: AwardRow, **extra: Any) -> dict[str, Any]:
    return {"award": award.id, "assessment": award.assessment_id, "measure": award.measure,
            "year": award.year, "enterprise": award.enterprise_id,
            "data_centre": award.data_centre, **extra}



def _budget(award: AwardRow) -> str:
    return f"budget:reward:{award.measure}:{award.year}"


def propose(conn: psycopg.Connection, award_id: int, principal: Principal) -> AwardRow:
    """The maker's step: put an assessed award of the latest assessment forward."""
    with conn.transaction():
        award = _locked(conn, award_id)
        _expect(award, "assessed", "proposed")
        if award.amount <= 0:
            raise Conflict(f"award {award.id} is 0 yuan: there is nothing to propose",
                           field="award")
        latest = latest_id(conn, award.year, award.measure)
        if latest != award.assessment_id:
            raise Conflict(f"award {award.id} is of assessment {award.assessment_id}; the latest"
                           f" assessment of measure {award.measure} for {award.year} is"
                           f" {latest}: propose its award", field="award")
        ledger.append(conn, [Move("reward.propose", _budget(award),
                                  f"proposed:award:{award.id}", award.amount, _ref(award))],
                      ledger.key_actor(principal))
        conn.execute("UPDATE reward_awards SET state = 'proposed', proposed_by = %s"
                     " WHERE id = %s", (principal.key_id, award.id))
    return _reread(conn, award.id)


def approve(conn: psycopg.Connection, award_id: int, principal: Principal) -> AwardRow:
    """The checker's step: another bureau key than the one that proposed it."""
    with conn.transaction():
        award = _locked(conn, award_id)
        _expect(award, "proposed", "approved")
        if award.proposed_by == principal.key_id:
            raise Forbidden(f"award {award.id} was proposed with this key; another bureau key"
                            " must approve it (maker-checker)", field="award")
        ledger.append(conn, [Move("reward.approve", f"proposed:award:{award.id}",
                                  f"payable:enterprise:{award.enterprise_id}", award.amount,
                                  _ref(award))], ledger.key_actor(principal))
        conn.execute("UPDATE reward_awards SET state = 'approved', approved_by = %s"
                     " WHERE id = %s", (principal.key_id, award.id))
    return _reread(conn, award.id)


def pay(conn: psycopg.Connection, award_id: int, principal: Principal, reference: str
        ) -> AwardRow:
    """Record that the approved amount was paid, with the payment's reference."""
    if not reference.strip():
        raise Invalid("a payment needs its reference (the bank transfer's number)",
                      field="reference")
    with conn.transaction():
        award = _locked(conn, award_id)
        _expect(award, "approved", "paid")
        ledger.append(conn, [Move("reward.pay", f"payable:enterprise:{award.enterprise_id}",
                                  f"paid:enterprise:{award.enterprise_id}", award.amount,
                                  _ref(award, payment_reference=reference))],
                      ledger.key_actor(principal))
        conn.execute("UPDATE reward_awards SET state = 'paid', payment_reference = %s"
                     " WHERE id = %s", (reference, award.id))
    return _reread(conn, award.id)


def adjust(conn: psycopg.Connection, award_id: int, principal: Principal, delta: Decimal,
           reason: str) -> int:
    """Correct an approved or paid award by ``delta`` yuan, with a reason; return the
    adjustment's id. The award is untouched; the ledger carries the difference."""
    if not (delta != 0 and is_fen(delta)):
        raise Invalid(f"an adjustment is a non-zero amount of yuan to the fen, not {delta}",
                      field="delta")
    if not reason.strip():
        raise Invalid("an adjustment says why", field="reason")
    with conn.transaction():
        award = _locked(conn, award_id)
        if award.state not in ("approved", "paid"):
            raise Conflict(f"award {award.id} is {award.state}: only an approved or paid award"
                           " is adjusted (an assessed one is re-assessed)", field="award")
        adjusted = conn.execute(
            "SELECT coalesce(sum(delta), 0) FROM reward_adjustments WHERE award_id = %s",
            (award.id,)).fetchone()[0]  # type: ignore[index]
        if award.amount + adjusted + delta < 0:
            raise Invalid(f"award {award.id} would fall below 0 yuan", field="delta")
        adjustment = conn.execute(
            "INSERT INTO reward_adjustments (award_id, delta, reason, made_by)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (award.id, delta, reason, principal.key_id)).fetchone()[0]  # type: ignore[index]
        payable = f"payable:enterprise:{award.enterprise_id}"
        source, target = (_budget(award), payable) if delta > 0 else (payable, _budget(award))
        ledger.append(conn, [Move("reward.adjust", source, target, abs(delta),
                                  _ref(award, adjustment=adjustment, reason=reason))],
                      ledger.key_actor(principal))
    return adjustment


def _expect(award: AwardRow, state: str, done: str) -> None:
    if award.state != state:
        raise Conflict(f"award {award.id} is {award.state}; only an award {state} can be"
                       f" {done}", field="award")


def _reread(conn: psycopg.Connection, award_id: int) -> AwardRow:
    row = conn.execute(
        "SELECT id, assessment_id, measure, year, enterprise_id, data_centre, amount, state,"
        " proposed_by FROM reward_awards WHERE id = %s", (award_id,)).fetchone()
    return AwardRow(*row)  # type: ignore[misc]
