"""The platform's background jobs: hourly rollups, the upkeep of raw-sample partitions (and
the retention of the report bodies that carried the samples), the recompression of aged report
bodies, and the ledger's signed checkpoints.

Every platform process runs them; the rollup takes a PostgreSQL advisory lock so that only
one process computes at a time (the others skip that tick), and partition upkeep is
idempotent and serialised by its own lock in :mod:`jinsuan.kernel.store.partitions`.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from collectors import federation
from collectors.evidence import drop_expired_bodies, recompress_bodies
from collectors.rollup import run_rollups
from jinsuan.kernel import ledger
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database

log = logging.getLogger(__name__)

PARTITIONS_AHEAD_DAYS = 2


class BackgroundJobs(BackgroundScheduler):
    """A scheduler that also tells a running rollup to stop between two hours at shutdown,
    so that ``shutdown(wait=True)`` does not wait for a long catch-up to finish (each hour
    is committed on its own; the next start carries on from the watermark)."""

    def __init__(self) -> None:
        super().__init__(timezone=UTC)
        self.stopping = threading.Event()

    def shutdown(self, wait: bool = True) -> None:
        self.stopping.set()
        super().shutdown(wait=wait)


def maintain_partitions(db: Database, retention_days: int, today: datetime | None = None) -> None:
    """Create today's and the next days' sample partitions; drop those past retention, and the
    report bodies whose samples they held."""
    day = (today or datetime.now(UTC)).date()
    # A connection of its own, past any transaction pooler: Citus's columnar conversion holds
    # a session lock (jinsuan.kernel.store.partitions).
    with psycopg.connect(db.url, autocommit=True) as conn:
        db.partitions.ensure(conn, [day + timedelta(days=d)
                                    for d in range(PARTITIONS_AHEAD_DAYS + 1)])
        dropped = db.partitions.apply_retention(conn, retention_days, day)
        bodies = drop_expired_bodies(conn, retention_days, day)
    if dropped:
        log.info("retention: dropped raw-sample partitions %s", ", ".join(dropped))
    if bodies:
        log.info("retention: dropped %d report bodies", bodies)


def recompress_evidence(db: Database, settings: Settings, today: datetime | None = None,
                        most: int = 100_000) -> int:
    """Rewrite the report bodies past ``evidence_recompress_after_days`` as xz, a group at a
    time, at most ``most`` per run (the rest next hour); return how many."""
    older_than = (today or datetime.now(UTC)) - timedelta(
        days=settings.evidence_recompress_after_days)
    done = before = after = 0
    with db.pool.connection() as conn:
        while done < most:
            group = recompress_bodies(conn, settings, older_than)
            if not group.bodies:
                break
            done, before, after = (done + group.bodies, before + group.bytes_before,
                                   after + group.bytes_after)
    if done:
        log.info("evidence: %d report bodies recompressed as xz, %d -> %d bytes", done,
                 before, after)
    return done


def checkpoint_ledger(db: Database, settings: Settings) -> None:
    """Sign the ledger's head when entries were added since the last checkpoint."""
    with db.pool.connection() as conn:
        head, signed = conn.execute(
            "SELECT seq, (SELECT max(seq) FROM ledger_checkpoints) FROM ledger_head").fetchone()
        if signed is None or head > signed:
            done = ledger.checkpoint(conn, ledger.signing_key(settings.ledger_key_path()))
            log.info("ledger: signed the head at entry %d", done["seq"])


def start_background_jobs(platform: Platform) -> BackgroundScheduler:
    """Start the rollup (every ``rollup_every_s``) and partition upkeep (hourly), both also
    run right away, evidence recompression (hourly, from five minutes after start) and ledger
    checkpoints (every ``ledger_checkpoint_every_s``).
    Call ``.shutdown(wait=True)`` on the result at exit."""
    settings, db = platform.settings, platform.db
    jobs = BackgroundJobs()
    now = datetime.now(UTC)
    jobs.add_job(
        maintain_partitions,
        "interval",
        hours=1,
        args=(db, settings.retention_days),
        id="partitions",
        next_run_time=now,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    jobs.add_job(
        run_rollups,
        "interval",
        seconds=settings.rollup_every_s,
        args=(db, settings),
        kwargs={"stop": jobs.stopping},
        id="rollup",
        next_run_time=now,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    jobs.add_job(
        recompress_evidence,
        "interval",
        hours=1,
        args=(db, settings),
        id="evidence-recompress",
        next_run_time=now + timedelta(minutes=5),
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    jobs.add_job(
        checkpoint_ledger,
        "interval",
        seconds=settings.ledger_checkpoint_every_s,
        args=(db, settings),
        id="ledger-checkpoint",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    federation.schedule(jobs, platform)
    jobs.start()
    return jobs
