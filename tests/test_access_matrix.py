"""The written access matrix, docs/access-matrix.csv, against the running app.

The matrix has a row per operation of the app's OpenAPI document and a column per role, plus
``no_key``: ``yes`` (allowed), ``own`` (allowed for what the caller owns; another owner's object
answers 404, in the words of an object that does not exist), ``no`` (403; 401 in ``no_key``),
and ``public`` for a route open without a key (its note says why). The tests here hold it to the
code both ways: its rows are exactly the app's operations, the roles it allows are exactly those
each route declares with ``allow(...)``, and every operation, called with every role's key, no
key, a malformed key and a revoked key, answers as its row says.

The world (tests/test_vouchers.py's ``World``): Taihang Compute runs site ty-1 and Fenhe Cloud
fh-1, each with an operator key; tenants lab-a and lab-b each have a dispatcher key, act for an
applicant (清源智能, 云冈大学) holding a voucher (V1 on Taihang, V2 on Fenhe), and ran one job
(A at ty-1 on V1, B at fh-1 on V2); the hours are rolled up, measure 5b is assessed for 2026 and
Taihang has declared its commissioning. The "first owner" is Taihang's operator or lab-a's
dispatcher: path and required query parameters are filled with its objects (site ty-1, its
agent, job A, V1, ...; a key's prefix with a spare admin key's), the others with a placeholder
that names nothing. Each ``own`` or ``yes`` cell of an
owning role is also tried with the second owner's key (Fenhe's operator, lab-b's dispatcher):
for ``own``, the first owner's object answers 404 exactly as a missing object does, and a list
names nothing of the first owner's; for ``yes``, the second owner gets what the first got.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from collectors_kit import bearer, make_app
from conftest import fresh_database
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_access import _api_routes, _declarations
from test_vouchers import RUN_AT, World

from collectors.rollup import run_rollups
from jinsuan.kernel.auth import Role, create_key, prefix_of, revoke_key
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database
from rewards.store import assess
from rewards.vouchers import drawing

MATRIX = Path(__file__).parents[1] / "docs" / "access-matrix.csv"
ROLES = ("admin", "bureau", "viewer", "operator", "dispatcher", "metrics", "applicant")
HEADER = ["method", "path", "no_key", *ROLES, "notes"]
BODY_METHODS = ("POST", "PUT", "PATCH")
PLACEHOLDER = "999999"  # an id, a name or a run that nothing in the world has
MALFORMED = "nonsense"
RANGE = ("from", "to")  # optional, but filled where a route takes them: the world's month

# What each public route answers to the walk's request (no signature, no token, a body of {}),
# whatever key is presented: a public route never looks at the key.
PUBLIC_ANSWERS = {
    ("POST", "/v1/leases"): 401,  # no agent signature
    ("POST", "/v1/runs/{run_id}/events"): 401,  # no agent signature
    ("POST", "/v1/reports"): 401,  # no agent signature
    ("POST", "/v1/federation/hourly"): 401,  # no platform signature
    ("POST", "/v1/agents/enrol"): 422,  # no enrolment token in {}
    ("GET", "/metrics"): 200,
    ("GET", "/healthz"): 200,
    ("GET", "/readyz"): 200,
}

# Which parameters name an object that a role's key owns or not: an operator's enterprise runs
# sites, provides vouchers and runs jobs at its sites; a dispatcher's tenant has jobs and acts
# for an applicant, who holds vouchers.
OWNED = {
    "operator": {"site_id", "enterprise", "job_id", "voucher_id", "agent_id"},
    "dispatcher": {"job_id", "voucher_id", "applicant"},
    "applicant": {"job_id", "voucher_id", "applicant"},
}


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    no_key: str
    cells: dict[str, str]  # role -> yes, own, no or public
    notes: str

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def _read_matrix() -> list[Row]:
    with MATRIX.open(newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        header = next(reader)
        assert header == HEADER, f"{MATRIX.name}: the header must be {','.join(HEADER)}"
        return [Row(r[0], r[1], r[2], dict(zip(ROLES, r[3:10], strict=True)), r[10])
                for r in reader]


ROWS = _read_matrix()


@dataclass
class Walk:
    app: FastAPI
    client: TestClient
    operations: dict[tuple[str, str], dict[str, Any]]  # (method, path) -> OpenAPI operation
    keys: dict[str, str]  # role -> the first owner's key (one key for the unowned roles)
    second: dict[str, str]  # role -> the second owner's key
    revoked: str
    values: dict[str, Any]  # parameter name -> the first owner's object
    markers: dict[str, tuple[str, ...]]  # role -> what names the first owner in an answer


@pytest.fixture(scope="module")
def walk(pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Walk]:
    with fresh_database(pg_admin_url, template_db) as url:
        # the walk sends some 700 requests from one address, a few keys and a wrong one
        settings = Settings(database_url=url, data_dir=tmp_path_factory.mktemp("matrix"),
                            run_background_jobs=False, rate_per_key=10_000,
                            rate_burst=10_000, rate_per_address=10_000,
                            wrong_secrets_before_lockout=10_000)
        database = Database.open(settings)
        try:
            with database.pool.connection() as conn:
                world = World(conn, database)
                fenhe = conn.execute("SELECT id FROM enterprises WHERE name = 'Fenhe Cloud'"
                                     ).fetchone()[0]
                v1 = world.voucher(world.lab_a, "10000.00").voucher_id
                v2 = world.voucher(world.lab_b, "10000.00", provider="Fenhe Cloud",
                                   contract="B-1").voucher_id
                job_a = world.run("lab-a", "ty-1", v1, hours=1)
                world.run("lab-b", "fh-1", v2, hours=1)
                assert drawing.draw_pending(conn) == 2
                assert run_rollups(database, settings, now=RUN_AT + timedelta(hours=3)).ran
                assess(conn, 2026, ["5b"], by_key=None)
                keys = {"admin": create_key(conn, Role.ADMIN),
                        "bureau": create_key(conn, Role.BUREAU),
                        "viewer": create_key(conn, Role.VIEWER),
                        "metrics": create_key(conn, Role.METRICS),
                        "operator": create_key(conn, Role.OPERATOR,
                                               enterprise_id=world.taihang),
                        "dispatcher": create_key(conn, Role.DISPATCHER, tenant="lab-a"),
                        "applicant": create_key(conn, Role.APPLICANT,
                                                applicant_id=world.a.id)}
                second = {"operator": create_key(conn, Role.OPERATOR, enterprise_id=fenhe),
                          "dispatcher": create_key(conn, Role.DISPATCHER, tenant="lab-b"),
                          "applicant": create_key(conn, Role.APPLICANT,
                                                  applicant_id=world.b.id)}
                revoked = create_key(conn, Role.ADMIN)
                assert revoke_key(conn, revoked.split("_")[1])
                spare = create_key(conn, Role.ADMIN, label="revoked and rotated by the walk")
                values = {"site_id": world.sites["ty-1"].site_id, "job_id": job_a,
                          "voucher_id": v1, "applicant_id": world.a.id,
                          "applicant": world.a.id, "enterprise": "Taihang Compute",
                          "tenant": "lab-a", "kind": "csv", "year": 2026, "measure": "5b",
                          "day": "2026-03-02", "from": "2026-03-01T00:00:00+08:00",
                          "to": "2026-04-01T00:00:00+08:00",
                          "agent_id": world.sites["ty-1"].agent_id, "prefix": prefix_of(spare)}
                markers = {"operator": ("Taihang Compute", "ty-1"),
                           "dispatcher": ("lab-a", "清源智能", job_a),
                           "applicant": ("清源智能", job_a)}
            app, _ = make_app(settings, database)
            operations = {(method.upper(), path): operation
                          for path, item in app.openapi()["paths"].items()
                          for method, operation in item.items()}
            with TestClient(app) as client:
                declared = client.post("/v1/rewards/declarations", headers=bearer(
                    keys["operator"]), json={
                    "kind": "commissioning", "data_centre": "ty-1",
                    "value": {"date": "2025-09-01"},
                    "evidence": [{"name": "竣工验收报告.pdf", "sha256": "ab" * 32}]})
                assert declared.status_code == 201, declared.text
                yield Walk(app, client, operations, keys, second, revoked, values, markers)
        finally:
            database.close()


def _call(walk: Walk, row: Row, key: str | None, values: dict[str, Any] | None = None
          ) -> httpx.Response:
    """The row's operation with its path and required query parameters filled from ``values``
    (the first owner's objects by default), a body of {} where it takes one, and ``key``."""
    values = walk.values if values is None else values
    path, query = row.path, {}
    for parameter in walk.operations[(row.method, row.path)].get("parameters", []):
        value = values.get(parameter["name"], PLACEHOLDER)
        if parameter["in"] == "path":
            path = path.replace("{" + parameter["name"] + "}", quote(str(value), safe=""))
        elif parameter["in"] == "query" and (parameter.get("required")
                                             or parameter["name"] in RANGE):
            query[parameter["name"]] = value
    return walk.client.request(row.method, path, params=query, headers=bearer(key) if key else {},
                               json={} if row.method in BODY_METHODS else None)


def _owned(walk: Walk, row: Row, role: str) -> list[str]:
    """The parameters of ``row`` the walk fills with an object ``role``'s first owner owns."""
    return [p["name"] for p in walk.operations[(row.method, row.path)].get("parameters", [])
            if p["name"] in OWNED[role] and (p["in"] == "path" or p.get("required"))]


def _error(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


def test_the_matrix_lists_every_operation_once(walk: Walk):
    listed = [(row.method, row.path) for row in ROWS]

    assert len(listed) == len(set(listed)), "an operation has two rows"
    assert sorted(walk.operations.keys() - set(listed)) == [], "operations missing a row"
    assert sorted(set(listed) - walk.operations.keys()) == [], "rows for no operation"


def test_the_cells_use_the_legend():
    def legible(row: Row) -> bool:
        cells = set(row.cells.values())
        if row.no_key == "public":  # open throughout, and says why
            return cells == {"public"} and bool(row.notes.strip())
        return row.no_key == "no" and cells <= {"yes", "own", "no"}

    assert [row.id for row in ROWS if not legible(row)] == []


def test_the_matrix_allows_exactly_the_declared_roles(walk: Walk):
    rows = {(row.method, row.path): row for row in ROWS}
    wrong = []
    for path, route in _api_routes(walk.app):
        declared = _declarations(route.dependant)
        roles = {role for d in declared if d.startswith("roles: ")
                 for role in d.removeprefix("roles: ").split(", ")}
        for method in sorted(route.methods):
            row = rows.get((method, path))
            if row is None:
                wrong.append(f"{method} {path}: no row")
                continue
            if not roles:  # public(why): open to anyone, the key never looked at
                if row.no_key != "public" or set(row.cells.values()) != {"public"}:
                    wrong.append(f"{row.id}: declared public ({declared}); the row says"
                                 f" no_key={row.no_key} {row.cells}")
                continue
            allowed = {role for role, cell in row.cells.items() if cell in ("yes", "own")}
            if row.no_key != "no" or allowed != roles:
                wrong.append(f"{row.id}: declared {sorted(roles)}; the row allows"
                             f" {sorted(allowed)}, no_key={row.no_key}")
    assert wrong == []


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_every_operation_answers_as_its_row_says(walk: Walk, row: Row):
    if (row.method, row.path) not in walk.operations:
        pytest.fail(f"{row.id}: the app has no such operation")
    found: list[str] = []

    def check(who: str, response: httpx.Response, ok: bool, expected: str) -> None:
        if not ok or response.status_code >= 500:
            found.append(f"{who}: {row.id} answered {response.status_code}"
                         f" {response.text[:300]!r}; expected {expected}")

    anonymous = _call(walk, row, None)
    if row.no_key == "public":
        want = PUBLIC_ANSWERS.get((row.method, row.path))
        assert want is not None, f"{row.id}: say in PUBLIC_ANSWERS what it answers the walk"
        check("no key", anonymous, anonymous.status_code == want, str(want))
        for who, key in [("malformed key", MALFORMED), ("revoked key", walk.revoked),
                         *walk.keys.items()]:
            answer = _call(walk, row, key)
            check(who, answer, answer.status_code == want, f"{want}, as without a key")
        assert found == []
        return

    check("no key", anonymous, anonymous.status_code == 401, "401")
    for who, key in (("malformed key", MALFORMED), ("revoked key", walk.revoked)):
        answer = _call(walk, row, key)
        check(who, answer, answer.status_code == 401, "401")

    for role, cell in row.cells.items():
        answer = _call(walk, row, walk.keys[role])
        if cell == "no":
            check(role, answer, answer.status_code == 403, "403")
            continue
        check(role, answer, answer.status_code not in (401, 403), "anything but 401/403")
        if role not in walk.second:
            continue
        owned = _owned(walk, row, role)
        stranger = _call(walk, row, walk.second[role])
        if owned and cell == "own":
            # the first owner reaches the object; to the second it does not exist, in the words
            # of an object that really does not
            check(role, answer, answer.status_code != 404, "the first owner's object found")
            missing = _call(walk, row, walk.second[role],
                            {**walk.values, **dict.fromkeys(owned, PLACEHOLDER)})
            check(f"another {role}", missing, missing.status_code == 404,
                  "404 for a missing object")
            same = stranger.status_code == 404 and missing.status_code == 404 and (
                _error(stranger)["code"], _error(stranger)["field"], _error(stranger)["reason"]
            ) == (_error(missing)["code"], _error(missing)["field"],
                  _reason_for(_error(missing)["reason"], walk.values, owned))
            check(f"another {role}", stranger, same,
                  f"404 as for a missing object: {missing.text[:200]!r}")
        elif owned:  # yes: every owner's object
            check(f"another {role}", stranger, stranger.status_code == answer.status_code,
                  f"{answer.status_code}, as the first owner")
        else:
            # a list: own names nothing of the first owner's to another; yes names the same
            first = [m for m in walk.markers[role] if m in answer.text]
            named = [m for m in walk.markers[role] if m in stranger.text]
            check(f"another {role}", stranger, stranger.status_code not in (401, 403),
                  "anything but 401/403")
            check(f"another {role}", stranger, named == ([] if cell == "own" else first),
                  f"{'nothing' if cell == 'own' else first} of the first owner's, named {named}")

    assert found == []


def _reason_for(reason: str, values: dict[str, Any], owned: list[str]) -> str:
    """A missing object's refusal as it would read naming the first owner's object."""
    for name in owned:
        reason = reason.replace(PLACEHOLDER, str(values[name]))
    return reason
