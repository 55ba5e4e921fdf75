"""Schema migrations: numbered SQL files applied once each, in order, under an advisory lock.

A file named ``NNNN_name.sql`` applies everywhere. A step whose SQL differs by flavour comes as
``NNNN_name.plain.sql`` and a ``NNNN_name.<flavour>.sql`` for each flavour (timescale, citus)
whose SQL differs from plain PostgreSQL's: a flavour without its own file of a step applies the
plain one (or none, when the step is one flavour's alone). Which file was applied is recorded,
so a database never mixes two layouts, and its flavour is read back from that record.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

import psycopg

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(plain|timescale|citus))?\.sql$")
MIGRATION_LOCK = 0x6A696E7375616E  # "jinsuan": serialises concurrent start-ups

log = logging.getLogger(__name__)


class Flavour(StrEnum):
    """The store's layout: plain PostgreSQL (daily partitions), TimescaleDB (a hypertable) or
    Citus (samples distributed over workers, daily partitions, old ones columnar)."""

    PLAIN = "plain"
    TIMESCALE = "timescale"
    CITUS = "citus"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available(flavour: Flavour) -> list[Migration]:
    """The steps of ``flavour``, in order."""
    wanted = [None, flavour.value, Flavour.PLAIN.value]
    steps: dict[int, dict[str | None, Migration]] = {}
    for entry in resources.files("jinsuan.kernel.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        version, name, own = int(match[1]), match[2], match[3]
        variants = steps.setdefault(version, {})
        # a step is one shared file or files per flavour, all of one name
        clash = own in variants or (bool(variants) and (own is None or None in variants))
        if clash or any(m.name.split(".")[0] != name for m in variants.values()):
            raise RuntimeError(f"two migrations numbered {version:04d}: {name}")
        variants[own] = Migration(version, f"{name}.{own}" if own else name, entry.read_text())
    found = []
    for version in sorted(steps):
        step = next((steps[version][w] for w in wanted if w in steps[version]), None)
        if step is not None:
            found.append(step)
    return found


def _preloaded(conn: psycopg.Connection, library: str) -> bool:
    preloaded = conn.execute("SHOW shared_preload_libraries").fetchone()
    libraries = {lib.strip() for lib in (preloaded[0] if preloaded else "").split(",")}
    return any(lib == library or lib.startswith(f"{library}-") for lib in libraries)


def timescale_available(conn: psycopg.Connection) -> bool:
    """Whether TimescaleDB can be used here: installed and loaded. Installed but not in
    ``shared_preload_libraries`` (the usual state right after installing the package), its
    ``CREATE EXTENSION`` fails; the store then goes on with plain PostgreSQL, saying so once."""
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        return False
    if not _preloaded(conn, "timescaledb"):
        log.warning(
            "TimescaleDB is installed but not loaded (it is not in shared_preload_libraries):"
            " using plain PostgreSQL. To use it, add timescaledb to shared_preload_libraries,"
            " restart PostgreSQL, and migrate a new database.")
        return False
    return True


def citus_ready(conn: psycopg.Connection) -> bool:
    """Whether this database is a Citus coordinator the store can distribute over: the citus
    extension created in it (the operator's act, on the coordinator and on every worker, with
    the workers registered: it is never created here, since the workers' databases and
    addresses are the operator's) and at least one active worker. Citus loaded on the server
    but not created in this database means plain PostgreSQL, said once; created without a
    worker is an error, said plainly, rather than a store that cannot place a shard."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is None:
        if _preloaded(conn, "citus"):
            log.warning(
                "Citus is loaded on this server but the citus extension is not created in"
                " this database: using plain PostgreSQL. To distribute the store, CREATE"
                " EXTENSION citus in the database on the coordinator and on every worker,"
                " register the workers (citus_add_node), and migrate a new database.")
        return False
    workers = conn.execute("SELECT count(*) FROM citus_get_active_worker_nodes()").fetchone()
    if not workers or workers[0] == 0:
        raise RuntimeError("the citus extension is created in this database but no worker is"
                           " registered: add the workers (citus_add_node) before migrating")
    return True


def applied_flavour(names: list[str]) -> Flavour:
    """The flavour of a database from the names of the migrations applied to it."""
    for flavour in (Flavour.TIMESCALE, Flavour.CITUS):
        if any(name.endswith(f".{flavour.value}") for name in names):
            return flavour
    return Flavour.PLAIN


def upgrade(conn: psycopg.Connection, *, want_timescale: bool, want_citus: bool) -> Flavour:
    """Bring the schema up to date; return the store's flavour.

    A new database gets Citus when asked for and :func:`citus_ready`, else TimescaleDB when
    asked for and :func:`timescale_available`, else plain PostgreSQL; a migrated one keeps the
    flavour it was made with."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = dict(conn.execute("SELECT version, name FROM schema_migrations").fetchall())
        if applied:
            flavour = applied_flavour(list(applied.values()))
        elif want_citus and citus_ready(conn):
            flavour = Flavour.CITUS
        elif want_timescale and timescale_available(conn):
            flavour = Flavour.TIMESCALE
        else:
            flavour = Flavour.PLAIN
        for step in available(flavour):
            if step.version in applied:
                continue
            conn.execute(step.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (step.version, step.name),
            )
    return flavour


def migrate(conn: psycopg.Connection, *, want_timescale: bool, want_citus: bool = True) -> bool:
    """:func:`upgrade`, answering the older callers' question: whether the database uses
    TimescaleDB."""
    return upgrade(conn, want_timescale=want_timescale,
                   want_citus=want_citus) is Flavour.TIMESCALE
