"""``jinsuan keys`` and ``jinsuan sites``: what an operator types on the platform host."""

from __future__ import annotations

import psycopg
from typer.testing import CliRunner

from jinsuan.cli import app
from jinsuan.kernel.auth import Role, authenticate

runner = CliRunner()


def test_keys_sites_and_tokens_from_the_command_line(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("JINSUAN_DATA_DIR", str(tmp_path))
    made = runner.invoke(app, ["sites", "create", "taiyuan-1", "--enterprise", "Example Co.",
                               "--city", "太原"])
    assert made.exit_code == 0, made.output
    again = runner.invoke(app, ["sites", "create", "taiyuan-1", "--enterprise", "Example Co.",
                                "--city", "太原"])
    assert again.exit_code == 2 and "already exists" in again.output
    hall = runner.invoke(app, ["sites", "create", "taiyuan-1-hall-b", "--enterprise",
                               "Example Co.", "--city", "太原", "--data-centre", "taiyuan-1"])
    assert hall.exit_code == 0 and "data centre 'taiyuan-1'" in hall.output

    key = runner.invoke(app, ["keys", "create", "--role", "operator",
                              "--enterprise", "Example Co."])
    assert key.exit_code == 0, key.output
    token = runner.invoke(app, ["sites", "token", "taiyuan-1"])
    assert token.exit_code == 0 and token.output.startswith("jse_")
    with psycopg.connect(database_url) as conn:
        principal = authenticate(conn, key.output.strip())
        assert principal is not None and principal.role is Role.OPERATOR
        stored = conn.execute("SELECT count(*) FROM api_keys WHERE secret_sha256::text"
                              " LIKE %s", (f"%{key.output.strip()[-10:]}%",)).fetchone()[0]
        assert stored == 0  # only a hash is kept
        centres = dict(conn.execute("SELECT name, data_centre FROM sites").fetchall())
        assert centres == {"taiyuan-1": "taiyuan-1", "taiyuan-1-hall-b": "taiyuan-1"}

    prefix = key.output.strip().split("_")[1]
    assert runner.invoke(app, ["keys", "revoke", prefix]).exit_code == 0
    with psycopg.connect(database_url) as conn:
        assert authenticate(conn, key.output.strip()) is None


def test_key_mistakes_say_what_and_where(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("JINSUAN_DATA_DIR", str(tmp_path))
    bad_role = runner.invoke(app, ["keys", "create", "--role", "mayor"])
    assert bad_role.exit_code == 2 and "--role 'mayor'" in bad_role.output
    no_owner = runner.invoke(app, ["keys", "create", "--role", "operator"])
    assert no_owner.exit_code == 2 and "--enterprise" in no_owner.output
    unknown = runner.invoke(app, ["keys", "create", "--role", "operator",
                                  "--enterprise", "Nobody Ltd."])
    assert unknown.exit_code == 2 and "Nobody Ltd." in unknown.output
