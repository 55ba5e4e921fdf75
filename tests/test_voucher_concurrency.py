"""Fifty-one approvals at once from two platform processes never overshoot the year's pool or
an applicant's cap, and the ledger's chain stays whole.

By hand: the pool is 50,000,000.00. 清源智能 already holds a 60,000.00 voucher, leaving
49,940,000.00. Then at once: 49 applicants each asking 5,000,000.00 × 20% = 1,000,000.00, and
one applicant asking twice 3,000,000.00 × 20% = 600,000.00 (its cap: 1,000,000.00 a year, so
600,000.00 + 400,000.00 at most). Asked in all, within caps: 49,000,000 + 1,000,000 =
50,000,000.00 > 49,940,000.00, so the pool runs out: whatever the order, exactly 49,940,000.00
is issued, the approval that finds the pool short gets what is left, later ones are refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
from test_vouchers import PAPERS, World, code

from jinsuan.kernel import ledger
from jinsuan.kernel.auth import Role
from rewards.vouchers import issuing, parties
from rewards.vouchers.issuing import Contract

APPROVERS = Path(__file__).with_name("voucher_approvers.py")


def test_two_processes_approving_at_once_never_overshoot(conn: psycopg.Connection, db,
                                                          database_url: str,
                                                          tmp_path: Path) -> None:
    world = World(conn, db)
    world.voucher(world.lab_a, "300000.00")
    applications: list[int] = []
    twice = None
    for n in range(50):
        applicant = parties.register_applicant(conn, code=code(100 + n), name=f"applicant {n}",
                                               kind="company", in_province=True)
        parties.bind_tenant(conn, applicant.id, f"t{n}")
        who = world.principal(Role.DISPATCHER, tenant=f"t{n}")
        amounts = ["3000000.00", "3000000.00"] if n == 0 else ["5000000.00"]
        if n == 0:
            twice = applicant.id
        for i, amount in enumerate(amounts):
            number = issuing.apply(conn, who, Contract(
                "Taihang Compute", f"C-{n}-{i}", Decimal(amount), date(2026, 1, 1),
                date(2026, 12, 31), False, "", PAPERS))
            issuing.recommend(conn, world.maker, number)
            applications.append(number)
    go = tmp_path / "go"
    halves = [applications[0::2], applications[1::2]]
    processes = [subprocess.Popen(
        [sys.executable, str(APPROVERS), database_url, str(world.checker.key_id), str(go),
         *map(str, half)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=APPROVERS.parent.parent) for half in halves]
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        results += [json.loads(line) for line in out.splitlines()]
    assert sorted(r["application"] for r in results) == sorted(applications)

    issued = [Decimal(r["face_value"]) for r in results if "face_value" in r]
    refused = [r["refused"] for r in results if "refused" in r]
    assert sum(issued) == Decimal("49940000.00")
    assert ledger.balance(conn, "pool:voucher:2026") == 0
    assert all("pool has 0.00 yuan left" in reason for reason in refused)
    assert len(issued) + len(refused) == 51
    # every face value is what its contract asked, but the one the pool cut short and the
    # second of the applicant at its cap
    per_applicant = dict(conn.execute(
        "SELECT applicant_id, sum(face_value) FROM vouchers WHERE pool_year = 2026"
        " GROUP BY applicant_id").fetchall())
    assert per_applicant[twice] <= Decimal("1000000.00")
    assert max(per_applicant.values()) <= Decimal("1000000.00")
    whole = {Decimal("1000000.00"), Decimal("600000.00"), Decimal("400000.00")}
    assert len([v for v in issued if v not in whole]) <= 1
    # what the ledger says each voucher holds is what the vouchers table says was issued
    for voucher, face in conn.execute("SELECT id, face_value FROM vouchers"):
        assert ledger.balance(conn, f"voucher:{voucher}") == face
    key = ledger.signing_key(tmp_path / "k.pem")
    ledger.checkpoint(conn, key)
    assert ledger.verify(conn, key.public_key()) == []
