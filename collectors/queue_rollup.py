"""The hourly queue series the scheduling dashboard reads over long ranges.

``roll_queue_hour`` (migration 0081) stores, for one hour, the seconds jobs spent queued by
tenant and site. Job transitions are written as they happen, so an hour is final once it has
closed; a rollup run writes every closed hour after the watermark, oldest first, each in its own
transaction with the watermark, so a run that stops keeps its progress. The first run starts at
the first job's hour (a platform upgraded with a long history catches up once).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

HOUR = timedelta(hours=1)


def roll_queue_hours(conn: psycopg.Connection, closable: datetime) -> int:
    """Write every hour before ``closable`` not yet written; return how many were written."""
    row = conn.execute("SELECT watermark FROM rollup_queue_state").fetchone()
    if row is None:
        first = conn.execute("SELECT min(submitted_at) FROM jobs").fetchone()
        if first is None or first[0] is None:
            return 0
        hour = first[0].replace(minute=0, second=0, microsecond=0)
        conn.execute("INSERT INTO rollup_queue_state (watermark) VALUES (%s)", (hour,))
    else:
        hour = row[0]
    written = 0
    while hour < closable:
        with conn.transaction():
            conn.execute("SELECT roll_queue_hour(%s)", (hour,))
            conn.execute("UPDATE rollup_queue_state SET watermark = %s", (hour + HOUR,))
        hour += HOUR
        written += 1
    return written
