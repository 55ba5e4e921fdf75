"""Applications and vouchers: apply with a contract, the bureau's two keys recommend and
approve, the voucher is issued from the year's pool; revoke, expire and claw back.

Issuing takes the ledger's lock first (:func:`jinsuan.kernel.ledger.lock`), then reads what
the pool and the applicant's cap have left, then appends: every writer of the ledger queues on
that lock, so any number of approvals at once, from any number of platform processes, never
overshoot the pool or a cap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg

from jinsuan.contract.money import is_fen, to_fen
from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel import ledger
from jinsuan.kernel.auth import Principal
from jinsuan.kernel.errors import Conflict, Forbidden, Invalid, NotFound
from jinsuan.kernel.ledger import Move
from rewards.declarations import EVIDENCE, validated
from rewards.policy import Measure, Policy, PolicyError, in_force
from rewards.vouchers.parties import acting_applicant, affiliation

MEASURE = "9"


def _measure(on: date) -> tuple[Policy, Measure]:
    try:
        policy = in_force(on.year)
    except PolicyError as exc:
        raise Conflict(str(exc), field="contract") from None
    if not policy.covers(on):
        raise Conflict(f"{on} is outside the policy ({policy.effective_from} .."
                       f" {policy.effective_to}): no voucher is issued", field="contract")
    return policy, policy.measures[MEASURE]


def today() -> date:
    return datetime.now(SHANGHAI).date()


@dataclass(frozen=True, slots=True)
class Contract:
    provider: str  # the provider enterprise's name
    contract_id: str
    amount: Decimal
    starts_on: date
    ends_on: date
    special: bool  # leads a national major project or large-model R&D: the higher rate
    special_basis: str
    evidence: list[dict[str, Any]]


def apply(conn: psycopg.Connection, principal: Principal, contract: Contract) -> int:
    """File an application for the applicant the caller's tenant acts for; return its id.

    Refused, naming the rule and the entry behind it: a tenant acting for no applicant, an
    unknown provider or one without an in-province site, an applicant that is the provider or
    registered as affiliated with it, support already given for measure 9, a second
    application for the same contract.
    """
    who = acting_applicant(conn, principal)
    if who is None:
        raise Forbidden(f"tenant {principal.tenant!r} acts for no voucher applicant; an admin"
                        " binds a tenant to its applicant", field="tenant")
    if not (contract.amount > 0 and is_fen(contract.amount)):
        raise Invalid("a contract amount is > 0 yuan to the fen", field="amount")
    if contract.ends_on < contract.starts_on:
        raise Invalid("the contract ends before it starts", field="ends_on")
    if contract.special and not contract.special_basis.strip():
        raise Invalid("the 30% rate needs the project it rests on", field="special_basis")
    papers = validated(lambda: EVIDENCE.validate_python(contract.evidence), "evidence")
    if not papers:
        raise Invalid("an application names the contract's documents", field="evidence")
    provider = conn.execute(
        "SELECT e.id, e.credit_code, bool_or(s.in_province) FROM enterprises e"
        " LEFT JOIN sites s ON s.enterprise_id = e.id WHERE e.name = %s GROUP BY e.id",
        (contract.provider,)).fetchone()
    if provider is None:
        raise NotFound(f"no provider enterprise {contract.provider!r}", field="provider")
    if not provider[2]:
        raise Conflict(f"rule: a voucher buys Shanxi compute; {contract.provider!r} runs no"
                       " in-province site on the platform", field="provider")
    if provider[1] is not None:
        if provider[1] == who.credit_code:
            raise Conflict(f"rule: applicant and provider are one entity (credit code"
                           f" {who.credit_code})", field="provider")
        linked = affiliation(conn, who.credit_code, provider[1])
        if linked:
            raise Conflict(f"rule: an applicant may not claim on an affiliated provider's"
                           f" contract; {linked}", field="provider")
    support = conn.execute(
        "SELECT id, fund, amount, granted_on FROM reward_other_support"
        " WHERE measure = %s AND credit_code = %s ORDER BY id LIMIT 1",
        (MEASURE, who.credit_code)).fetchone()
    if support:
        raise Conflict(f"rule: the same applicant is not supported twice for the same item;"
                       f" other-support register entry {support[0]} ({support[1]},"
                       f" {support[2]} yuan, {support[3]})", field="contract")
    row = conn.execute(
        "INSERT INTO voucher_applications (applicant_id, provider_id, contract_id,"
        " contract_amount, starts_on, ends_on, special, special_basis, evidence, submitted_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (provider_id, contract_id) DO NOTHING RETURNING id",
        (who.id, provider[0], contract.contract_id, contract.amount, contract.starts_on,
         contract.ends_on, contract.special, contract.special_basis,
         json.dumps([p.model_dump() for p in papers]), principal.key_id)).fetchone()
    if row is None:
        earlier = conn.execute(
            "SELECT id FROM voucher_applications WHERE provider_id = %s AND contract_id = %s",
            (provider[0], contract.contract_id)).fetchone()
        raise Conflict(f"rule: one application per contract; contract {contract.contract_id!r}"
                       f" of {contract.provider!r} is application {earlier[0]}",  # type: ignore[index]
                       field="contract_id")
    return row[0]


def _application(conn: psycopg.Connection, application_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, applicant_id, provider_id, contract_amount, starts_on, ends_on, special,"
        " status, recommended_by FROM voucher_applications WHERE id = %s FOR UPDATE",
        (application_id,)).fetchone()
    if row is None:
        raise NotFound(f"no application {application_id}", field="application")
    keys = ("id", "applicant_id", "provider_id", "amount", "starts_on", "ends_on", "special",
            "status", "recommended_by")
    return dict(zip(keys, row, strict=True))


def recommend(conn: psycopg.Connection, principal: Principal, application_id: int) -> None:
    """The maker's step: a bureau key recommends a pending application for approval."""
    with conn.transaction():
        found = _application(conn, application_id)
        if found["status"] != "pending":
            raise Conflict(f"application {application_id} is {found['status']}, not pending",
                           field="application")
        conn.execute("UPDATE voucher_applications SET status = 'recommended',"
                     " recommended_by = %s WHERE id = %s", (principal.key_id, application_id))


