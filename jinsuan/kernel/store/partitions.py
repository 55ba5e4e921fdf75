"""Daily partitions of the ``samples`` table on plain PostgreSQL and Citus, and raw-data
retention.

On TimescaleDB the hypertable makes its own chunks, and retention drops the old ones. On plain
PostgreSQL a partition per UTC day is made
before rows for that day are written, in a short transaction of its own (never inside an ingest
transaction, so creating a partition cannot deadlock with concurrent writers). On Citus the
same statement makes the same partition: a partition of a distributed table is distributed by
Citus, colocated with it; upkeep also turns the days older than a week columnar.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

import psycopg
from psycopg import sql

from jinsuan.kernel.store.migrate import Flavour

_LOCK_KEY = 0x6A73706172  # serialises partition DDL between platform processes


def partition_name(day: date) -> str:
    return f"samples_{day:%Y%m%d}"


def retained_from(keep_days: int, today: date) -> datetime:
    """The first moment of raw data kept: midnight UTC ``keep_days`` before ``today``. Raw
    samples before it are dropped, and with them the report bodies that carried them."""
    return datetime.combine(today - timedelta(days=keep_days), time(), UTC)


class Partitions:
    """Creates daily partitions on demand; remembers which exist to keep the hot path cheap."""

    def __init__(self, timescale: bool) -> None:
        self.timescale = timescale
        self._known: set[date] = set()

    def ensure(self, conn: psycopg.Connection, days: Iterable[date]) -> None:
        if self.timescale:
            return
        missing = sorted(set(days) - self._known)
        if not missing:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            for day in missing:
                start = datetime(day.year, day.month, day.day, tzinfo=UTC)
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} PARTITION OF samples"
                        " FOR VALUES FROM ({}) TO ({})"
                    ).format(
                        sql.Identifier(partition_name(day)),
                        sql.Literal(start),
                        sql.Literal(start + timedelta(days=1)),
                    )
                )
        self._known.update(missing)

    def apply_retention(self, conn: psycopg.Connection, keep_days: int, today: date) -> list[str]:
        """Drop raw samples of the days before ``today - keep_days``; return the partitions (or
        TimescaleDB chunks) dropped. Done here on every call rather than by a TimescaleDB
        retention policy, so that a changed ``keep_days`` takes effect at once, on both
        flavours, by one rule."""
        oldest = retained_from(keep_days, today)
        if self.timescale:
            rows = conn.execute(
                "SELECT drop_chunks('samples', older_than => %s::timestamptz)", (oldest,),
            ).fetchall()
            return [str(name) for (name,) in rows]
        cutoff = partition_name(oldest.date())
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname = 'samples' AND c.relname < %s ORDER BY 1",
            (cutoff,),
        ).fetchall()
        dropped = [name for (name,) in rows]
        with conn.transaction():
            for name in dropped:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        self._known = {d for d in self._known if partition_name(d) >= cutoff}
        return dropped


#: On Citus, a day's partition is converted to columnar storage once it ended this long ago:
#: late data is rare by then (columnar takes inserts, but each one writes a small stripe).
COLUMNAR_AFTER = timedelta(days=7)


class CitusPartitions(Partitions):
    """Daily partitions of the distributed ``samples``: made and dropped as on plain PostgreSQL,
    and, at each upkeep, those older than :data:`COLUMNAR_AFTER` converted to columnar."""

    def __init__(self) -> None:
        super().__init__(timescale=False)

    def apply_retention(self, conn: psycopg.Connection, keep_days: int, today: date) -> list[str]:
        """Drop the days past retention (as on plain PostgreSQL), then make the week-old ones
        columnar; return the partitions dropped."""
        dropped = super().apply_retention(conn, keep_days, today)
        self.make_columnar(conn, today)
        return dropped

    def make_columnar(self, conn: psycopg.Connection, today: date) -> list[str]:
        """Convert the heap partitions whose day ended :data:`COLUMNAR_AFTER` before
        ``today`` began to columnar, with Citus's ``alter_old_partitions_set_access_method``
        (a procedure that commits each partition on its own: ``conn`` must be in autocommit,
        outside a transaction); return the partitions converted."""
        older_than = datetime.combine(today - COLUMNAR_AFTER, time(), UTC)
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            heap = [str(name) for (name,) in conn.execute(
                "SELECT partition FROM time_partitions"
                " WHERE parent_table = 'samples'::regclass AND access_method = 'heap'"
                " AND to_value::timestamptz <= %s ORDER BY 1", (older_than,)).fetchall()]
            if heap:
                conn.execute("CALL alter_old_partitions_set_access_method("
                             "'samples', %s, 'columnar')", (older_than,))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        return heap


def partitions_for(flavour: Flavour) -> Partitions:
    """The partition keeper of a store of ``flavour``."""
    if flavour is Flavour.CITUS:
        return CitusPartitions()
    return Partitions(timescale=flavour is Flavour.TIMESCALE)
