"""Shared fixtures: a real PostgreSQL for every test that needs one.

The machine's server at 127.0.0.1:5432 is used when it answers (override with
JINSUAN_TEST_PG); otherwise an embedded pgserver is started. Each test run migrates one
template database, and each test gets a fresh copy of it, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

ADMIN_URL = os.environ.get("JINSUAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Which store the tests run on, chosen, never guessed: "plain" PostgreSQL (the default) or
# "timescale" (JINSUAN_TEST_PG must then be a server with TimescaleDB preloaded, e.g. the one
# ../shared/vendor/timescaledb.sh starts on 127.0.0.1:5440; .ci/run runs a subset so).
FLAVOUR = os.environ.get("JINSUAN_TEST_FLAVOUR", "plain")
if FLAVOUR not in ("plain", "timescale"):
    raise pytest.UsageError(f"JINSUAN_TEST_FLAVOUR={FLAVOUR!r}: use plain or timescale")


def _with_database(url: str, name: str) -> str:
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    conninfo["dbname"] = name
    return psycopg.conninfo.make_conninfo(**conninfo)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            pass
        yield ADMIN_URL
        return
    except psycopg.OperationalError:
        pass
    from jinsuan.kernel.store import embedded

    url, server = embedded.start(tmp_path_factory.mktemp("pg"))
    try:
        yield url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    from jinsuan.kernel.store.migrate import migrate

    name = f"jinsuan_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(_with_database(pg_admin_url, name), autocommit=True) as conn:
            timescale = migrate(conn, want_timescale=FLAVOUR == "timescale")
        if timescale != (FLAVOUR == "timescale"):
            raise pytest.UsageError(f"JINSUAN_TEST_FLAVOUR=timescale, but {pg_admin_url} has no"
                                    " TimescaleDB preloaded")
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            # A template nobody can connect to: TimescaleDB's background workers would, and a
            # CREATE DATABASE ... TEMPLATE that finds them there fails with ObjectInUse.
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        yield name
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh copy of the migrated template, dropped on exit; yields its URL."""
    name = f"jinsuan_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield _with_database(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    with fresh_database(pg_admin_url, template_db) as url:
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path):
    from jinsuan.kernel.settings import Settings

    return Settings(database_url=database_url, data_dir=tmp_path, run_background_jobs=False)


@pytest.fixture
def db(settings):
    from jinsuan.kernel.store import Database

    database = Database.open(settings)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def conn(db) -> Iterator[psycopg.Connection]:
    with db.pool.connection() as connection:
        yield connection
