"""Statements: for a provider, what the bureau owes it per settlement period (each draw traced
to its usage record, run and job), settled and marked paid; for an applicant, each voucher's
face value, draws and balance. Balances come from the ledger, never from a cached column."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from jinsuan.contract.policytime import days_bounds
from jinsuan.kernel import ledger
from jinsuan.kernel.auth import Principal
from jinsuan.kernel.errors import Conflict, Invalid, NotFound
from jinsuan.kernel.ledger import Move
from rewards.policy import PolicyError, in_force
from rewards.vouchers.issuing import MEASURE

_MONTHS = {"month": 1, "quarter": 3, "year": 12}


def period_of(day: date) -> tuple[date, date]:
    """The settlement period (the policy file's: quarter by default) holding ``day``, as
    inclusive Asia/Shanghai dates. A day no policy version covers is the caller's mistake."""
    try:
        policy = in_force(day.year)
    except PolicyError as exc:
        raise Invalid(str(exc), field="day") from None
    months = _MONTHS[policy.measures[MEASURE].choice("settlement_period")]
    first_month = (day.month - 1) // months * months + 1
    start = date(day.year, first_month, 1)
    after = date(day.year + (first_month + months - 1) // 12,
                 (first_month + months - 1) % 12 + 1, 1)
    return start, after - timedelta(days=1)


def provider_statement(conn: psycopg.Connection, provider_id: int, day: date
                       ) -> dict[str, Any]:
    """The draws on the provider's vouchers in the period holding ``day``."""
    first, last = period_of(day)
    start, end = days_bounds(first, last)
    rows = conn.execute(
        "SELECT d.usage_record_id, u.run_id, d.job_id, d.voucher_id, v.applicant_id,"
        " u.cost_yuan, d.amount, d.reason, d.drawn_at, d.ledger_seq, d.settlement_id"
        " FROM voucher_draws d JOIN vouchers v ON v.id = d.voucher_id"
        " JOIN usage_records u ON u.id = d.usage_record_id"
        " WHERE v.provider_id = %s AND d.amount <> 0 AND d.drawn_at >= %s AND d.drawn_at < %s"
        " ORDER BY d.drawn_at, d.usage_record_id", (provider_id, start, end)).fetchall()
    keys = ("usage_record", "run", "job", "voucher", "applicant", "usage_cost", "amount",
            "reason", "drawn_at", "ledger_entry", "settlement")
    draws = [dict(zip(keys, row, strict=True)) for row in rows]
    return {"provider_id": provider_id, "period": [first, last],
            "draws": draws,
            "total": sum((d["amount"] for d in draws), Decimal("0.00")),
            "unsettled": sum((d["amount"] for d in draws if d["settlement"] is None),
                             Decimal("0.00")),
            "receivable_balance": ledger.balance(conn, f"receivable:provider:{provider_id}")}


def settle(conn: psycopg.Connection, principal: Principal, provider_id: int, day: date) -> int:
    """Draw up the provider's settlement for the period holding ``day``: every draw of the
    period not yet settled; return its id. Paying it is :func:`mark_paid`."""
    first, last = period_of(day)
    start, end = days_bounds(first, last)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('voucher_settlement'), %s)",
                     (provider_id,))
        if conn.execute("SELECT 1 FROM voucher_settlements WHERE provider_id = %s"
                        " AND period_start = %s", (provider_id, first)).fetchone():
            raise Conflict(f"the period {first} .. {last} is already settled for this provider",
                           field="period")
        total = conn.execute(
            "SELECT coalesce(sum(d.amount), 0) FROM voucher_draws d"
            " JOIN vouchers v ON v.id = d.voucher_id WHERE v.provider_id = %s"
            " AND d.settlement_id IS NULL AND d.amount <> 0"
            " AND d.drawn_at >= %s AND d.drawn_at < %s", (provider_id, start, end)
        ).fetchone()[0]  # type: ignore[index]
        if total <= 0:
            raise Conflict(f"nothing to settle for {first} .. {last}", field="period")
        settlement = conn.execute(
            "INSERT INTO voucher_settlements (provider_id, period_start, period_end, amount,"
            " created_by) VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (provider_id, first, last, total, principal.key_id)).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "UPDATE voucher_draws d SET settlement_id = %s FROM vouchers v"
            " WHERE v.id = d.voucher_id AND v.provider_id = %s AND d.settlement_id IS NULL"
            " AND d.amount <> 0 AND d.drawn_at >= %s AND d.drawn_at < %s",
            (settlement, provider_id, start, end))
    return settlement


def mark_paid(conn: psycopg.Connection, principal: Principal, settlement_id: int,
              reference: str) -> Decimal:
    """Record the bureau's payment of a settlement: the provider's receivable becomes paid."""
    if not reference.strip():
        raise Invalid("a payment needs its reference", field="reference")
    with conn.transaction():
        row = conn.execute("SELECT provider_id, amount, paid_at FROM voucher_settlements"
                           " WHERE id = %s FOR UPDATE", (settlement_id,)).fetchone()
        if row is None:
            raise NotFound(f"no settlement {settlement_id}", field="settlement")
        if row[2] is not None:
            raise Conflict(f"settlement {settlement_id} was paid on {row[2]:%Y-%m-%d}",
                           field="settlement")
        ledger.append(conn, [Move("voucher.settle", f"receivable:provider:{row[0]}",
                                  f"paid:provider:{row[0]}", row[1],
                                  {"settlement": settlement_id, "payment_reference": reference})],
                      ledger.key_actor(principal))
        conn.execute("UPDATE voucher_settlements SET paid_reference = %s, paid_by = %s,"
                     " paid_at = now() WHERE id = %s",
                     (reference, principal.key_id, settlement_id))
    return row[1]


def voucher_statement(conn: psycopg.Connection, voucher_id: int) -> dict[str, Any]:
    """A voucher: what was issued, each draw (and each record that drew nothing, with why),
    and its balance."""
    row = conn.execute(
        "SELECT v.id, v.applicant_id, a.name, v.provider_id, e.name, v.pool_year, v.rate,"
        " v.face_value, v.valid_from, v.valid_until, v.state, v.end_reason, p.contract_id"
        " FROM vouchers v JOIN voucher_applicants a ON a.id = v.applicant_id"
        " JOIN enterprises e ON e.id = v.provider_id"
        " JOIN voucher_applications p ON p.id = v.application_id WHERE v.id = %s",
        (voucher_id,)).fetchone()
    if row is None:
        raise NotFound(f"no voucher {voucher_id}", field="voucher")
    keys = ("id", "applicant_id", "applicant", "provider_id", "provider", "pool_year", "rate",
            "face_value", "valid_from", "valid_until", "state", "end_reason", "contract_id")
    found = dict(zip(keys, row, strict=True))
    draws = conn.execute(
        "SELECT d.usage_record_id, u.run_id, d.job_id, u.cost_yuan, d.amount, d.reason,"
        " d.drawn_at, d.ledger_seq FROM voucher_draws d"
        " JOIN usage_records u ON u.id = d.usage_record_id WHERE d.voucher_id = %s"
        " ORDER BY d.drawn_at, d.usage_record_id", (voucher_id,)).fetchall()
    found["draws"] = [dict(zip(("usage_record", "run", "job", "usage_cost", "amount", "reason",
                                "drawn_at", "ledger_entry"), d, strict=True)) for d in draws]
    found["drawn"] = sum((d[4] for d in draws), Decimal("0.00"))
    found["balance"] = ledger.balance(conn, f"voucher:{voucher_id}")
    return found
