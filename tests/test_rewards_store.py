"""Rewards end to end: agents report through the real intake, the rollups run, the bureau
assesses, explains, proposes, approves (another key) and pays over the API; each step is a
ledger entry, and re-running an unchanged assessment writes nothing.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from collectors_kit import bearer, enrol, make_app, make_org, steady_series
from fastapi.testclient import TestClient

from collectors.rollup import run_rollups
from jinsuan.contract.wire import AcceleratorInfo, Inventory, MeterInfo, MeterRole
from jinsuan.kernel import ledger
from jinsuan.kernel.auth import Role, create_key
from rewards.policy import POLICIES
from rewards.store import assess

STEP_MS = 10_000


def _window() -> tuple[datetime, int, int]:
    """Two whole hours that ended at least two hours ago, and the sample span around them: a
    minute before and after, as an agent's reports overlap the hours on either side (which
    then have one minute of data each, and are closed too)."""
    first = (datetime.now(UTC) - timedelta(hours=4)).replace(minute=0, second=0, microsecond=0)
    start_ms = int(first.timestamp() * 1000) - 60_000
    points = (2 * 3600 + 120) * 1000 // STEP_MS + 1
    return first, start_ms, points


def _estimated_inventory() -> Inventory:
    """One H100 (a datasheet figure) and one unlisted Hopper part (an estimated figure)."""
    return Inventory(
        racks=["r01", "r02"],
        accelerators=[
            AcceleratorInfo(uuid="GPU-0000", model="NVIDIA H100 SXM5 80GB", vendor="NVIDIA",
                            rack="r01"),
            AcceleratorInfo(uuid="GPU-0001", model="NVIDIA H-Prototype", vendor="NVIDIA",
                            rack="r02", sm_count=100, sm_clock_max_mhz=1000,
                            compute_capability=(9, 0)),
        ],
        meters=[MeterInfo(id="fac", role=MeterRole.FACILITY, measures="utility_input"),
                MeterInfo(id="it", role=MeterRole.IT, measures="ups_output")],
    )


@pytest.fixture
def fleet(settings, db, conn):
    """Alpha: a site in 太原 (two H100) and one in 大同 (an H100 and an estimated part), both
    reporting two whole hours; Beta: a registered site that never reported."""
    app, _ = make_app(settings, db)
    with TestClient(app) as client:
        taiyuan = make_org(conn, "Alpha", "alpha-ty", "太原")
        datong = make_org(conn, "Alpha", "alpha-dt", "大同")
        make_org(conn, "Beta", "beta-lv", "吕梁")
        first, start_ms, points = _window()
        agents = []
        for org, inventory in ((taiyuan, None), (datong, _estimated_inventory())):
            agent = enrol(client, org)
            agents.append(agent)
            if inventory is not None:
                agent.inventory = inventory
            reply = agent.post(client, agent.batch(steady_series(start_ms, points,
                                                                 step_ms=STEP_MS)),
                               compress=True)
            assert reply.status_code == 200, reply.text
        run_rollups(db, settings, holder="test")
        bureau = [create_key(conn, Role.BUREAU, label=f"finance {n}") for n in (1, 2)]
        client.agents = agents  # type: ignore[attr-defined]  # for the late-data test
        yield client, conn, bureau, taiyuan, first


def _peaks(conn: psycopg.Connection) -> dict[str, tuple[Decimal, bool]]:
    return {uuid + "@" + str(site): (Decimal(repr(tflops)), estimated) for uuid, site, tflops,
            estimated in conn.execute(
                "SELECT uuid, site_id, fp16_tflops, fp16_estimated FROM accelerators")}


def test_5b_from_signed_reports_equals_the_hand_worked_figure(fleet) -> None:
    client, conn, (maker, checker), taiyuan, first = fleet
    peaks = _peaks(conn)
    measured = [t for t, estimated in peaks.values() if not estimated]
    assert len(measured) == 3 and set(measured) == {Decimal("989.4")}
    assert len(peaks) == 4  # the estimated part is listed, with an estimated peak

    # By hand: three H100 at 989.4 TFLOPS, up for two whole hours and one minute on either
    # side: 3 × 0.9894 × (2 + 2/60) = 2.9682 × 61/30 = 6.03534 PFlops-hours; 2026 has 8,760
    # hours; 6.03534 / 8760 × 20,000 yuan = 13.779315... -> 13.78.
    # The estimated part's PFlops-hours are shown apart and earn nothing.
    done = client.post("/v1/rewards/assessments", json={"year": first.year, "measure": "5b"},
                       headers=bearer(maker))
    assert done.status_code == 200, done.text
    [assessment] = done.json()
    assert assessment["created"] is True
    awards = client.get("/v1/rewards/awards", params={"year": first.year},
                        headers=bearer(maker)).json()
    alpha = next(a for a in awards if a["enterprise"] == "Alpha")
    beta = next(a for a in awards if a["enterprise"] == "Beta")
    assert Decimal(alpha["amount"]) == Decimal("13.78")
    assert alpha["assumptions"] == ["5b.rate", "5b.cap"]
    assert Decimal(beta["amount"]) == 0  # registered, never reported: nothing

    explained = client.get("/v1/rewards/explain", headers=bearer(maker), params={
        "year": first.year, "enterprise": "Alpha", "measure": "5b", "hours": True}).json()
    figures = {f["name"]: f for f in explained["awards"][0]["figures"]}
    assert abs(Decimal(figures["PFlops-hours measured"]["value"]) - Decimal("6.03534")) < 1e-9
    estimated_tflops = next(t for t, est in peaks.values() if est)
    assert abs(Decimal(figures["PFlops-hours on estimated peaks"]["value"])
               - estimated_tflops * 61 / 30 / 1000) < 1e-9
    assert figures["rate"]["source"] == "assumption"
    assert {s["city"] for s in explained["sites"]} == {"太原", "大同"}
    # each rollup row is listed: 2 sites × 4 hours with data, and the closed hours after them
    assert sum(1 for h in explained["hours"] if Decimal(h["fp16_pflops"]) > 0) == 8
    assert explained["assessment"]["inputs_sha256"] == assessment["inputs_sha256"]

    # The same inputs, policy and code again: the same assessment, nothing written.
    before = conn.execute("SELECT count(*) FROM reward_assessments").fetchone()[0]
    again = client.post("/v1/rewards/assessments", json={"year": first.year, "measure": "5b"},
                        headers=bearer(checker)).json()
    assert again[0]["created"] is False and again[0]["id"] == assessment["id"]
    assert conn.execute("SELECT count(*) FROM reward_assessments").fetchone()[0] == before

    # An operator sees its own awards and explanations only.
    assert [a["enterprise"] for a in client.get(
        "/v1/rewards/awards", params={"year": first.year},
        headers=bearer(taiyuan.operator_key)).json()] == ["Alpha"]
    stranger = make_org(conn, "Gamma", "gamma-1", "晋城")
    hidden = client.get("/v1/rewards/explain", headers=bearer(stranger.operator_key), params={
        "year": first.year, "enterprise": "Alpha", "measure": "5b"})
    assert hidden.status_code == 404


def assessed_award(client: TestClient, maker: str, year: int) -> tuple[dict, str]:
    """Measure 5b assessed for ``year``: Alpha's award, and its path in the API."""
    client.post("/v1/rewards/assessments", json={"year": year, "measure": "5b"},
                headers=bearer(maker))
    award = next(a for a in client.get("/v1/rewards/awards", params={"year": year},
                                       headers=bearer(maker)).json()
                 if a["enterprise"] == "Alpha")
    return award, f"/v1/rewards/awards/{award['id']}"


