"""``jinsuan keys``, ``jinsuan agents`` and ``jinsuan sites``: what an administrator types.

Keys, agents and sites go through the API of a platform served by uvicorn on loopback; only
the first admin key is written to the database directly, on the platform host.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest
from collectors_kit import make_app
from servers import serving
from typer.testing import CliRunner

from jinsuan.cli import app
from jinsuan.contract.signing import new_private_key, public_key_b64
from jinsuan.kernel.auth import Role, authenticate

runner = CliRunner()


@pytest.fixture
def host(database_url, tmp_path, monkeypatch) -> None:
    """The platform host's environment: its database, and no platform URL or key."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("JINSUAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")  # tables unwrapped
    monkeypatch.delenv("JINSUAN_URL", raising=False)
    monkeypatch.delenv("JINSUAN_API_KEY", raising=False)


@pytest.fixture
def served(host, settings, db) -> Iterator[str]:
    with serving(make_app(settings, db)[0]) as url:
        yield url


def _first_admin_key() -> str:
    made = runner.invoke(app, ["keys", "create", "--role", "admin", "--label", "root"])
    assert made.exit_code == 0, made.output
    return made.stdout.strip()


def test_keys_sites_and_tokens_from_the_command_line(served, database_url):
    admin = ["--url", served, "--key", _first_admin_key()]
    made = runner.invoke(app, ["sites", "create", "taiyuan-1", "--enterprise", "Example Co.",
                               "--city", "太原", *admin])
    assert made.exit_code == 0, made.output
    assert "'taiyuan-1' in 太原 for Example Co., data centre 'taiyuan-1'" in made.output
    again = runner.invoke(app, ["sites", "create", "taiyuan-1", "--enterprise", "Example Co.",
                                "--city", "太原", *admin])
    assert again.exit_code == 2 and "409: a site named 'taiyuan-1' already exists (name)" in (
        again.output)

    made_key = runner.invoke(app, ["keys", "create", "--role", "operator",
                                   "--enterprise", "Example Co.", "--label", "ops", *admin])
    assert made_key.exit_code == 0, made_key.output
    key = made_key.stdout.strip()
    own = ["--url", served, "--key", key]
    # the operator's key: its own enterprise, left out; whether a site is in Shanxi is an
    # admin's say alone
    away = runner.invoke(app, ["sites", "create", "taiyuan-1-hall-c", "--city", "太原",
                               "--out-of-province", *own])
    assert away.exit_code == 2 and "403: only an admin says whether a site is in Shanxi" in (
        away.output)
    hall = runner.invoke(app, ["sites", "create", "taiyuan-1-hall-b", "--city", "太原",
                               "--data-centre", "taiyuan-1", *own])
    assert hall.exit_code == 0 and "for Example Co., data centre 'taiyuan-1'" in hall.output
    other = runner.invoke(app, ["sites", "create", "datong-1", "--enterprise", "Other Co.",
                                "--city", "大同", *own])
    assert other.exit_code == 2 and "403: an operator creates sites for its own enterprise" in (
        other.output)
    token = runner.invoke(app, ["sites", "token", "taiyuan-1", "--hours", "2", *own])
    assert token.exit_code == 0 and token.output.startswith("jse_")
    missing = runner.invoke(app, ["sites", "token", "datong-1", *own])
    assert missing.exit_code == 2 and "no site named 'datong-1'" in missing.output
    with psycopg.connect(database_url) as conn:
        principal = authenticate(conn, key)
        assert principal is not None and principal.role is Role.OPERATOR
        stored = conn.execute("SELECT count(*) FROM api_keys WHERE secret_sha256::text"
                              " LIKE %s", (f"%{key[-10:]}%",)).fetchone()[0]
        assert stored == 0  # only a hash is kept
        centres = {name: (centre, inside) for name, centre, inside in conn.execute(
            "SELECT name, data_centre, in_province FROM sites").fetchall()}
        assert centres == {"taiyuan-1": ("taiyuan-1", True),
                           "taiyuan-1-hall-b": ("taiyuan-1", True)}
        # the token made by the operator's key, valid for the 2 hours asked
        made_by, hours = conn.execute(
            "SELECT k.prefix, round(extract(epoch FROM t.expires_at - t.created_at) / 3600)"
            " FROM enrolment_tokens t JOIN api_keys k ON k.id = t.created_by").fetchone()
        assert (made_by, hours) == (key.split("_")[1], 2)

    prefix = key.split("_")[1]
    listed = runner.invoke(app, ["keys", "list", *admin])
    assert listed.exit_code == 0, listed.output
    assert prefix in listed.output and "Example Co." in listed.output and "ops" in listed.output
    assert key.split("_")[2] not in listed.output  # never the secret

    rotated = runner.invoke(app, ["keys", "rotate", prefix, *admin])
    assert rotated.exit_code == 0, rotated.output
    new_key = rotated.stdout.strip()  # the new key alone on stdout
    assert new_key.startswith("jsk_") and f"jsk_{prefix}_… revoked" in rotated.stderr
    with psycopg.connect(database_url) as conn:
        assert authenticate(conn, key) is None
        renewed = authenticate(conn, new_key)
        assert renewed is not None and renewed.role is Role.OPERATOR

    new_prefix = new_key.split("_")[1]
    assert runner.invoke(app, ["keys", "revoke", new_prefix, *admin]).exit_code == 0
    with psycopg.connect(database_url) as conn:
        assert authenticate(conn, new_key) is None
    twice = runner.invoke(app, ["keys", "revoke", new_prefix, *admin])
    assert twice.exit_code == 2 and "409: " in twice.output and "already revoked" in twice.output


