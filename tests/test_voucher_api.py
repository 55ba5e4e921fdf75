"""``/v1/vouchers`` and ``/v1/ledger`` over HTTP: who may do what, and nobody sees another
party's applications, vouchers or draws."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from collectors_kit import bearer, make_app
from fastapi.testclient import TestClient
from test_vouchers import PAPERS, World, code

from jinsuan.kernel.auth import Role, create_key
from rewards.vouchers import drawing, issuing


def test_voucher_api_roles_and_scopes(settings, db, conn) -> None:
    world = World(conn, db)
    app, _ = make_app(settings, db)
    admin = create_key(conn, Role.ADMIN)
    maker = create_key(conn, Role.BUREAU)
    lab = create_key(conn, Role.DISPATCHER, tenant="lab-c")
    other_lab = create_key(conn, Role.DISPATCHER, tenant="lab-a")
    taihang = create_key(conn, Role.OPERATOR, enterprise_id=world.taihang)
    with TestClient(app) as client:
        wrong = code(7)[:-1] + ("0" if code(7)[-1] != "0" else "1")
        bad = client.post("/v1/vouchers/applicants", headers=bearer(admin), json={
            "credit_code": wrong, "name": "晋阳实验室", "kind": "research_institute",
            "in_province": True})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "credit_code"
        assert "the check character is" in bad.json()["error"]["reason"]
        made = client.post("/v1/vouchers/applicants", headers=bearer(admin), json={
            "credit_code": code(7).lower(), "name": "晋阳实验室", "kind": "research_institute",
            "in_province": True})
        assert made.status_code == 201 and made.json()["credit_code"] == code(7)
        assert client.post("/v1/vouchers/applicants", headers=bearer(maker), json={
            "credit_code": code(8), "name": "x", "kind": "company", "in_province": True}
            ).status_code == 403
        applicant = made.json()["id"]
        assert client.post(f"/v1/vouchers/applicants/{applicant}/tenants",
                           headers=bearer(admin), json={"tenant": "lab-c"}).status_code == 201

        body = {"provider": "Taihang Compute", "contract_id": "JY-1", "amount": "500000.00",
                "starts_on": "2026-01-01", "ends_on": "2026-12-31", "evidence": PAPERS}
        applied = client.post("/v1/vouchers/applications", headers=bearer(lab), json=body)
        assert applied.status_code == 201, applied.text
        number = applied.json()["id"]
        again = client.post("/v1/vouchers/applications", headers=bearer(lab), json=body)
        assert again.status_code == 409 and "one application per contract" in again.text
        assert client.post(f"/v1/vouchers/applications/{number}/recommend",
                           headers=bearer(lab)).status_code == 403
        assert [a["id"] for a in client.get("/v1/vouchers/applications",
                                            headers=bearer(lab)).json()] == [number]
        assert client.get("/v1/vouchers/applications", headers=bearer(other_lab)).json() == []
        assert [a["id"] for a in client.get("/v1/vouchers/applications",
                                            headers=bearer(taihang)).json()] == [number]
        assert client.post(f"/v1/vouchers/applications/{number}/recommend",
                           headers=bearer(maker)).status_code == 200

        # issued on a fixed day (the API issues on today's date, which a test cannot fix)
        voucher = issuing.approve(conn, world.checker, number, on=date(2026, 3, 1)).voucher_id
        job = world.run("lab-c", "ty-1", voucher, hours=1)
        drawing.draw_pending(conn)
        mine = client.get(f"/v1/vouchers/{voucher}", headers=bearer(lab)).json()
        # 4 H100 × 1 h × 8.00 = 32.00; 20% = 6.40; 500,000 × 20% = 100,000 - 6.40
        assert Decimal(mine["balance"]) == Decimal("99993.60")
        assert [Decimal(d["amount"]) for d in mine["draws"]] == [Decimal("6.40")]
        assert client.get(f"/v1/vouchers/{voucher}", headers=bearer(other_lab)
                          ).status_code == 404
        assert client.get(f"/v1/vouchers/draws/by-job/{job}", headers=bearer(other_lab)
                          ).status_code == 404
        assert client.get(f"/v1/vouchers/draws/by-job/{job}", headers=bearer(lab)
                          ).json()[0]["reason"] == "32.00 × 0.20 = 6.40"
        statement = client.get("/v1/vouchers/statements/provider", headers=bearer(taihang),
                               params={"enterprise": "Taihang Compute", "day": date.today()})
        assert statement.status_code == 200
        assert client.get("/v1/vouchers/statements/provider", headers=bearer(taihang),
                          params={"enterprise": "Fenhe Cloud", "day": "2026-03-01"}
                          ).status_code == 404

        assert client.get("/v1/ledger/verify", headers=bearer(lab)).status_code == 403
        assert client.post("/v1/ledger/checkpoint", headers=bearer(maker)).status_code == 200
        verified = client.get("/v1/ledger/verify", headers=bearer(maker)).json()
        assert verified == {"ok": True, "problems": []}
        balances = client.get("/v1/ledger/balances", headers=bearer(maker),
                              params={"prefix": f"voucher:{voucher}"}).json()
        assert Decimal(balances[f"voucher:{voucher}"]) == Decimal("99993.60")
        exported = client.get("/v1/ledger/export", headers=bearer(admin))
        assert exported.headers["content-type"].startswith("application/jsonl")
        assert exported.text.count('"type": "entry"') == 3  # fund, issue, draw