def decline(conn: psycopg.Connection, principal: Principal, application_id: int,
            reason: str) -> None:
    if not reason.strip():
        raise Invalid("a decline says why", field="reason")
    with conn.transaction():
        found = _application(conn, application_id)
        if found["status"] not in ("pending", "recommended"):
            raise Conflict(f"application {application_id} is {found['status']}",
                           field="application")
        conn.execute("UPDATE voucher_applications SET status = 'declined', decided_by = %s,"
                     " decided_at = now(), reason = %s WHERE id = %s",
                     (principal.key_id, reason, application_id))


@dataclass(frozen=True, slots=True)
class Issued:
    voucher_id: int
    face_value: Decimal
    asked: Decimal  # the contract amount × the rate, before the cap and the pool
    why: str  # how the face value was arrived at


def approve(conn: psycopg.Connection, principal: Principal, application_id: int,
            on: date | None = None) -> Issued:
    """The checker's step, by another bureau key: issue the voucher from the pool.

    Face value = contract amount × rate (20%, or 30% for the special case), within what the
    applicant's cap for the year leaves, within what the year's pool has left (the policy file
    says whether a short pool issues what is left or refuses). Atomic with the ledger entry.
    """
    day = on or today()
    policy, measure = _measure(day)
    with conn.transaction():
        ledger.lock(conn)  # first: the pool and the cap are read under it
        found = _application(conn, application_id)
        if found["status"] != "recommended":
            raise Conflict(f"application {application_id} is {found['status']}; a bureau key"
                           " recommends it first", field="application")
        if found["recommended_by"] == principal.key_id:
            raise Forbidden(f"application {application_id} was recommended with this key;"
                            " another bureau key approves it (maker-checker)",
                            field="application")
        if found["ends_on"] < day:
            raise Conflict(f"the contract ended on {found['ends_on']}", field="application")
        rate = measure.ratio("special_rate" if found["special"] else "rate")
        cap = measure.amount("special_cap" if found["special"] else "cap")
        asked = to_fen(found["amount"] * rate)
        year = day.year
        pool_account = f"pool:voucher:{year}"
        if not conn.execute("SELECT 1 FROM ledger_entries WHERE to_account = %s"
                            " AND kind = 'voucher.fund' LIMIT 1", (pool_account,)).fetchone():
            ledger.append(conn, [Move("voucher.fund", f"fund:voucher:{year}", pool_account,
                                      measure.amount("pool"),
                                      {"policy": policy.id, "version": policy.version,
                                       "sha256": policy.sha256})], ledger.key_actor(principal))
        pool_left = ledger.balance(conn, pool_account)
        issued = conn.execute(
            "SELECT coalesce(sum(face_value), 0) FROM vouchers WHERE applicant_id = %s"
            " AND pool_year = %s", (found["applicant_id"], year)).fetchone()[0]  # type: ignore[index]
        cap_left = max(cap - issued, Decimal(0))
        grant = min(asked, cap_left)
        why = f"{found['amount']} × {rate} = {asked}"
        if grant < asked:
            why += f"; the applicant's {year} cap of {cap} leaves {cap_left}"
        if grant <= 0:
            raise Conflict(f"rule: the applicant's {year} cap of {cap} yuan is reached"
                           f" ({issued} issued)", field="application")
        if pool_left < grant:
            if measure.choice("when_pool_short") == "refuse" or pool_left <= 0:
                raise Conflict(f"rule: the {year} pool has {pool_left} yuan left, less than"
                               f" {grant}", field="application")
            grant = pool_left
            why += f"; the {year} pool had only {pool_left} left (policy: issue what is left)"
        valid_until = min(found["ends_on"], policy.effective_to)
        voucher = conn.execute(
            "INSERT INTO vouchers (application_id, applicant_id, provider_id, pool_year, rate,"
            " face_value, valid_from, valid_until) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " RETURNING id",
            (application_id, found["applicant_id"], found["provider_id"], year, rate, grant,
             found["starts_on"], valid_until)).fetchone()[0]  # type: ignore[index]
        ledger.append(conn, [Move("voucher.issue", pool_account, f"voucher:{voucher}", grant,
                                  {"voucher": voucher, "application": application_id,
                                   "applicant": found["applicant_id"], "why": why})],
                      ledger.key_actor(principal))
        conn.execute("UPDATE voucher_applications SET status = 'issued', decided_by = %s,"
                     " decided_at = now(), reason = %s WHERE id = %s",
                     (principal.key_id, why, application_id))
    return Issued(voucher, grant, asked, why)


