"""Schema migrations: numbered SQL files applied once each, in order, under an advisory lock.

A file named ``NNNN_name.sql`` applies everywhere. A pair ``NNNN_name.plain.sql`` /
``NNNN_name.timescale.sql`` is a step whose SQL differs with TimescaleDB: exactly one of the
pair is applied, and which one is recorded, so a database never mixes the two layouts.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(plain|timescale))?\.sql$")
_LOCK_KEY = 0x6A696E7375616E  # "jinsuan": serialises concurrent start-ups

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available(timescale: bool) -> list[Migration]:
    wanted = "timescale" if timescale else "plain"
    found: dict[int, Migration] = {}
    for entry in resources.files("jinsuan.kernel.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        version, name, flavour = int(match[1]), match[2], match[3]
        if flavour not in (None, wanted):
            continue
        if version in found:
            raise RuntimeError(f"two migrations numbered {version:04d}: {name}")
        label = f"{name}.{flavour}" if flavour else name
        found[version] = Migration(version, label, entry.read_text())
    return [found[v] for v in sorted(found)]


def timescale_available(conn: psycopg.Connection) -> bool:
    """Whether TimescaleDB can be used here: installed and loaded. Installed but not in
    ``shared_preload_libraries`` (the usual state right after installing the package), its
    ``CREATE EXTENSION`` fails; the store then goes on with plain PostgreSQL, saying so once."""
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        return False
    preloaded = conn.execute("SHOW shared_preload_libraries").fetchone()
    libraries = {lib.strip() for lib in (preloaded[0] if preloaded else "").split(",")}
    if not any(lib == "timescaledb" or lib.startswith("timescaledb-") for lib in libraries):
        log.warning(
            "TimescaleDB is installed but not loaded (it is not in shared_preload_libraries):"
            " using plain PostgreSQL. To use it, add timescaledb to shared_preload_libraries,"
            " restart PostgreSQL, and migrate a new database.")
        return False
    return True


def migrate(conn: psycopg.Connection, *, want_timescale: bool) -> bool:
    """Bring the schema up to date; return whether the database uses TimescaleDB."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = dict(conn.execute("SELECT version, name FROM schema_migrations").fetchall())
        if applied:
            timescale = any(name.endswith(".timescale") for name in applied.values())
        else:
            timescale = want_timescale and timescale_available(conn)
        for step in available(timescale):
            if step.version in applied:
                continue
            conn.execute(step.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (step.version, step.name),
            )
    return timescale
