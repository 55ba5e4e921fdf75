"""Daily partitions of the ``samples`` table on plain PostgreSQL, and raw-data retention.

On TimescaleDB the hypertable makes its own chunks, and retention drops the old ones. On plain
PostgreSQL a partition per UTC day is made
before rows for that day are written, in a short transaction of its own (never inside an ingest
transaction, so creating a partition cannot deadlock with concurrent writers).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

import psycopg
from psycopg import sql

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
