"""Runs for woken lease requests, handed out for many sites in one transaction.

A placement cycle that places runs at a hundred sites wakes a hundred held lease requests
(``scheduler.wakeups``) at once. Answered one by one, each would take a worker thread, a pooled
connection and a transaction of its own, and the last site would wait for all the others: under
load that queue, not the placement, was most of the time from submit to lease. So the woken
requests go to one desk per platform process (``scheduler.grouped``): a thread takes every
request waiting, leases the placed runs of all their sites in one transaction
(``lease_placed_runs``) and answers each. When requests come one at a time, each is answered at
once.

A woken request was verified, and its held runs renewed, when it arrived; what is left is the
runs placed since, which is all the desk hands out. Should a group fail (a job taken meanwhile
by another process: the group's transaction rolls back), each request is answered again on its
own, so one conflict fails one request, as it would have alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import ConnectionPool

from jinsuan.contract.leasewire import ExecutorKind, Lease
from jinsuan.kernel.agentauth import SignedBy
from scheduler import metrics
from scheduler.config import SchedulerConfig
from scheduler.grouped import GroupWorker, Request, answer_from_thread
from scheduler.leases import lease_placed_runs

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Woken:
    """A held request woken by a placement at its site."""

    agent: SignedBy
    executor: ExecutorKind
    free_slots: int
    received_at: datetime


_Woken = Request[Woken, list[Lease]]


class LeaseDesk(GroupWorker[Woken, list[Lease]]):
    thread_name = "lease-desk"

    def __init__(self, pool: ConnectionPool, cfg: SchedulerConfig,
                 max_group: int = 500) -> None:
        super().__init__(max_group)
        self.pool = pool
        self.cfg = cfg

    async def lease(self, woken: Woken) -> list[Lease]:
        """The runs placed at the request's site, leased to its agent (none: nothing new)."""
        return await self._ask(woken)

    def _serve(self, items: list[_Woken]) -> list[_Woken]:
        """Answer one request per site of ``items``; the others are held over (a site's second
        request goes in the next group, after the first's runs are leased)."""
        group: list[_Woken] = []
        later: list[_Woken] = []
        sites: set[int] = set()
        for item in items:
            site_id = item[0].agent.site_id
            (later if site_id in sites else group).append(item)
            sites.add(site_id)
        try:
            with self.pool.connection() as conn:
                answers = _lease_group(conn, [woken for woken, _ in group], self.cfg)
        except Exception as exc:
            if len(group) == 1:
                answer_from_thread(group[0][1], exc)
                return later
            log.warning("leasing for %d woken requests failed (%s); answering each on its"
                        " own", len(group), exc)
            for item in group:
                self._serve([item])
            return later
        for (_, future), leases in zip(group, answers, strict=True):
            answer_from_thread(future, leases)
        return later


def _lease_group(conn: psycopg.Connection, group: list[Woken], cfg: SchedulerConfig
                 ) -> list[list[Lease]]:
    """Lease the placed runs of every site in ``group`` (one request per site) in one
    transaction: up to each request's free slots, only at sites whose registered executor is
    the one the agent announced, only runs whose placement was still live when it arrived. Each
    agent's recorded free slots shrink by the runs it is handed (``lease_placed_runs``), as
    when its request is answered at once, so the next cycle sends its site no more."""
    now = datetime.now(UTC)
    with conn.pipeline(), conn.transaction():
        rows = conn.execute(
            "SELECT w.i, r.id, r.job_id, r.fencing_token, r.model, j.tasks,"
            " j.accelerators_per_task, j.spec -> 'payload', j.max_runtime_s, j.tenant,"
            " j.project"
            " FROM unnest(%s::int[], %s::bigint[], %s::text[], %s::int[], %s::timestamptz[])"
            "  AS w(i, site_id, executor, slots, received_at)"
            " JOIN sites s ON s.id = w.site_id"
            "  AND (s.executor IS NULL OR s.executor = w.executor)"
            " CROSS JOIN LATERAL (SELECT x.id, x.job_id, x.fencing_token, x.model FROM runs x"
            "  WHERE x.site_id = w.site_id AND x.state = 'placed'"
            "  AND x.lease_expires_at >= w.received_at ORDER BY x.placed_at, x.id"
            "  LIMIT w.slots FOR UPDATE SKIP LOCKED) r"
            " JOIN jobs j ON j.id = r.job_id",
            (list(range(len(group))), [w.agent.site_id for w in group],
             [w.executor.value for w in group], [w.free_slots for w in group],
             [w.received_at for w in group])).fetchall()
        leases = lease_placed_runs(
            conn, [(group[row[0]].agent, row[1:]) for row in rows], now,
            now + timedelta(seconds=cfg.lease_ttl_s))
    answers: list[list[Lease]] = [[] for _ in group]
    for row, lease in zip(rows, leases, strict=True):
        answers[row[0]].append(lease)
    metrics.LEASES.inc(len(leases))
    return answers

