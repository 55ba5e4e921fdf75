"""The placement cycle as a background loop of a platform process, and its lease wake-ups.

One thread runs cycles, one at a time: every ``cycle_every_s``, and sooner when triggered. A
trigger (a submit, a run that ended) only sets a flag; triggers that arrive while a cycle runs
are folded into one more cycle after it, started at least ``min_cycle_gap_s`` after the last
began. So a submit never waits for a cycle, and a burst of submits costs a few cycles, not one
each.

Several platform processes take turns: a cycle runs under a session advisory lock on a
connection of the loop's own (straight to PostgreSQL, past any pooler), and a process that finds
it held keeps its trigger and tries again after the gap. Running at the same time would be safe
(the commit re-checks capacity under row locks, ``scheduler.cycle``) but wasteful: each process
would read the whole snapshot and most of its placements would be refused at the other's commit
(measured: 1.55x the platform CPU per submit with two processes, ``bench/scheduler.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

import psycopg

from jinsuan.kernel.platform import Platform
from scheduler.config import SchedulerConfig
from scheduler.cycle import CycleResult, run_cycle
from scheduler.leasedesk import LeaseDesk
from scheduler.snapshot import InventoryCache
from scheduler.submits import SubmitWriter
from scheduler.wakeups import PlacementListener, SiteWakeups

log = logging.getLogger(__name__)

CYCLE_LOCK = 0x6A73_6379_636C  # "jscycl": one placement cycle at a time across processes


class SchedulerService:
    def __init__(self, platform: Platform, cfg: SchedulerConfig | None = None) -> None:
        self.platform = platform
        self.cfg = cfg or SchedulerConfig()
        self.inventory = InventoryCache(self.cfg.inventory_max_age_s)
        self.wakeups = SiteWakeups()
        self.listener = PlacementListener(platform.db.url, self.wakeups)
        self.submits = SubmitWriter(platform.db.pool, self.trigger)
        self.desk = LeaseDesk(platform.db.pool, self.cfg)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> CycleResult:
        with self.platform.db.pool.connection() as conn:
            return run_cycle(conn, self.cfg, now, self.inventory)

    def trigger(self) -> None:
        """Ask for a cycle soon (after a submit); a no-op when no background loop runs."""
        self._wake.set()

    def start(self) -> SchedulerService:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="placement-cycle", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, wait: bool = True) -> None:
        """Stop the loop (after the cycle in flight, if ``wait``), the wake-up listener, the
        submit writer (after writing what is queued) and the lease desk (after answering what
        is queued)."""
        self._stop.set()
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join()
        self._thread = None
        self.listener.stop()
        self.submits.stop()
        self.desk.stop()

    def _loop(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                self._wake.clear()  # a trigger from here on asks for the next cycle
                try:
                    conn = conn if conn is not None and not conn.closed else psycopg.connect(
                        self.platform.db.url, autocommit=True)
                    if not self._cycle_in_turn(conn):
                        self._wake.set()  # another process is placing: after the gap, again
                except psycopg.OperationalError as exc:  # the store went away: a new connection
                    log.warning("placement cycle: %s", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                except Exception:
                    log.exception("placement cycle failed")
                self._wake.wait(max(self.cfg.cycle_every_s - (time.monotonic() - began), 0))
                self._stop.wait(max(self.cfg.min_cycle_gap_s - (time.monotonic() - began), 0))
        finally:
            if conn is not None:
                conn.close()

    def _cycle_in_turn(self, conn: psycopg.Connection) -> bool:
        """Run a cycle unless another process is running one; whether it ran."""
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (CYCLE_LOCK,)).fetchone()[0]:
            return False
        try:
            result = run_cycle(conn, self.cfg, None, self.inventory)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (CYCLE_LOCK,))
        if result.placed or result.expired:
            log.info("placement cycle: %s", result)
        return True


def service_for(platform: Platform) -> SchedulerService:
    """The platform's one scheduler service, shared by the routes and the background loop."""
    service = getattr(platform, "_scheduler_service", None)
    if service is None:
        service = SchedulerService(platform)
        platform._scheduler_service = service  # type: ignore[attr-defined]
    return service

