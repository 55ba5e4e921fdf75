"""The platform's store: a PostgreSQL connection pool with the schema migrated.

Connections are in autocommit mode; code that needs atomicity opens ``conn.transaction()``
explicitly, so a transaction's extent is visible where it matters.

The pool connects to ``DATABASE_URL``, which may be a pooler in transaction mode (PgBouncer);
what needs a session of its own (migrations, LISTEN, session advisory locks) connects to
``Database.url``, straight to PostgreSQL (``JINSUAN_DIRECT_DATABASE_URL``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import embedded
from jinsuan.kernel.store.migrate import Flavour, upgrade
from jinsuan.kernel.store.partitions import Partitions, partitions_for


@dataclass
class Database:
    url: str  # a session of one's own, past any pooler; the pool's URL is ``pool.conninfo``
    pool: ConnectionPool
    flavour: Flavour
    partitions: Partitions
    _embedded: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> Database:
        server = None
        url = settings.database_url
        if not url:
            url, server = embedded.start(settings.data_dir)
        try:
            session_url = settings.direct_database_url or url
            with psycopg.connect(session_url, autocommit=True) as conn:
                flavour = upgrade(conn, want_timescale=settings.use_timescale,
                                  want_citus=settings.use_citus)
            pool = ConnectionPool(
                url,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                kwargs={"autocommit": True, **_statements(settings)},
                # psycopg_pool retries a lost connection 1, 2, 4, 8 ... s apart until this runs
                # out; then the next request starts again, so a promoted standby is found within
                # a second or so, not at the next doubling (docs/ha.md).
                reconnect_timeout=settings.pool_reconnect_s,
                open=True,
                name="jinsuan",
            )
            pool.wait(timeout=30)
        except BaseException:  # the embedded server started here is stopped here
            if server is not None:
                server.cleanup()
            raise
        return cls(session_url, pool, flavour, partitions_for(flavour), server)

    @property
    def timescale(self) -> bool:
        return self.flavour is Flavour.TIMESCALE

    def close(self) -> None:
        self.pool.close()
        if self._embedded is not None:
            self._embedded.cleanup()
            self._embedded = None


def _statements(settings: Settings) -> dict[str, Any]:
    """Behind a transaction pooler no statement is prepared: psycopg prepares one after five
    runs, on the server connection the pooler lent for that transaction, and the next
    transaction may get another ("prepared statement ... does not exist")."""
    return {"prepare_threshold": None} if settings.database_pooler == "transaction" else {}
