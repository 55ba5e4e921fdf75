"""Whether the database holds the schema this code was written for.

``jinsuan.kernel.store.migrate`` records each migration it applies in ``schema_migrations``.
The platform's readiness probe (``/readyz``) compares that record with the migrations this code
ships on every call, so a replica whose database is behind it (a restored backup, a promoted
copy that missed a migration, a row removed by hand) is taken out of a load balancer's rotation
instead of answering requests with missing tables. ``jinsuan migrate`` reads the same record to
say what it applied.
"""

from __future__ import annotations

from functools import cache

import psycopg

from jinsuan.kernel.store.migrate import Flavour, Migration, available


def label(step: Migration) -> str:
    """How a migration is named to an operator: its file name without ``.sql``."""
    return f"{step.version:04d}_{step.name}"


def applied_migrations(conn: psycopg.Connection) -> dict[int, str]:
    """``version -> name`` of every migration recorded as applied; empty on a database that was
    never migrated (no ``schema_migrations`` table yet)."""
    row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    if row is None or row[0] is None:
        return {}
    return dict(conn.execute("SELECT version, name FROM schema_migrations").fetchall())


@cache
def _known(flavour: Flavour) -> tuple[Migration, ...]:
    # The package's migration files do not change while the process runs; a probe called every
    # few seconds need not list and read them each time.
    return tuple(available(flavour))


def missing_migrations(conn: psycopg.Connection, flavour: Flavour) -> list[Migration]:
    """The migrations this code ships for the store's flavour that the database has not
    recorded, in order; empty when the schema is complete."""
    applied = applied_migrations(conn)
    return [step for step in _known(flavour) if step.version not in applied]
