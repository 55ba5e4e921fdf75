"""How a request gets a pooled connection without ever stalling the platform.

FastAPI runs a synchronous dependency, and a synchronous route, in one bounded pool of worker
threads. When a dependency waited there for a pooled connection, fifty concurrent requests
filled every worker thread with waiters, and the few requests holding connections then had no
thread left to run their route on: the platform stood still until the pool's 30 s timeout
(``tests/test_no_stall.py``). So:

- a request waits for its turn on the event loop, not in a thread, behind a limiter with as
  many places as the pool has connections for requests;
- a request that cannot have one within ``wait_s`` gets a fast ``503`` with ``Retry-After``;
- only a request holding a place takes a connection (in a worker thread, briefly), so worker
  threads never fill up with waiters, and what holds a connection can always run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool

from jinsuan.kernel.errors import Unavailable

RETRY_AFTER_S = 1


class ConnectionGate:
    """Hands out the pool's connections to requests, ``places`` at a time."""

    def __init__(self, pool: ConnectionPool, places: int, wait_s: float) -> None:
        self.pool = pool
        self.limiter = anyio.CapacityLimiter(max(1, places))
        self.wait_s = wait_s

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.Connection]:
        # The place is held on behalf of this use, not of the task: a dependency's teardown
        # need not run in the task that set it up.
        holder = object()
        with anyio.move_on_after(self.wait_s) as waited:
            await self.limiter.acquire_on_behalf_of(holder)
        if waited.cancelled_caught:
            raise Unavailable("the platform is busy; retry shortly", retry_after_s=RETRY_AFTER_S)
        try:
            try:
                conn = await run_in_threadpool(self.pool.getconn, self.wait_s)
            except PoolTimeout:
                raise Unavailable("the store is busy; retry shortly",
                                  retry_after_s=RETRY_AFTER_S) from None
            try:
                yield conn
            finally:
                await run_in_threadpool(self.pool.putconn, conn)
        finally:
            self.limiter.release_on_behalf_of(holder)
