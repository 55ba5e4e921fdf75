"""The platform's store: a PostgreSQL connection pool with the schema migrated.

Connections are in autocommit mode; code that needs atomicity opens ``conn.transaction()``
explicitly, so a transaction's extent is visible where it matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import embedded
from jinsuan.kernel.store.migrate import migrate
from jinsuan.kernel.store.partitions import Partitions


@dataclass
class Database:
    url: str
    pool: ConnectionPool
    timescale: bool
    partitions: Partitions
    _embedded: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> Database:
        server = None
        url = settings.database_url
        if not url:
            url, server = embedded.start(settings.data_dir)
        with psycopg.connect(url, autocommit=True) as conn:
            timescale = migrate(conn, want_timescale=settings.use_timescale)
        pool = ConnectionPool(
            url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            kwargs={"autocommit": True},
            open=True,
            name="jinsuan",
        )
        pool.wait(timeout=30)
        return cls(url, pool, timescale, Partitions(timescale), server)

    def close(self) -> None:
        self.pool.close()
        if self._embedded is not None:
            self._embedded.cleanup()
            self._embedded = None
