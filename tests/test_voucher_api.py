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


def test_the_voucher_command_line(settings, db, conn, tmp_path) -> None:
    """``jinsuan voucher``: apply with documents (only names and hashes leave the machine),
    review with one bureau key, refused approval with the same key, show and statement."""
    import hashlib

    from servers import serving
    from typer.testing import CliRunner

    from jinsuan.cli import app as cli

    world = World(conn, db)
    lab = create_key(conn, Role.DISPATCHER, tenant="lab-a")
    maker = create_key(conn, Role.BUREAU)
    contract = tmp_path / "算力服务合同.pdf"
    contract.write_bytes(b"%PDF-1.7 the contract")
    app, _ = make_app(settings, db)
    runner = CliRunner()
    with serving(app) as url:
        applied = runner.invoke(cli, [
            "voucher", "apply", "--url", url, "--key", lab, "--provider", "Taihang Compute",
            "--contract", "HT-9", "--amount", "300000.00", "--starts", "2026-01-01",
            "--ends", "2026-12-31", "--evidence", str(contract)])
        assert applied.exit_code == 0, applied.output
        number = int(applied.output.split()[-1])
        stored = conn.execute("SELECT evidence FROM voucher_applications WHERE id = %s",
                              (number,)).fetchone()[0]
        assert stored == [{"name": contract.name,
                           "sha256": hashlib.sha256(contract.read_bytes()).hexdigest()}]
        reviewed = runner.invoke(cli, ["voucher", "review", "--url", url, "--key", maker,
                                       str(number)])
        assert reviewed.exit_code == 0 and "another bureau key" in reviewed.output
        same = runner.invoke(cli, ["voucher", "approve", "--url", url, "--key", maker,
                                   str(number)])
        assert same.exit_code == 2
        voucher = issuing.approve(conn, world.checker, number, on=date(2026, 3, 1)).voucher_id
        world.run("lab-a", "ty-1", voucher, hours=1)
        drawing.draw_pending(conn)
        shown = runner.invoke(cli, ["voucher", "show", "--url", url, "--key", lab,
                                    str(voucher)])
        assert shown.exit_code == 0, shown.output
        # 300,000.00 × 20% = 60,000.00; 4 H100 × 1 h × 8.00 = 32.00, 20% of it = 6.40
        assert "60000.00 issued, 6.40 drawn, 59993.60 left" in shown.output
        listed = runner.invoke(cli, ["voucher", "list", "--url", url, "--key", lab])
        assert listed.exit_code == 0 and "Taihang" in listed.output and "清源" in listed.output


def test_an_applicant_key_applies_and_reads_its_own_and_runs_nothing(settings, db, conn) -> None:
    """An applicant's own staff (the `applicant` role): it applies for its applicant and reads
    that applicant's applications, vouchers, draws and statements; another applicant's are
    answered as missing; it submits no job."""
    world = World(conn, db)
    mine = create_key(conn, Role.APPLICANT, applicant_id=world.a.id)
    theirs = create_key(conn, Role.APPLICANT, applicant_id=world.b.id)
    app, _ = make_app(settings, db)
    with TestClient(app) as client:
        applied = client.post("/v1/vouchers/applications", headers=bearer(mine), json={
            "provider": "Taihang Compute", "contract_id": "QY-9", "amount": "100000.00",
            "starts_on": "2026-01-01", "ends_on": "2026-12-31", "evidence": PAPERS})
        assert applied.status_code == 201, applied.text
        number = applied.json()["id"]
        stored = conn.execute("SELECT applicant_id FROM voucher_applications WHERE id = %s",
                              (number,)).fetchone()[0]
        assert stored == world.a.id
        assert [a["id"] for a in client.get("/v1/vouchers/applications",
                                            headers=bearer(mine)).json()] == [number]
        assert client.get("/v1/vouchers/applications", headers=bearer(theirs)).json() == []
        issuing.recommend(conn, world.maker, number)
        voucher = issuing.approve(conn, world.checker, number, on=date(2026, 3, 1)).voucher_id
        job = world.run("lab-a", "ty-1", voucher, hours=1)  # its tenant's job
        drawing.draw_pending(conn)
        assert client.get(f"/v1/vouchers/{voucher}", headers=bearer(mine)).status_code == 200
        assert client.get(f"/v1/vouchers/{voucher}", headers=bearer(theirs)).status_code == 404
        assert client.get(f"/v1/vouchers/draws/by-job/{job}", headers=bearer(mine)
                          ).json()[0]["amount"] == "6.40"
        assert client.get(f"/v1/vouchers/draws/by-job/{job}", headers=bearer(theirs)
                          ).status_code == 404
        assert client.get("/v1/vouchers/statements/applicant.csv", headers=bearer(mine),
                          params={"applicant": world.a.id}).status_code == 200
        assert client.get("/v1/vouchers/statements/applicant.csv", headers=bearer(theirs),
                          params={"applicant": world.a.id}).status_code == 404
        assert client.post("/v1/jobs", headers=bearer(mine), json={
            "project": "p", "payload": {"command": ["true"]}}).status_code == 403
