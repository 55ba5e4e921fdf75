"""A caller without a valid key learns nothing about a body: the key is checked first, even
when the body does not parse; and the framework's own refusals use the platform's error body."""

from __future__ import annotations

from collectors_kit import bearer, make_app
from fastapi.testclient import TestClient

from jinsuan.kernel.auth import Role, create_key

BROKEN = b'{"project": "p", '


def test_the_key_is_checked_before_a_broken_body(settings, db, conn) -> None:
    app, _ = make_app(settings, db)
    dispatcher = create_key(conn, Role.DISPATCHER, tenant="lab")
    bureau = create_key(conn, Role.BUREAU)
    json_type = {"Content-Type": "application/json"}
    with TestClient(app) as client:
        for path in ("/v1/jobs", "/v1/rewards/assessments", "/v1/vouchers/applications"):
            nobody = client.post(path, content=BROKEN, headers=json_type)
            assert nobody.status_code == 401, (path, nobody.text)
            forged = client.post(path, content=BROKEN, headers={
                **json_type, **bearer("jsk_0123456789ab_" + "x" * 43)})
            assert forged.status_code == 401
        wrong_role = client.post("/v1/rewards/assessments", content=BROKEN,
                                 headers={**json_type, **bearer(dispatcher)})
        assert wrong_role.status_code == 403
        own = client.post("/v1/rewards/assessments", content=BROKEN,
                          headers={**json_type, **bearer(bureau)})
        assert own.status_code == 422
        error = own.json()["error"]
        assert error["field"] == "body" and error["reason"].startswith(
            "the body is not valid JSON")
        # a body that parses but is wrong is still answered field by field
        wrong = client.post("/v1/rewards/assessments", json={"year": "soon"},
                            headers=bearer(bureau))
        assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "year"


def test_framework_refusals_use_the_platform_error_body(settings, db) -> None:
    app, _ = make_app(settings, db)
    with TestClient(app) as client:
        missing = client.get("/v1/no-such-thing")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        method = client.request("DELETE", "/v1/jobs")
        assert method.status_code == 405
        assert method.json()["error"]["code"] == "method_not_allowed"
        assert "allow" in {k.lower() for k in method.headers}
