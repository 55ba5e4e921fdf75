"""Wake held lease requests when runs are placed at their site (the lease protocol's long poll).

A placement cycle that commits runs sends ``NOTIFY jinsuan_placed`` with the sites it placed on,
inside its transaction, so PostgreSQL delivers it at commit and to every platform process: an
agent holding a lease request at process A hears of work that a cycle in process B placed. Each
process has one listening connection (:class:`PlacementListener`) that bumps a per-site
generation in :class:`SiteWakeups`; a held request remembers the generation it saw before it
looked for work, and waits until that changes or its time is up. Were the listening connection
to break, held requests still end at their timeout, so an agent never waits longer than it asked.

The listening connection needs a session of its own: through a pooler in transaction mode its
LISTEN would stay on a server connection that nobody reads. It connects to ``Database.url``,
straight to PostgreSQL (``JINSUAN_DIRECT_DATABASE_URL``); the NOTIFY may go through the pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "jinsuan_placed"
_ALL = ""  # the payload that wakes every site
_MAX_PAYLOAD = 7000  # PostgreSQL refuses payloads of 8000 bytes or more


def notify_placed(conn: psycopg.Connection, site_ids: Iterable[int]) -> None:
    """Tell every platform process that runs were placed at ``site_ids`` (at commit)."""
    payload = ",".join(str(s) for s in sorted(set(site_ids)))
    if len(payload) > _MAX_PAYLOAD:
        payload = _ALL
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


class SiteWakeups:
    """A generation per site, bumped when runs are placed there; held requests wait on it.

    ``bump`` is called from any thread; ``wait`` runs on an event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = 0  # bumped for every site at once
        self._generations: dict[int, int] = {}
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}

    def generation(self, site_id: int) -> tuple[int, int]:
        with self._lock:
            return self._epoch, self._generations.get(site_id, 0)

    def bump(self, site_ids: Iterable[int] | None) -> None:
        """Runs were placed at ``site_ids`` (None: possibly at any site)."""
        with self._lock:
            if site_ids is None:
                self._epoch += 1
                woken = [f for waiters in self._waiters.values() for f in waiters]
            else:
                woken = []
                for site_id in site_ids:
                    self._generations[site_id] = self._generations.get(site_id, 0) + 1
                    woken.extend(self._waiters.get(site_id, ()))
        for future in woken:
            with contextlib.suppress(RuntimeError):  # its event loop closed: nobody waits
                future.get_loop().call_soon_threadsafe(_resolve, future)

    async def wait(self, site_id: int, seen: tuple[int, int], timeout: float) -> bool:
        """Wait until the site's generation differs from ``seen``; False when time ran out."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if (self._epoch, self._generations.get(site_id, 0)) != seen:
                return True
            self._waiters.setdefault(site_id, set()).add(future)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiters = self._waiters.get(site_id)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiters[site_id]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class PlacementListener:
    """One connection per platform process that LISTENs and feeds :class:`SiteWakeups`;
    ``url`` must reach a PostgreSQL session of its own, not a transaction pooler."""

    def __init__(self, url: str, wakeups: SiteWakeups, retry_s: float = 1.0) -> None:
        self.url = url
        self.wakeups = wakeups
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def ensure_started(self, timeout: float = 5.0) -> None:
        """Start listening (once) and return when LISTEN is in place, or after ``timeout``."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="placement-listener",
                                                daemon=True)
                self._thread.start()
        self._listening.wait(timeout)

    def stop(self) -> None:
        """Stop listening (held requests then end at their timeout); ``ensure_started`` again
        starts anew."""
        with self._start_lock:
            if self._thread is None:
                return
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            self._stop.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    self.wakeups.bump(None)  # anything sent while not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.wakeups.bump(_sites(note.payload))
            except psycopg.Error as exc:
                log.warning("placement listener: %s; again in %.0f s", exc, self.retry_s)
                self._stop.wait(self.retry_s)
            finally:
                self._listening.clear()


def _sites(payload: str) -> list[int] | None:
    return None if payload == _ALL else [int(s) for s in payload.split(",")]
