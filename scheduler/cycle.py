"""The placement cycle: expire lost leases, snapshot, decide, commit — the acting half.

**No overcommit, even with several platform processes.** Deciding happens outside any lock, on a
snapshot that may be stale by the time it is committed. The commit therefore takes a row lock on
every site it places on (in site-id order, so two cycles cannot deadlock), then re-reads what
the live runs hold at those sites — after the lock, so it sees every run a concurrent cycle
committed — and keeps a placement only if the pool still has room. It then locks the job rows
(in id order) and keeps only those still queued, so a job placed by another process at the same
time is skipped. Everything a cycle places is committed in one transaction, or nothing is.
Reservations are written with ``ON CONFLICT``, in key order: two cycles holding the same pool
for a gang at once update one row, and neither loses its cycle to the pool's unique key.

**Slots are not re-checked at commit.** Placement sends a site no more runs than its agents take
(their free slots, ``scheduler.placement``), but the commit re-checks only accelerators. A run
placed beyond the slots, by a lease request in flight while the cycle decided or by two cycles at
once, costs no accelerator that is not there: it waits, placed, for the agent's next request, or
its lease lapses and it is placed again. Re-checking would lock and re-read every agent's row in
the cycle's commit, on the path lease requests take too, to spare that wait.

**Lost runs say why.** A run whose lease lapsed is lost and its job re-queued with the reason
the platform can see: the site's agent announcing another executor than the registered one, or
when it last asked for work. A run lost without a single event from its site counts towards the
site's back-off (``site_lease_health``, read by placement).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from scheduler import metrics
from scheduler.config import SchedulerConfig
from scheduler.jobs import move_run, new_run_id, requeue_or_fail
from scheduler.placement import Decisions, Placement, Snapshot, place
from scheduler.snapshot import InventoryCache, load_snapshot
from scheduler.states import JobState, RunState, transition
from scheduler.usage import record_unreported_end
from scheduler.wakeups import notify_placed


@dataclass(frozen=True, slots=True)
class CycleResult:
    placed: int
    dropped: int  # decided but refused at commit (capacity or the job taken meanwhile)
    expired: int
    queued: int
    seconds: float


def expire_leases(conn: psycopg.Connection, now: datetime, cfg: SchedulerConfig,
                  *, site_id: int | None = None) -> int:
    """Runs whose lease lapsed are lost; their jobs go back to the queue (the try was counted
    when the run was placed). Returns how many runs expired."""
    expired = 0
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, job_id, state FROM runs WHERE state IN ('placed', 'leased', 'running')"
            " AND lease_expires_at < %s AND (%s::bigint IS NULL OR site_id = %s)"
            " ORDER BY site_id, job_id FOR UPDATE SKIP LOCKED",  # sites' health rows in order
            (now, site_id, site_id),
        ).fetchall()
        for run_id, job_id, state in rows:
            expire_run(conn, run_id, job_id, RunState(state), now, cfg)
            expired += 1
    metrics.FAILOVERS.inc(expired)
    return expired


def expire_run(conn: psycopg.Connection, run_id: str, job_id: str, state: RunState,
               now: datetime, cfg: SchedulerConfig) -> None:
    """Mark a locked live run lost, meter what it held, count it against its site when the site
    never said a word about it, and re-queue its job if the run is still the job's."""
    why = _loss_reason(conn, run_id)
    move_run(conn, run_id, state, RunState.LOST, now, ended_at=now,
             end_reason=f"lease expired: {why}")
    record_unreported_end(conn, run_id, "lease expired")
    conn.execute(
        "INSERT INTO site_lease_health (site_id, silent_losses, last_loss_at)"
        " SELECT site_id, 1, %s FROM runs WHERE id = %s AND started_at IS NULL"
        " ON CONFLICT (site_id) DO UPDATE SET silent_losses = site_lease_health.silent_losses + 1,"
        " last_loss_at = EXCLUDED.last_loss_at",
        (now, run_id))
    job = conn.execute("SELECT state, current_run_id FROM jobs WHERE id = %s FOR UPDATE",
                       (job_id,)).fetchone()
    if job[1] == run_id and JobState(job[0]) in (JobState.PLACED, JobState.LEASED,
                                                 JobState.RUNNING):
        requeue_or_fail(conn, job_id, JobState(job[0]), run_id, now, lost=True,
                        reason=f"lease of {run_id} expired: {why}", cfg=cfg)


def _loss_reason(conn: psycopg.Connection, run_id: str) -> str:
    """What the platform knows of why a run's site let its lease lapse, from the site's latest
    lease request (``agent_leases``)."""
    registered, announced, asked = conn.execute(
        "SELECT s.executor, l.executor, l.last_lease_at"
        " FROM runs r JOIN sites s ON s.id = r.site_id"
        " LEFT JOIN LATERAL (SELECT x.executor, x.last_lease_at FROM agent_leases x"
        "  JOIN agents g ON g.id = x.agent_id WHERE g.site_id = r.site_id"
        "  AND g.revoked_at IS NULL ORDER BY x.last_lease_at DESC LIMIT 1) l ON true"
        " WHERE r.id = %s", (run_id,)).fetchone()
    if asked is None:
        return "the site's agent never asked for work"
    if registered is None:
        return "the site has no executor registered any more"
    if announced != registered:
        return (f"the site's agent runs the {announced} executor, the site is registered with"
                f" {registered}; its lease requests are refused")
    return f"the site's agent last asked for work at {asked:%Y-%m-%d %H:%M:%S} UTC"


