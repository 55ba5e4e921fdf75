"""Managing keys, agents, enterprises and sites through the API (collectors/management.py).

Keys: an admin creates, lists, rotates and revokes them; a revoked, rotated-away or expired key
is refused, and in the process that revoked it at once, though it had just been verified and
cached. Agents: an operator lists and revokes its own enterprise's; another's is answered as
missing; a revoked agent's next report and lease request are refused. Enterprises: an admin
creates them, a wrong credit code is refused naming it; an operator lists its own. Sites: an admin
creates them for any enterprise, an operator for its own only; an admin or the site's operator
changes the city and data centre, never the enterprise; another enterprise's site is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from collectors_kit import bearer, counts, enrol, make_app, make_org, now_ms, steady_series
from fastapi.testclient import TestClient

from jinsuan.contract.leasewire import LEASES_PATH, LeaseRequest
from jinsuan.kernel.auth import Role, authenticate, create_key


@pytest.fixture
def client(settings, db) -> Iterator[TestClient]:
    app, _ = make_app(settings, db)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def admin(conn) -> dict[str, str]:
    return bearer(create_key(conn, Role.ADMIN, label="root"))


def _soon() -> str:
    return (datetime.now(UTC) + timedelta(days=30)).isoformat()


def test_an_admin_creates_lists_rotates_and_revokes_keys(client, conn, admin):
    make_org(conn, "Taihang Compute", "ty-1", "太原")
    expires = _soon()
    made = client.post("/v1/keys", headers=admin, json={
        "role": "operator", "enterprise": "Taihang Compute", "label": "ops desk",
        "expires_at": expires})
    assert made.status_code == 201, made.text
    key, prefix = made.json()["key"], made.json()["prefix"]
    assert key.startswith(f"jsk_{prefix}_")
    assert client.get("/v1/sites", headers=bearer(key)).status_code == 200  # now cached

    listed = client.get("/v1/keys", headers=admin)
    assert listed.status_code == 200
    [row] = [r for r in listed.json() if r["prefix"] == prefix]
    assert row == {"prefix": prefix, "role": "operator", "enterprise": "Taihang Compute",
                   "tenant": None, "applicant_id": None, "label": "ops desk",
                   "created_at": row["created_at"], "expires_at": row["expires_at"],
                   "revoked_at": None}
    assert datetime.fromisoformat(row["expires_at"]) == datetime.fromisoformat(expires)
    secret = key.split("_", 2)[2]
    stored = conn.execute("SELECT secret_sha256 FROM api_keys WHERE prefix = %s",
                          (prefix,)).fetchone()[0]
    assert secret not in listed.text and bytes(stored).hex() not in listed.text
    # root, make_org's unlabelled operator key and this one, newest first
    assert [r["label"] for r in listed.json()] == ["ops desk", "", "root"]

    rotated = client.post(f"/v1/keys/{prefix}/rotate", headers=admin)
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["replaces"] == prefix and new["prefix"] != prefix
    assert (new["role"], new["enterprise"], new["label"], new["revoked_at"]) == (
        "operator", "Taihang Compute", "ops desk", None)
    assert new["expires_at"] == row["expires_at"]
    # the old key was verified and cached a moment ago; the process that rotated it forgot it
    refused = client.get("/v1/sites", headers=bearer(key))
    assert refused.status_code == 401, refused.text
    assert client.get("/v1/sites", headers=bearer(new["key"])).status_code == 200
    again = client.post(f"/v1/keys/{prefix}/rotate", headers=admin)
    assert again.status_code == 409 and again.json()["error"]["field"] == "prefix"

    revoked = client.post(f"/v1/keys/{new['prefix']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert "key" not in revoked.json()
    assert client.get("/v1/sites", headers=bearer(new["key"])).status_code == 401
    assert authenticate(conn, new["key"]) is None  # and in every other process, once its
    # cache entry (KEY_CACHE_TTL_S, 5 s) has lapsed: the store refuses it
    twice = client.post(f"/v1/keys/{new['prefix']}/revoke", headers=admin)
    assert twice.status_code == 409 and "already revoked" in twice.json()["error"]["reason"]
    unknown = client.post("/v1/keys/000000000000/revoke", headers=admin)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["reason"] == "no key with prefix '000000000000'"


def test_a_dispatcher_key_names_its_tenant_and_mistakes_name_their_field(client, admin):
    made = client.post("/v1/keys", headers=admin, json={"role": "dispatcher", "tenant": "lab-a"})
    assert made.status_code == 201 and made.json()["tenant"] == "lab-a"
    assert made.json()["expires_at"] is None  # never expires unless told to

    for body, field in (({"role": "dispatcher"}, "tenant"),
                        ({"role": "bureau", "tenant": "lab-a"}, "tenant"),
                        ({"role": "operator", "enterprise": "Nobody Ltd."}, "enterprise"),
                        ({"role": "admin", "expires_at": "2020-01-01T00:00:00+08:00"},
                         "expires_at")):
        refused = client.post("/v1/keys", headers=admin, json=body)
        assert refused.status_code in (404, 422), refused.text
        assert refused.json()["error"]["field"] == field, body
    naive = client.post("/v1/keys", headers=admin,
                        json={"role": "admin", "expires_at": "2099-01-01T00:00:00"})
    assert naive.status_code == 422  # a moment without its time zone is ambiguous


def test_an_expired_key_is_refused_like_a_revoked_one(client, conn, admin):
    made = client.post("/v1/keys", headers=admin, json={"role": "bureau", "expires_at": _soon()})
    key, prefix = made.json()["key"], made.json()["prefix"]
    assert authenticate(conn, key) is not None
    # the clock passes its expiry (moved here rather than waited for)
    conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second'"
                 " WHERE prefix = %s", (prefix,))

    assert authenticate(conn, key) is None
    refused = client.get("/v1/sites", headers=bearer(key))
    assert refused.status_code == 401
    assert refused.json()["error"]["reason"] == "unknown or revoked API key"
    # an expired key cannot be rotated back to life; it can still be revoked
    assert client.post(f"/v1/keys/{prefix}/rotate", headers=admin).status_code == 409
    assert client.post(f"/v1/keys/{prefix}/revoke", headers=admin).status_code == 200


def test_only_an_admin_manages_keys(client, conn):
    org = make_org(conn, "Taihang Compute", "ty-1", "太原")
    victim = create_key(conn, Role.BUREAU).split("_")[1]
    others = {"operator": org.operator_key,
              "dispatcher": create_key(conn, Role.DISPATCHER, tenant="lab-a"),
              **{role.value: create_key(conn, role)
                 for role in (Role.BUREAU, Role.VIEWER, Role.METRICS)}}
    for role, key in others.items():
        for method, path, body in (("GET", "/v1/keys", None),
                                   ("POST", "/v1/keys", {"role": "admin"}),
                                   ("POST", f"/v1/keys/{victim}/revoke", None),
                                   ("POST", f"/v1/keys/{victim}/rotate", None)):
            answer = client.request(method, path, headers=bearer(key), json=body)
            assert answer.status_code == 403, (role, method, path, answer.text)
    assert conn.execute("SELECT count(*) FROM api_keys WHERE role = 'admin'").fetchone()[0] == 0
    assert conn.execute("SELECT revoked_at FROM api_keys WHERE prefix = %s",
                        (victim,)).fetchone()[0] is None


def test_agents_are_listed_per_enterprise_and_revoked_by_their_operator(client, conn, admin):
    taihang = make_org(conn, "Taihang Compute", "ty-1", "太原")
    fenhe = make_org(conn, "Fenhe Cloud", "fh-1", "太原")
    ours, theirs = enrol(client, taihang, "ty-gpu-01"), enrol(client, fenhe, "fh-gpu-01")
    assert ours.post(client, ours.batch(steady_series(now_ms() - 60_000, 3))
                     ).json()["status"] == "stored"

    def listed(key: str) -> dict[str, dict]:
        answer = client.get("/v1/agents", headers=bearer(key))
        assert answer.status_code == 200, answer.text
        return {agent["id"]: agent for agent in answer.json()}

    own = listed(taihang.operator_key)
    assert list(own) == [ours.id]  # Fenhe's agent is not Taihang's to see
    assert (own[ours.id]["site"], own[ours.id]["hostname"], own[ours.id]["last_seq"]) == (
        "ty-1", "ty-gpu-01", 1)
    assert own[ours.id]["last_report_at"] is not None and own[ours.id]["revoked_at"] is None
    assert listed(fenhe.operator_key).keys() == {theirs.id}
    assert listed(create_key(conn, Role.BUREAU)).keys() == {ours.id, theirs.id}
    assert listed(create_key(conn, Role.VIEWER)).keys() == {ours.id, theirs.id}
    assert client.get("/v1/agents", headers=bearer(
        create_key(conn, Role.DISPATCHER, tenant="lab-a"))).status_code == 403

    # Fenhe's operator is told Taihang's agent does not exist, as for an id nobody has
    stranger = client.post(f"/v1/agents/{ours.id}/revoke", headers=bearer(fenhe.operator_key))
    nobody = client.post("/v1/agents/agt_0000000000000000/revoke",
                         headers=bearer(fenhe.operator_key))
    assert stranger.status_code == nobody.status_code == 404
    assert stranger.json()["error"] == {
        **nobody.json()["error"], "reason": f"no agent {ours.id!r}"}
    assert client.post(f"/v1/agents/{ours.id}/revoke", headers=bearer(
        create_key(conn, Role.BUREAU))).status_code == 403

    revoked = client.post(f"/v1/agents/{ours.id}/revoke", headers=bearer(taihang.operator_key))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    before = counts(conn)
    refused = ours.post(client, ours.batch(steady_series(now_ms() - 30_000, 3)))
    assert refused.status_code == 401  # its very next report
    assert counts(conn) == before
    lease = LeaseRequest(agent_id=ours.id, sent_at=datetime.now(UTC), executor="process",
                         free_slots=1).model_dump_json().encode()
    assert client.post(LEASES_PATH, content=lease, headers=ours.signed(lease)).status_code == 401
    assert theirs.post(client, theirs.batch(steady_series(now_ms() - 30_000, 3))
                       ).json()["status"] == "stored"  # Fenhe's agent reports on
    again = client.post(f"/v1/agents/{ours.id}/revoke", headers=admin)
    assert again.status_code == 409
    assert listed(taihang.operator_key)[ours.id]["revoked_at"] is not None  # still listed


# Worked by hand in tests/test_creditcode.py: "91350100M000100Y43" is valid; the same with an X
# as check character is not (the weighted sum of the first 17 gives check value 3, character 3).
GOOD_CODE, BAD_CODE = "91350100M000100Y43", "91350100M000100Y4X"


def test_an_admin_creates_enterprises_and_a_wrong_credit_code_is_refused(client, conn, admin):
    made = client.post("/v1/enterprises", headers=admin,
                       json={"name": " Taihang Compute ", "credit_code": GOOD_CODE.lower()})
    assert made.status_code == 201, made.text
    assert made.json() == {"id": made.json()["id"], "name": "Taihang Compute",
                           "credit_code": GOOD_CODE, "sites": 0,
                           "created_at": made.json()["created_at"]}  # stripped, upper-cased
    plain = client.post("/v1/enterprises", headers=admin, json={"name": "Fenhe Cloud"})
    assert plain.status_code == 201 and plain.json()["credit_code"] is None

    bad = client.post("/v1/enterprises", headers=admin,
                      json={"name": "Yungang AI", "credit_code": BAD_CODE})
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["field"] == "credit_code"
    assert bad.json()["error"]["reason"] == (
        "not a unified social credit code: the check character is 'X', expected '3'")
    for body, field in (({"name": "Taihang Compute"}, "name"),
                        ({"name": "Yungang AI", "credit_code": GOOD_CODE}, "credit_code")):
        taken = client.post("/v1/enterprises", headers=admin, json=body)
        assert taken.status_code == 409 and taken.json()["error"]["field"] == field, taken.text
    blank = client.post("/v1/enterprises", headers=admin, json={"name": "   "})
    assert blank.status_code == 422 and blank.json()["error"]["field"] == "name"
    assert [name for (name,) in conn.execute("SELECT name FROM enterprises ORDER BY name")
            ] == ["Fenhe Cloud", "Taihang Compute"]  # nothing written by a refusal

    operator = bearer(create_key(conn, Role.OPERATOR, enterprise_id=made.json()["id"]))
    assert client.post("/v1/enterprises", headers=operator,
                       json={"name": "Mine Ltd."}).status_code == 403
    own = client.get("/v1/enterprises", headers=operator)
    assert own.status_code == 200 and [e["name"] for e in own.json()] == ["Taihang Compute"]
    for role in (Role.BUREAU, Role.VIEWER):
        every = client.get("/v1/enterprises", headers=bearer(create_key(conn, role)))
        assert [e["name"] for e in every.json()] == ["Fenhe Cloud", "Taihang Compute"]
    assert client.get("/v1/enterprises", headers=bearer(
        create_key(conn, Role.DISPATCHER, tenant="lab-a"))).status_code == 403


def test_sites_are_created_by_an_admin_and_by_an_operator_for_its_own_enterprise(
        client, conn, admin):
    made = client.post("/v1/sites", headers=admin, json={
        "name": "ty-1", "enterprise": "Taihang Compute", "city": "太原"})
    assert made.status_code == 201, made.text
    site = made.json()
    assert site == {"id": site["id"], "name": "ty-1", "city": "太原",
                    "enterprise_id": site["enterprise_id"], "enterprise": "Taihang Compute",
                    "in_province": True, "data_centre": "ty-1"}  # the enterprise made as new
    taihang = bearer(create_key(conn, Role.OPERATOR, enterprise_id=site["enterprise_id"]))
    fenhe = make_org(conn, "Fenhe Cloud", "fh-1", "太原")

    # Taihang's operator: its enterprise by default or by name, never another, real or not
    hall = client.post("/v1/sites", headers=taihang, json={
        "name": "ty-1-hall-b", "city": "太原", "data_centre": "ty-1"})
    assert hall.status_code == 201, hall.text
    assert (hall.json()["enterprise"], hall.json()["data_centre"]) == ("Taihang Compute", "ty-1")
    named = client.post("/v1/sites", headers=taihang, json={
        "name": "ty-3", "enterprise": "Taihang Compute", "city": "太原"})
    assert named.status_code == 201 and named.json()["in_province"] is True
    for other in ("Fenhe Cloud", "Nobody Ltd."):
        refused = client.post("/v1/sites", headers=taihang, json={
            "name": "ty-2", "enterprise": other, "city": "太原"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == {
            "code": "forbidden", "field": "enterprise",
            "reason": "an operator creates sites for its own enterprise only"}
    no_owner = client.post("/v1/sites", headers=admin, json={"name": "x-1", "city": "太原"})
    assert no_owner.status_code == 422 and no_owner.json()["error"]["field"] == "enterprise"
    for role in (Role.BUREAU, Role.VIEWER):
        assert client.post("/v1/sites", headers=bearer(create_key(conn, role)), json={
            "name": "x-1", "enterprise": "Fenhe Cloud", "city": "太原"}).status_code == 403

    duplicate = client.post("/v1/sites", headers=bearer(fenhe.operator_key), json={
        "name": "ty-1", "city": "大同"})
    assert duplicate.status_code == 409, duplicate.text
    assert duplicate.json()["error"]["field"] == "name"
    assert "already exists" in duplicate.json()["error"]["reason"]
    owners = dict(conn.execute("SELECT s.name, e.name FROM sites s"
                               " JOIN enterprises e ON e.id = s.enterprise_id").fetchall())
    assert owners == {"ty-1": "Taihang Compute", "ty-1-hall-b": "Taihang Compute",
                      "ty-3": "Taihang Compute", "fh-1": "Fenhe Cloud"}
    listed = client.get("/v1/enterprises", headers=admin).json()
    assert [(e["name"], e["sites"]) for e in listed] == [
        ("Fenhe Cloud", 1), ("Taihang Compute", 3)]


def test_a_site_changes_city_and_data_centre_but_never_its_enterprise(client, conn, admin):
    taihang = make_org(conn, "Taihang Compute", "ty-1", "太原")
    fenhe = make_org(conn, "Fenhe Cloud", "fh-1", "太原")
    site_id = taihang.site.id
    path = f"/v1/sites/{site_id}"

    moved = client.patch(path, headers=bearer(taihang.operator_key),
                         json={"data_centre": "taiyuan-campus"})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["city"], moved.json()["data_centre"]) == ("太原", "taiyuan-campus")
    renamed = client.patch(path, headers=admin, json={"city": "晋中"})
    assert (renamed.json()["city"], renamed.json()["data_centre"]) == ("晋中", "taiyuan-campus")
    assert client.patch(path, headers=admin, json={}).json() == renamed.json()  # no change

    # Fenhe's operator is told Taihang's site does not exist, as for an id nobody has
    stranger = client.patch(path, headers=bearer(fenhe.operator_key), json={"city": "大同"})
    nobody = client.patch("/v1/sites/999999", headers=bearer(fenhe.operator_key),
                          json={"city": "大同"})
    assert stranger.status_code == nobody.status_code == 404
    assert stranger.json()["error"] == {
        **nobody.json()["error"], "reason": f"no site with id {site_id}"}
    for body, field in (({"enterprise": "Fenhe Cloud"}, "enterprise"),
                        ({"name": "fh-2"}, "name"), ({"city": " "}, "city")):
        refused = client.patch(path, headers=admin, json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == field
    assert client.patch(path, headers=bearer(create_key(conn, Role.BUREAU)),
                        json={"city": "大同"}).status_code == 403
    assert conn.execute("SELECT s.name, s.city, s.data_centre, e.name FROM sites s JOIN"
                        " enterprises e ON e.id = s.enterprise_id WHERE s.id = %s",
                        (site_id,)).fetchone() == ("ty-1", "晋中", "taiyuan-campus",
                                                   "Taihang Compute")


def test_only_an_admin_says_whether_a_site_is_in_shanxi(settings, db, conn) -> None:
    """Whether a site is in the province decides what the policy pays on it: an operator's
    site is registered in Shanxi, and an operator may not say otherwise (nor the reverse)."""
    from jinsuan.kernel.sites import create_site

    site = create_site(conn, enterprise="Alpha", name="alpha-1", city="太原")
    operator = create_key(conn, Role.OPERATOR, enterprise_id=site.enterprise_id)
    admin = create_key(conn, Role.ADMIN)
    app, _ = make_app(settings, db)
    with TestClient(app) as client:
        for claim in (True, False):
            refused = client.post("/v1/sites", headers=bearer(operator), json={
                "name": f"alpha-{claim}", "city": "太原", "in_province": claim})
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["field"] == "in_province"
        made = client.post("/v1/sites", headers=bearer(operator),
                           json={"name": "alpha-2", "city": "太原"})
        assert made.status_code == 201 and made.json()["in_province"] is True
        outside = client.post("/v1/sites", headers=bearer(admin), json={
            "name": "beijing-1", "city": "北京", "enterprise": "Alpha", "in_province": False})
        assert outside.status_code == 201 and outside.json()["in_province"] is False