def test_maker_checker_payment_and_the_ledger(fleet, tmp_path: Path) -> None:
    client, conn, (maker, checker), taiyuan, first = fleet
    award, path = assessed_award(client, maker, first.year)
    assert client.post(f"{path}/approve", headers=bearer(maker)).status_code == 409
    assert client.post(f"{path}/propose", headers=bearer(taiyuan.operator_key)
                       ).status_code == 403
    assert client.post(f"{path}/propose", headers=bearer(maker)).json()["state"] == "proposed"
    same = client.post(f"{path}/approve", headers=bearer(maker))
    assert same.status_code == 403 and "maker-checker" in same.json()["error"]["reason"]
    assert client.post(f"{path}/approve", headers=bearer(checker)).json()["state"] == "approved"
    assert client.post(f"{path}/approve", headers=bearer(checker)).status_code == 409
    no_ref = client.post(f"{path}/pay", json={"reference": ""}, headers=bearer(maker))
    assert no_ref.status_code == 422
    paid = client.post(f"{path}/pay", json={"reference": "ICBC-2026-000123"},
                       headers=bearer(maker))
    assert paid.json()["state"] == "paid"

    enterprise = conn.execute("SELECT id FROM enterprises WHERE name = 'Alpha'").fetchone()[0]
    amount = Decimal(award["amount"])
    assert ledger.balance(conn, f"paid:enterprise:{enterprise}") == amount
    assert ledger.balance(conn, f"payable:enterprise:{enterprise}") == 0
    assert ledger.balance(conn, f"budget:reward:5b:{first.year}") == -amount
    kinds = [r[0] for r in conn.execute("SELECT kind FROM ledger_entries ORDER BY seq")]
    assert kinds == ["reward.propose", "reward.approve", "reward.pay"]
    pay_ref = conn.execute("SELECT ref FROM ledger_entries WHERE kind = 'reward.pay'"
                           ).fetchone()[0]
    assert pay_ref["payment_reference"] == "ICBC-2026-000123"

    # A paid award is never edited; a correction is an adjustment with its reason.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("UPDATE reward_awards SET amount = 1 WHERE id = %s", (award["id"],))
    fixed = client.post(f"{path}/adjust", json={"delta": "-1.00", "reason": "meter recalibrated"},
                        headers=bearer(checker))
    assert fixed.status_code == 201
    assert ledger.balance(conn, f"payable:enterprise:{enterprise}") == Decimal("-1.00")
    assert ledger.verify(conn, ledger.signing_key(tmp_path / "k.pem").public_key()) == []