def commit_decisions(conn: psycopg.Connection, snapshot: Snapshot, decisions: Decisions,
                     cfg: SchedulerConfig, now: datetime) -> list[Placement]:
    """Commit placements in one transaction, re-checking capacity under site locks."""
    healthy = {(s.id, model): pool.healthy for s in snapshot.sites
               for model, pool in s.pools.items()}
    transition(JobState.QUEUED, JobState.PLACED)  # the only move a cycle makes
    # In pipeline mode: the locks and reads go in one round trip, the writes and the commit
    # in another, however many placements (a cycle under load waits on round trips, not SQL).
    with conn.pipeline(), conn.transaction():
        site_ids = sorted({p.site_id for p in decisions.placements})
        conn.execute("SELECT id FROM sites WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                     (site_ids,))
        held = {
            (site_id, model): int(n)
            for site_id, model, n in conn.execute(
                "SELECT site_id, model, sum(accelerators) FROM runs WHERE site_id = ANY(%s)"
                " AND state IN ('placed', 'leased', 'running') GROUP BY site_id, model",
                (site_ids,))
        }
        wanted = sorted(p.job_id for p in decisions.placements)
        queued = {
            row[0] for row in conn.execute(
                "SELECT id FROM jobs WHERE id = ANY(%s) AND state = 'queued'"
                " ORDER BY id FOR UPDATE", (wanted,))
        }
        kept: list[Placement] = []
        for p in decisions.placements:
            key = (p.site_id, p.model)
            if p.job_id not in queued or held.get(key, 0) + p.accelerators > healthy.get(key, 0):
                continue
            held[key] = held.get(key, 0) + p.accelerators
            kept.append(p)
        _insert_runs(conn, kept, now, cfg)
        if kept:
            notify_placed(conn, (p.site_id for p in kept))  # wakes held lease requests
        conn.execute("DELETE FROM pool_reservations")
        if decisions.reservations:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO pool_reservations (site_id, model, job_id, expected_start,"
                    " made_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (site_id, model) DO"
                    " UPDATE SET job_id = EXCLUDED.job_id, expected_start ="
                    " EXCLUDED.expected_start, made_at = EXCLUDED.made_at",
                    [(r.site_id, r.model, r.job_id, r.expected_start, now)
                     for r in sorted(decisions.reservations,
                                     key=lambda r: (r.site_id, r.model))])
    metrics.PLACEMENTS.inc(len(kept))
    metrics.REFUSED_AT_COMMIT.inc(len(decisions.placements) - len(kept))
    return kept


def _insert_runs(conn: psycopg.Connection, kept: list[Placement], now: datetime,
                 cfg: SchedulerConfig) -> None:
    if not kept:
        return
    run_ids = [new_run_id() for _ in kept]
    job_ids = [p.job_id for p in kept]
    expires = now + timedelta(seconds=cfg.lease_ttl_s)
    conn.execute(
        "UPDATE jobs j SET state = 'placed', state_changed_at = %s, tries = j.tries + 1,"
        " current_run_id = u.run_id FROM unnest(%s::text[], %s::text[]) AS u(job_id, run_id)"
        " WHERE j.id = u.job_id",
        (now, job_ids, run_ids),
    )
    conn.execute(
        "INSERT INTO runs (id, job_id, attempt, site_id, model, accelerators, fencing_token,"
        " state, lease_expires_at, placed_at, tenant, submitted_at)"
        " SELECT u.run_id, u.job_id, j.tries, u.site_id, u.model, u.n, nextval('fencing_tokens'),"
        " 'placed', %s, %s, j.tenant, j.submitted_at"
        " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::int[])"
        "  AS u(run_id, job_id, site_id, model, n) JOIN jobs j ON j.id = u.job_id",
        (expires, now, run_ids, job_ids, [p.site_id for p in kept], [p.model for p in kept],
         [p.accelerators for p in kept]),
    )
    conn.execute(
        "INSERT INTO job_transitions (job_id, run_id, from_state, to_state, at, reason)"
        " SELECT u.job_id, u.run_id, 'queued', 'placed', %s, 'placed at ' || s.name"
        " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS u(job_id, run_id, site_id)"
        " JOIN sites s ON s.id = u.site_id",
        (now, job_ids, run_ids, [p.site_id for p in kept]),
    )


def run_cycle(conn: psycopg.Connection, cfg: SchedulerConfig, now: datetime | None = None,
              inventory: InventoryCache | None = None) -> CycleResult:
    """One cycle at ``now`` (the clock when None; then runs are stamped placed at the commit, not
    at the snapshot: a job submitted while the snapshot was read is never placed before it was
    submitted)."""
    started = time.perf_counter()
    live_clock = now is None
    now = now or datetime.now(UTC)
    expired = expire_leases(conn, now, cfg)
    snapshot = load_snapshot(conn, cfg, now, inventory)
    decisions = place(snapshot, cfg)
    kept = commit_decisions(conn, snapshot, decisions, cfg,
                            datetime.now(UTC) if live_clock else now)
    metrics.CYCLE_SECONDS.observe(time.perf_counter() - started)
    return CycleResult(len(kept), len(decisions.placements) - len(kept), expired,
                       len(snapshot.jobs), time.perf_counter() - started)
