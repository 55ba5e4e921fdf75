"""The audit log: every state-changing call, refused ones included, with who, what, from where
and how it ended; reads and the agents' signed traffic are not in it; nobody edits it."""

from __future__ import annotations

import json

import psycopg
import pytest
from collectors_kit import bearer, enrol, make_app, make_org, steady_series
from fastapi.testclient import TestClient

from jinsuan.kernel.auth import Role, create_key


def rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT request_id, key_prefix, role, method, path, status"
                        " FROM audit_log ORDER BY id").fetchall()


def test_state_changing_calls_are_recorded_with_who_and_how_they_ended(settings, db, conn):
    app, _ = make_app(settings, db)
    dispatcher = create_key(conn, Role.DISPATCHER, tenant="lab")
    bureau = create_key(conn, Role.BUREAU)
    admin = create_key(conn, Role.ADMIN)
    org = make_org(conn, "Alpha", "alpha-1", "太原")
    prefix = dispatcher.split("_")[1]
    with TestClient(app) as client:
        submitted = client.post("/v1/jobs", headers=bearer(dispatcher), json={
            "project": "p", "payload": {"command": ["true"]}})
        assert submitted.status_code == 201, submitted.text
        forged = "jsk_0123456789ab_" + "x" * 43
        refused = client.post("/v1/jobs", headers=bearer(forged), json={"project": "p"})
        assert refused.status_code == 401
        wrong_role = client.post("/v1/jobs", headers=bearer(bureau), json={"project": "p"})
        assert wrong_role.status_code == 403
        assert client.get("/v1/jobs", headers=bearer(dispatcher)).status_code == 200
        agent = enrol(client, org)
        assert agent.post(client, agent.batch(steady_series(0, 3))).status_code in (200, 422)

        app.state.audit.flush()
        found = rows(conn)
        jobs = [r for r in found if r[4] == "/v1/jobs"]
        assert [(r[1], r[2], r[3], r[5]) for r in jobs] == [
            (prefix, "dispatcher", "POST", 201),
            ("0123456789ab", None, "POST", 401),  # the prefix presented, never the secret
            (bureau.split("_")[1], "bureau", "POST", 403)]
        assert jobs[0][0] == submitted.headers["x-request-id"]
        assert not any(r[4] == "/v1/reports" or r[3] == "GET" for r in found)
        # enrolment (a token spent) is state-changing and is recorded
        assert any(r[4] == "/v1/agents/enrol" and r[5] == 200 for r in found)
        assert not any("x" * 20 in str(r) for r in found)

        assert client.get("/v1/audit", headers=bearer(dispatcher)).status_code == 403
        app.state.audit.flush()
        listed = client.get("/v1/audit", headers=bearer(admin),
                            params={"key_prefix": prefix}).json()
        assert [(e["method"], e["path"], e["status"]) for e in listed] == [
            ("POST", "/v1/jobs", 201)]
        export = client.get("/v1/audit/export", headers=bearer(bureau))
        lines = [json.loads(line) for line in export.text.splitlines()]
        assert [e["id"] for e in lines] == sorted(e["id"] for e in lines)
        assert lines[0]["path"] == "/v1/jobs"

    for sql in ("UPDATE audit_log SET status = 200", "DELETE FROM audit_log",
                "TRUNCATE audit_log"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"), \
                conn.transaction():
            conn.execute(sql)
