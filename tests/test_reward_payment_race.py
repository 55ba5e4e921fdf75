"""One award is approved once and paid once, however many platform processes are asked at once:
two ``jinsuan serve`` processes on one database, a checker's approval and then the payment sent
to both many times together (a finance officer's double click, a retry after a timeout, two
replicas behind a load balancer). The award's row is locked while its state moves, so one
request wins each step and the others are refused; the ledger holds one entry of each."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from collectors_kit import bearer
from servers import jinsuan_serve

from jinsuan.kernel import ledger
from tests.test_rewards_store import assessed_award, fleet  # noqa: F401

pytestmark = pytest.mark.slow
AT_ONCE = 16


def test_an_award_is_approved_once_and_paid_once_by_two_processes_at_once(
        fleet, database_url: str, tmp_path: Path) -> None:  # noqa: F811
    client, conn, (maker, checker), _, first = fleet
    award, path = assessed_award(client, maker, first.year)
    assert client.post(f"{path}/propose", headers=bearer(maker)).status_code == 200

    with jinsuan_serve(database_url, tmp_path / "one") as one, \
            jinsuan_serve(database_url, tmp_path / "two") as two:
        def at_once(step: str, key: str, body: dict | None = None) -> list[httpx.Response]:
            def send(i: int) -> httpx.Response:
                return httpx.post(f"{(one, two)[i % 2].url}{path}/{step}", json=body,
                                  headers=bearer(key), timeout=60)

            with ThreadPoolExecutor(AT_ONCE) as pool:
                return list(pool.map(send, range(AT_ONCE)))

        approvals = at_once("approve", checker)
        payments = at_once("pay", maker, {"reference": "ICBC-2026-000777"})

    for step, answers in (("approve", approvals), ("pay", payments)):
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] + [409] * (AT_ONCE - 1), (step, [a.text for a in answers])
    assert next(a for a in payments if a.status_code == 200).json()["state"] == "paid"

    kinds = [kind for (kind,) in conn.execute("SELECT kind FROM ledger_entries ORDER BY seq")]
    assert kinds == ["reward.propose", "reward.approve", "reward.pay"]
    enterprise = conn.execute("SELECT id FROM enterprises WHERE name = 'Alpha'").fetchone()[0]
    amount = Decimal(award["amount"])
    assert amount > 0
    assert ledger.balance(conn, f"paid:enterprise:{enterprise}") == amount
    assert ledger.balance(conn, f"payable:enterprise:{enterprise}") == 0
    assert ledger.balance(conn, f"budget:reward:5b:{first.year}") == -amount
