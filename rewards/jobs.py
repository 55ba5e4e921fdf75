"""The money room's background work: deciding voucher draws from new usage records, and
expiring vouchers past their validity. Every platform process runs it; each draw and expiry is
its own transaction under the ledger's lock, so two processes never decide one twice."""

from __future__ import annotations

import logging

from apscheduler.schedulers.base import BaseScheduler

from jinsuan.kernel.store import Database
from rewards.vouchers.drawing import draw_pending
from rewards.vouchers.issuing import expire_due

log = logging.getLogger(__name__)

DRAW_EVERY_S = 5.0
"""How soon a finished run's usage draws on its voucher: the demo's story shows it live."""


def voucher_upkeep(db: Database) -> None:
    with db.pool.connection() as conn:
        drawn = draw_pending(conn)
        expired = expire_due(conn)
    if drawn or expired:
        log.info("vouchers: %d usage records drawn, %d vouchers expired", drawn, len(expired))


def schedule(jobs: BaseScheduler, db: Database) -> None:
    """Add the upkeep to the platform's background scheduler."""
    jobs.add_job(voucher_upkeep, "interval", seconds=DRAW_EVERY_S, args=(db,),
                 id="voucher-upkeep", coalesce=True, max_instances=1, misfire_grace_time=None)
