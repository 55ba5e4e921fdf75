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
from functools import cache
from pathlib import Path

import psycopg
import pytest

ADMIN_URL = os.environ.get("JINSUAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Which store the tests run on, chosen, never guessed: "plain" PostgreSQL (the default),
# "timescale" (JINSUAN_TEST_PG must then be a server with TimescaleDB preloaded, e.g. the one
# ../shared/vendor/timescaledb.sh starts on 127.0.0.1:5440) or "citus" (JINSUAN_TEST_PG must be
# a Citus coordinator whose database there has its workers registered, e.g. the cluster
# ../shared/vendor/citus.sh starts on 127.0.0.1:5450-5452); .ci/run runs a subset on each.
FLAVOUR = os.environ.get("JINSUAN_TEST_FLAVOUR", "plain")
if FLAVOUR not in ("plain", "timescale", "citus"):
    raise pytest.UsageError(f"JINSUAN_TEST_FLAVOUR={FLAVOUR!r}: use plain, timescale or citus")


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


@cache
def _nodes(pg_admin_url: str) -> tuple[str, ...]:
    """The admin URLs of the servers a test database lives on: the server itself and, on Citus,
    each worker registered in the admin database (a Citus database is one per node)."""
    if FLAVOUR != "citus":
        return (pg_admin_url,)
    from jinsuan.kernel.store import citus

    cluster = citus.nodes(pg_admin_url)
    if len(cluster) < 2:
        raise pytest.UsageError(f"JINSUAN_TEST_FLAVOUR=citus, but {pg_admin_url} is no Citus"
                                " coordinator with workers registered (pg_dist_node)")
    return cluster


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    from jinsuan.kernel.store import citus
    from jinsuan.kernel.store.migrate import Flavour, upgrade

    name = f"jinsuan_tpl_{uuid.uuid4().hex[:10]}"
    nodes = _nodes(pg_admin_url)
    url = citus.create_database(nodes, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            flavour = upgrade(conn, want_timescale=FLAVOUR == "timescale",
                              want_citus=FLAVOUR == "citus")
        if flavour != Flavour(FLAVOUR):
            raise pytest.UsageError(f"JINSUAN_TEST_FLAVOUR={FLAVOUR}, but {pg_admin_url} gave"
                                    f" a {flavour} store: timescale needs TimescaleDB preloaded")
        # A template nobody can connect to: TimescaleDB's and Citus's background workers would,
        # and a CREATE DATABASE ... TEMPLATE that finds them there fails with ObjectInUse.
        citus.close_database(nodes, name)
        yield name
    finally:
        citus.drop_database(nodes, name)


@contextmanager
def fresh_database(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh copy of the migrated template, dropped on exit; yields its URL. On Citus the
    template is copied on every node alike: the coordinator's copy keeps its metadata (shard
    ids and placements), each worker's copy the shards it names."""
    from jinsuan.kernel.store import citus

    name = f"jinsuan_t_{uuid.uuid4().hex[:12]}"
    nodes = _nodes(pg_admin_url)
    url = citus.create_database(nodes, name, template=template_db)
    try:
        yield url
    finally:
        citus.drop_database(nodes, name)


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