def test_late_data_makes_a_new_assessment_listing_its_differences(fleet, db, settings) -> None:
    client, conn, _, _, first = fleet
    [before] = assess(conn, first.year, ["5b"], by_key=None)
    # 太原's agent sends an hour it had kept in its spool: two H100 up for the whole hour two
    # hours before the others (and a minute either side): 2 × 0.9894 × (1 + 2/60) = 2.04476
    # PFlops-hours more; 6.03534 + 2.04476 = 8.0801 -> 8.0801 / 8760 × 20,000 = 18.447717...
    late_ms = int((first - timedelta(hours=3)).timestamp() * 1000) - 60_000
    agent = client.agents[0]
    reply = agent.post(client, agent.batch(steady_series(late_ms, (3600 + 120) * 1000 // STEP_MS
                                                         + 1, step_ms=STEP_MS)), compress=True)
    assert reply.status_code == 200, reply.text
    run_rollups(db, settings, holder="test")
    [after] = assess(conn, first.year, ["5b"], by_key=None)
    assert after.created and after.id > before.id
    [alpha] = [d for d in after.differences if d["enterprise"] == "Alpha"]
    assert (alpha["before"], alpha["after"]) == (Decimal("13.78"), Decimal("18.45"))
    assert alpha["previous_assessment"] == before.id