def end(conn: psycopg.Connection, actor: str, voucher_id: int, state: str, reason: str
        ) -> Decimal:
    """Expire or revoke an active voucher: its unspent balance returns to its year's pool."""
    with conn.transaction():
        ledger.lock(conn)
        row = conn.execute("SELECT state, pool_year FROM vouchers WHERE id = %s FOR UPDATE",
                           (voucher_id,)).fetchone()
        if row is None:
            raise NotFound(f"no voucher {voucher_id}", field="voucher")
        if row[0] != "active":
            raise Conflict(f"voucher {voucher_id} is already {row[0]}", field="voucher")
        left = ledger.balance(conn, f"voucher:{voucher_id}")
        if left > 0:
            ledger.append(conn, [Move(f"voucher.{'expire' if state == 'expired' else 'revoke'}",
                                      f"voucher:{voucher_id}", f"pool:voucher:{row[1]}", left,
                                      {"voucher": voucher_id, "reason": reason})], actor)
        conn.execute("UPDATE vouchers SET state = %s, ended_at = now(), end_reason = %s"
                     " WHERE id = %s", (state, reason, voucher_id))
    return left


def revoke(conn: psycopg.Connection, principal: Principal, voucher_id: int, reason: str
           ) -> Decimal:
    if not reason.strip():
        raise Invalid("a revocation says why", field="reason")
    return end(conn, ledger.key_actor(principal), voucher_id, "revoked", reason)


def expire_due(conn: psycopg.Connection, on: date | None = None) -> list[int]:
    """Expire every active voucher whose validity ended before ``on``; return their ids."""
    day = on or today()
    due = [r[0] for r in conn.execute(
        "SELECT id FROM vouchers WHERE state = 'active' AND valid_until < %s ORDER BY id",
        (day,))]
    for voucher_id in due:
        end(conn, "platform", voucher_id, "expired", f"valid until {day}")
    return due


def clawback(conn: psycopg.Connection, principal: Principal, voucher_id: int, reason: str
             ) -> Decimal:
    """After fraud: reverse every draw on the voucher (the provider's receivable goes back to
    the pool, netted in its next statement if already paid) and revoke it."""
    if not reason.strip():
        raise Invalid("a clawback says why", field="reason")
    with conn.transaction():
        ledger.lock(conn)
        row = conn.execute("SELECT provider_id, pool_year, state FROM vouchers WHERE id = %s"
                           " FOR UPDATE", (voucher_id,)).fetchone()
        if row is None:
            raise NotFound(f"no voucher {voucher_id}", field="voucher")
        drawn = conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM voucher_draws WHERE voucher_id = %s",
            (voucher_id,)).fetchone()[0]  # type: ignore[index]
        reversed_before = conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM voucher_clawbacks WHERE voucher_id = %s",
            (voucher_id,)).fetchone()[0]  # type: ignore[index]
        amount = drawn - reversed_before
        if amount > 0:
            clawed = conn.execute(
                "INSERT INTO voucher_clawbacks (voucher_id, amount, reason, made_by)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (voucher_id, amount, reason, principal.key_id)).fetchone()[0]  # type: ignore[index]
            ledger.append(conn, [Move("voucher.clawback", f"receivable:provider:{row[0]}",
                                      f"pool:voucher:{row[1]}", amount,
                                      {"voucher": voucher_id, "clawback": clawed,
                                       "reason": reason})], ledger.key_actor(principal))
    if row[2] == "active":
        revoke(conn, principal, voucher_id, f"clawback: {reason}")
    return amount

