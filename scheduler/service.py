"""The placement cycle as a background job of a platform process (APScheduler).

The cycle runs every ``cycle_every_s`` and again at once when a job is submitted. Triggers that
arrive while a cycle runs are folded into one more cycle after it (cycles start at least
``min_cycle_gap_s`` apart), so a burst of submits costs a few cycles, not one each. Several
platform processes may run cycles at the same time: the commit is safe against that
(``scheduler.cycle``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from jinsuan.platform import Platform
from scheduler.config import SchedulerConfig
from scheduler.cycle import CycleResult, run_cycle
from scheduler.snapshot import InventoryCache

log = logging.getLogger(__name__)

_JOB_ID = "placement-cycle"


class SchedulerService:
    def __init__(self, platform: Platform, cfg: SchedulerConfig | None = None) -> None:
        self.platform = platform
        self.cfg = cfg or SchedulerConfig()
        self.inventory = InventoryCache(self.cfg.inventory_max_age_s)
        self._jobs: BackgroundScheduler | None = None
        self._lock = threading.Lock()
        self._running = False
        self._again = False

    def run_once(self, now: datetime | None = None) -> CycleResult:
        with self.platform.db.pool.connection() as conn:
            return run_cycle(conn, self.cfg, now, self.inventory)

    def _tick(self) -> None:
        with self._lock:
            if self._running:
                self._again = True
                return
            self._running = True
        try:
            while True:
                began = time.monotonic()
                try:
                    result = self.run_once()
                    if result.placed or result.expired:
                        log.info("placement cycle: %s", result)
                except Exception:
                    log.exception("placement cycle failed")
                with self._lock:
                    if not self._again:
                        self._running = False
                        return
                    self._again = False
                # Triggers came during the cycle: one more, but not sooner than the gap.
                time.sleep(max(self.cfg.min_cycle_gap_s - (time.monotonic() - began), 0))
        finally:
            with self._lock:
                self._running = False

    def trigger(self) -> None:
        """Ask for a cycle now (after a submit); a no-op when no background job runs."""
        if self._jobs is None:
            return
        with self._lock:
            if self._running:
                self._again = True
                return
        self._jobs.modify_job(_JOB_ID, next_run_time=datetime.now(UTC))

    def start(self) -> BackgroundScheduler:
        jobs = BackgroundScheduler(timezone=UTC)
        jobs.add_job(self._tick, "interval", seconds=self.cfg.cycle_every_s, id=_JOB_ID,
                     max_instances=2, coalesce=True, next_run_time=datetime.now(UTC))
        jobs.start()
        self._jobs = jobs
        return jobs


def service_for(platform: Platform) -> SchedulerService:
    """The platform's one scheduler service, shared by the routes and the background job."""
    service = getattr(platform, "_scheduler_service", None)
    if service is None:
        service = SchedulerService(platform)
        platform._scheduler_service = service  # type: ignore[attr-defined]
    return service


def start_scheduler(platform: Platform) -> BackgroundScheduler:
    """Start the placement cycle in the background; ``.shutdown(wait=True)`` it at exit."""
    return service_for(platform).start()