def test_a_changed_policy_and_the_register_make_new_assessments(fleet, tmp_path: Path) -> None:
    client, conn, (maker, _), _, first = fleet
    [old] = assess(conn, first.year, ["5b"], by_key=None)
    old_awards = conn.execute("SELECT id, amount FROM reward_awards WHERE assessment_id = %s"
                              " ORDER BY id", (old.id,)).fetchall()

    # The bureau changes its rate in a new file: the old assessment keeps its figures and
    # policy text; assessing under the new file is a new assessment listing the differences.
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    path = policies / "jinzhengbanfa-2024-35-v1.toml"
    path.write_text(path.read_text(encoding="utf-8").replace('amount = "20000.00"',
                                                             'amount = "40000.00"'),
                    encoding="utf-8")
    [new] = assess(conn, first.year, ["5b"], by_key=None, policies=policies)
    assert new.created and new.id != old.id
    alpha = next(d for d in new.differences if d["enterprise"] == "Alpha")
    # 6.03534 / 8760 × 40,000 = 27.558630... -> 27.56
    assert (alpha["before"], alpha["after"]) == (Decimal("13.78"), Decimal("27.56"))
    assert conn.execute("SELECT id, amount FROM reward_awards WHERE assessment_id = %s"
                        " ORDER BY id", (old.id,)).fetchall() == old_awards
    kept = conn.execute("SELECT policy_text FROM reward_assessments WHERE id = %s",
                        (old.id,)).fetchone()[0]
    assert 'amount = "20000.00"' in kept

    # The other-support register: recorded by the bureau, it refuses the award and says why.
    made = client.post("/v1/rewards/other-support", headers=bearer(maker), json={
        "enterprise": "Alpha", "measure": "5b", "fund": "省级数字经济专项",
        "amount": "80000.00", "granted_on": "2026-03-01"})
    assert made.status_code == 201, made.text
    [refused] = assess(conn, first.year, ["5b"], by_key=None)
    reason = conn.execute(
        "SELECT detail->'reasons'->>0 FROM reward_awards a JOIN enterprises e"
        " ON e.id = a.enterprise_id WHERE assessment_id = %s AND e.name = 'Alpha'",
        (refused.id,)).fetchone()[0]
    assert f"other-support register entry {made.json()['id']}" in reason


def test_declarations_are_checked_owned_and_reviewed(fleet) -> None:
    client, conn, (maker, checker), taiyuan, _ = fleet
    good = {"kind": "commissioning", "data_centre": "alpha-ty",
            "value": {"date": "2025-09-01", "retrofit": True},
            "evidence": [{"name": "竣工验收报告.pdf", "sha256": "ab" * 32}]}
    cases = [
        ({**good, "kind": "horoscope"}, "kind"),
        ({**good, "value": {"date": "2025-13-01"}}, "value.date"),
        ({**good, "value": {"date": "2025-09-01", "colour": "red"}}, "value.colour"),
        ({**good, "evidence": [{"name": "x.pdf", "sha256": "nothex"}]}, "evidence.0.sha256"),
        ({**good, "evidence": []}, "evidence"),
        ({**good, "data_centre": None}, "data_centre"),
        ({**good, "data_centre": "someone-elses"}, "data_centre"),
    ]
    for body, field in cases:
        reply = client.post("/v1/rewards/declarations", json=body,
                            headers=bearer(taiyuan.operator_key))
        assert reply.status_code in (404, 422), (field, reply.text)
        assert reply.json()["error"]["field"] == field, reply.text
    made = client.post("/v1/rewards/declarations", json=good,
                       headers=bearer(taiyuan.operator_key))
    assert made.status_code == 201, made.text
    number = made.json()["id"]
    assert client.post(f"/v1/rewards/declarations/{number}/review",
                       json={"accept": True, "reason": "ok"},
                       headers=bearer(taiyuan.operator_key)).status_code == 403
    stranger = make_org(conn, "Gamma", "gamma-1", "晋城")
    assert client.get("/v1/rewards/declarations", headers=bearer(stranger.operator_key)
                      ).json() == []
    reviewed = client.post(f"/v1/rewards/declarations/{number}/review",
                           json={"accept": True, "reason": "验收报告核对无误"},
                           headers=bearer(checker))
    assert reviewed.status_code == 200
    again = client.post(f"/v1/rewards/declarations/{number}/review",
                        json={"accept": False, "reason": "x"}, headers=bearer(maker))
    assert again.status_code == 409
    [listed] = client.get("/v1/rewards/declarations", headers=bearer(taiyuan.operator_key)
                          ).json()
    assert listed["status"] == "accepted" and listed["reason"] == "验收报告核对无误"