def test_agents_are_listed_and_revoked_through_the_api(served):
    admin = ["--url", served, "--key", _first_admin_key()]
    assert runner.invoke(app, ["sites", "create", "taiyuan-1", "--enterprise", "Example Co.",
                               "--city", "太原", *admin]).exit_code == 0
    operator = runner.invoke(app, ["keys", "create", "--role", "operator",
                                   "--enterprise", "Example Co.", *admin]).stdout.strip()
    token = runner.invoke(app, ["sites", "token", "taiyuan-1", *admin]).stdout.strip()
    enrolled = httpx.post(f"{served}/v1/agents/enrol", json={
        "token": token, "public_key": public_key_b64(new_private_key()), "hostname": "gpu-01"})
    assert enrolled.status_code == 200, enrolled.text
    agent = enrolled.json()["agent_id"]
    own = ["--url", served, "--key", operator]

    listed = runner.invoke(app, ["agents", "list", *own])
    assert listed.exit_code == 0, listed.output
    assert agent in listed.output and "gpu-01" in listed.output and "taiyuan-1" in listed.output

    revoked = runner.invoke(app, ["sites", "revoke-agent", agent, *own])  # the older name
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(app, ["agents", "revoke", agent, *admin])
    assert again.exit_code == 2 and "already revoked" in again.output
    missing = runner.invoke(app, ["agents", "revoke", "agt_0000000000000000", *admin])
    assert missing.exit_code == 2 and "404: no agent 'agt_0000000000000000'" in missing.output


def test_key_mistakes_say_what_and_where(served):
    bad_role = runner.invoke(app, ["keys", "create", "--role", "mayor"])
    assert bad_role.exit_code == 2 and "--role 'mayor'" in bad_role.output
    # only the first admin key is written to the database directly
    direct = runner.invoke(app, ["keys", "create", "--role", "operator", "--enterprise", "X"])
    assert direct.exit_code == 2 and "--url" in direct.output
    past = runner.invoke(app, ["keys", "create", "--role", "admin", "--expires-at", "2020-01-01"])
    assert past.exit_code == 2 and "--expires-at: an expiry is a moment to come" in past.output
    garbled = runner.invoke(app, ["keys", "create", "--role", "admin", "--expires-at", "soon"])
    assert garbled.exit_code == 2 and "--expires-at 'soon'" in garbled.output

    admin = ["--url", served, "--key", _first_admin_key()]
    no_owner = runner.invoke(app, ["keys", "create", "--role", "operator", *admin])
    assert no_owner.exit_code == 2 and "needs an enterprise" in no_owner.output
    assert "(enterprise)" in no_owner.output
    unknown = runner.invoke(app, ["keys", "create", "--role", "operator",
                                  "--enterprise", "Nobody Ltd.", *admin])
    assert unknown.exit_code == 2 and "404: no enterprise named 'Nobody Ltd.'" in unknown.output
