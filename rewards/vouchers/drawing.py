"""Draws on vouchers from metered usage: each usage record of a job submitted with a voucher
draws once, an amount or nothing with the reason, and a usage adjustment adjusts the draw.

A record draws when the job's tenant acts for the voucher's applicant, the run was at an
in-province site of the contracted provider, and it ended inside the contract's dates and the
voucher's validity (Asia/Shanghai dates); it draws the policy file's share of its cost (by
default the voucher's rate), up to the voucher's balance. An adjustment record (a correction
of a run's usage) draws its own difference the same way: a negative one gives back, never more
than the run's records drew.

The sweep runs in the platform's background jobs and on demand; a record is drawn in its own
transaction under the ledger's lock, and ``voucher_draws``' key makes a second draw of it
impossible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import psycopg

from jinsuan.contract.money import to_fen
from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel import ledger
from jinsuan.kernel.ledger import Move
from rewards.policy import in_force
from rewards.vouchers.issuing import MEASURE

BATCH = 500


@dataclass(frozen=True, slots=True)
class Usage:
    id: int
    job_id: str
    run_id: str
    tenant: str
    site: str
    site_enterprise: int
    in_province: bool
    ended_at: datetime | None
    cost: Decimal
    adjusts: int | None
    voucher_id: int


_PENDING = (
    "SELECT u.id, u.job_id, u.run_id, u.tenant, s.name, s.enterprise_id, s.in_province,"
    " coalesce(o.ended_at, u.ended_at), u.cost_yuan, u.adjusts, (j.spec->>'voucher')::bigint"
    " FROM usage_records u JOIN jobs j ON j.id = u.job_id JOIN sites s ON s.id = u.site_id"
    " LEFT JOIN usage_records o ON o.id = u.adjusts"
    " WHERE j.spec->>'voucher' IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM voucher_draws d WHERE d.usage_record_id = u.id)"
    " ORDER BY u.id LIMIT %s"
)


def draw_pending(conn: psycopg.Connection) -> int:
    """Draw every usage record not drawn yet; return how many were decided."""
    decided = 0
    while True:
        batch = [Usage(*row) for row in conn.execute(_PENDING, (BATCH,))]
        for usage in batch:
            decided += draw(conn, usage)
        if len(batch) < BATCH:
            return decided


def draw(conn: psycopg.Connection, usage: Usage) -> int:
    """Decide one record's draw; 0 when another process decided it first."""
    with conn.transaction():
        ledger.lock(conn)
        if conn.execute("SELECT 1 FROM voucher_draws WHERE usage_record_id = %s",
                        (usage.id,)).fetchone():
            return 0
        amount, reason, move = _decide(conn, usage)
        seq = None
        if move is not None:
            seq = ledger.append(conn, [move], "platform")[0]["seq"]
        conn.execute(
            "INSERT INTO voucher_draws (usage_record_id, voucher_id, job_id, amount, reason,"
            " ledger_seq) VALUES (%s, %s, %s, %s, %s, %s)",
            (usage.id, usage.voucher_id, usage.job_id, amount, reason, seq))
    return 1


def _decide(conn: psycopg.Connection, usage: Usage) -> tuple[Decimal, str, Move | None]:
    nothing = Decimal("0.00")
    voucher = conn.execute(
        "SELECT v.state, v.provider_id, v.valid_from, v.valid_until, v.rate, v.pool_year,"
        " a.starts_on, a.ends_on, e.name, t.tenant IS NOT NULL"
        " FROM vouchers v JOIN voucher_applications a ON a.id = v.application_id"
        " JOIN enterprises e ON e.id = v.provider_id"
        " LEFT JOIN voucher_applicant_tenants t ON t.applicant_id = v.applicant_id"
        "   AND t.tenant = %s WHERE v.id = %s", (usage.tenant, usage.voucher_id)).fetchone()
    if voucher is None:
        return nothing, f"voucher {usage.voucher_id} does not exist", None
    state, provider, valid_from, valid_until, rate, year, starts, ends, provider_name, bound \
        = voucher
    if not bound:
        return nothing, (f"tenant {usage.tenant!r} does not act for voucher"
                         f" {usage.voucher_id}'s applicant"), None
    if usage.site_enterprise != provider or not usage.in_province:
        return nothing, (f"ran at {usage.site!r}, not at an in-province site of the contracted"
                         f" provider {provider_name!r}"), None
    if usage.ended_at is None:
        return nothing, "the run has no end time to date it by", None
    day = usage.ended_at.astimezone(SHANGHAI).date()
    first, last = max(starts, valid_from), min(ends, valid_until)
    if not first <= day <= last:
        return nothing, (f"ended on {day}, outside the contract's dates and the voucher's"
                         f" validity ({first} .. {last})"), None
    share = rate if _draw_share(day) == "voucher_rate" else Decimal(1)
    wanted = to_fen(usage.cost * share)
    voucher_account = f"voucher:{usage.voucher_id}"
    provider_account = f"receivable:provider:{provider}"
    if wanted < 0:
        drawn = conn.execute(
            "SELECT coalesce(sum(d.amount), 0) FROM voucher_draws d"
            " JOIN usage_records u ON u.id = d.usage_record_id"
            " WHERE u.run_id = %s AND d.voucher_id = %s",
            (usage.run_id, usage.voucher_id)).fetchone()[0]  # type: ignore[index]
        back = min(-wanted, drawn)
        if back <= 0:
            return nothing, "an adjustment down of a run that drew nothing", None
        target = voucher_account if state == "active" else f"pool:voucher:{year}"
        return -back, f"gave back {back} for an adjustment of {usage.cost}", Move(
            "voucher.adjust", provider_account, target, back,
            {"voucher": usage.voucher_id, "usage_record": usage.id, "job": usage.job_id})
    if state != "active":
        return nothing, f"voucher {usage.voucher_id} is {state}", None
    if wanted == 0:
        return nothing, "the record costs nothing at the draw share", None
    balance = ledger.balance(conn, voucher_account)
    if balance <= 0:
        return nothing, f"voucher {usage.voucher_id}'s balance is spent", None
    amount = min(wanted, balance)
    reason = f"{usage.cost} × {share} = {wanted}" + (
        f", {amount} left on the voucher" if amount < wanted else "")
    return amount, reason, Move("voucher.draw", voucher_account, provider_account, amount,
                                {"voucher": usage.voucher_id, "usage_record": usage.id,
                                 "run": usage.run_id, "job": usage.job_id})


def _draw_share(day: date) -> str:
    return in_force(day.year).measures[MEASURE].choice("draw_share")
