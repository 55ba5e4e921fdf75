"""The platform side of the lease protocol (``jinsuan.contract.leasewire``).

A lease request renews the runs the agent holds, hands it runs placed on its site up to its free
slots, and tells it which held runs to stop. A run event moves a run (and its job) forward, only
under the run's current fencing token and only while the run has not ended, so a site that lost
its lease and comes back cannot record an outcome, and a job ends once.

Time is the platform's: a request is judged as of when it *arrived* (``received_at``, before it
waited for a lease worker), so a held run whose lease was live then is renewed even if it lapsed
while the request queued on a loaded platform, and a renewal lasts ``lease_ttl_s`` from that
arrival: a site's leases never outlive its last request by more than the TTL, however long the
platform took to answer it. Every request, a refused one too, leaves its arrival, the
executor it announced and its free slots in ``agent_leases``, which placement reads
(``scheduler.snapshot``); the slots shrink as runs are leased to the agent, and an older
request answered after a newer one leaves the newer one's slots.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from jinsuan.contract.leasewire import (
    EVENT_STATUS_DUPLICATE,
    EVENT_STATUS_RECORDED,
    STALE_LEASE_CODE,
    EventAck,
    Lease,
    LeaseReply,
    LeaseRequest,
    Payload,
    RunEvent,
    RunEventState,
)
from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.errors import Conflict, NotFound
from scheduler import metrics
from scheduler.bounds import bound_claims, bound_start
from scheduler.config import SchedulerConfig
from scheduler.cycle import expire_run
from scheduler.jobs import move_job, move_run, requeue_or_fail
from scheduler.states import ENDED_RUN_STATES, JobState, RunState, transition
from scheduler.usage import record_usage


class StaleLease(Conflict):
    code = STALE_LEASE_CODE


def handle_lease(conn: psycopg.Connection, agent: SignedBy, request: LeaseRequest,
                 cfg: SchedulerConfig, now: datetime,
                 received_at: datetime | None = None) -> LeaseReply:
    """Answer one lease request in one transaction, as of its arrival ``received_at`` (``now``
    when None); runs handed out are leased at ``now``.

    Agents ask often (a long-polling agent asks again as soon as it has its answer), so the
    statements go in pipeline mode, a set of runs per statement: a request with nothing new
    costs two round trips to the store, one that leases runs three, however many.

    A request from an agent running another executor than the site's registered one is refused
    (409) after its arrival and executor are recorded: placement then sends the site nothing
    until the two agree, and says why.
    """
    received_at = received_at or now
    ttl = timedelta(seconds=cfg.lease_ttl_s)
    renewed: list[str] = []
    cancel: list[str] = []
    lost: list[str] = []
    new: list[Lease] = []
    expired = 0  # held runs whose lease lapsed before this request arrived
    tokens = {h.run_id: h.fencing_token for h in request.held}
    with conn.pipeline(), conn.transaction():
        site = conn.execute(
            "WITH seen AS (INSERT INTO agent_leases (agent_id, executor, last_lease_at,"
            " free_slots) VALUES (%s, %s, %s, %s) ON CONFLICT (agent_id) DO UPDATE SET"
            " executor = EXCLUDED.executor,"
            " last_lease_at = greatest(agent_leases.last_lease_at, EXCLUDED.last_lease_at),"
            " free_slots = CASE WHEN EXCLUDED.last_lease_at >= agent_leases.last_lease_at"
            "  THEN EXCLUDED.free_slots ELSE agent_leases.free_slots END)"
            " SELECT executor FROM sites WHERE id = %s",
            (agent.agent_id, request.executor, received_at, request.free_slots,
             agent.site_id))
        held = conn.execute(
            "SELECT id, job_id, site_id, fencing_token, state, lease_expires_at FROM runs"
            " WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (sorted(tokens),)) if tokens else None
        placed = conn.execute(
            "SELECT r.id, r.job_id, r.fencing_token, r.model, j.tasks, j.accelerators_per_task,"
            " j.spec -> 'payload', j.max_runtime_s, j.tenant, j.project"
            " FROM runs r JOIN jobs j ON j.id = r.job_id"
            " WHERE r.site_id = %s AND r.state = 'placed' AND r.lease_expires_at >= %s"
            " ORDER BY r.placed_at, r.id LIMIT %s FOR UPDATE OF r SKIP LOCKED",
            (agent.site_id, received_at, request.free_slots)) if request.free_slots else None
        executor = site.fetchone()[0]
        refused = executor is not None and executor != request.executor
        if not refused:
            rows = {row[0]: row[1:] for row in held.fetchall()} if held is not None else {}
            for run_id in sorted(tokens):
                row = rows.get(run_id)
                if row is None or row[1] != agent.site_id or row[2] != tokens[run_id]:
                    lost.append(run_id)
                    continue
                job_id, _, _, state, expires = row
                state = RunState(state)
                if state is RunState.CANCELLED:
                    cancel.append(run_id)
                elif state in ENDED_RUN_STATES:
                    lost.append(run_id)
                elif expires < received_at:
                    expire_run(conn, run_id, job_id, state, now, cfg)
                    lost.append(run_id)
                    expired += 1
                else:
                    renewed.append(run_id)
            if renewed:
                conn.execute("UPDATE runs SET lease_expires_at = %s, last_heard_at = %s"
                             " WHERE id = ANY(%s)", (received_at + ttl, received_at, renewed))
            if placed is not None:
                new = lease_placed_runs(conn, [(agent, row) for row in placed.fetchall()],
                                        now, now + ttl)
    metrics.FAILOVERS.inc(expired)  # committed: counted once, never by the cycle too
    if refused:
        metrics.LEASE_REQUESTS.labels("executor_mismatch").inc()
        raise Conflict(f"the site is registered with executor {executor!r}, the agent runs"
                       f" {request.executor.value!r}; placement sends the site nothing until"
                       " they agree", field="executor")
    metrics.LEASE_REQUESTS.labels("ok").inc()
    metrics.LEASES.inc(len(new))
    return LeaseReply(lease_ttl_s=cfg.lease_ttl_s, renewed=renewed, new=new, cancel=cancel,
                      lost=lost)


def lease_placed_runs(conn: psycopg.Connection, picked: list[tuple[SignedBy, tuple]],
                      now: datetime, expires: datetime) -> list[Lease]:
    """Lease placed runs, each to its agent: ``picked`` pairs an agent with a run's row (id,
    job, fencing token, model, tasks, accelerators per task, payload, max run time, tenant,
    project), locked by the caller. Three statements for any number of runs and agents.

    Each agent's recorded free slots (``agent_leases.free_slots``, from its latest request)
    shrink by the runs leased to it, never below 0, so that placement, reading them before the
    agent's next request, sends the site no more than its agents take (an unknown, NULL, stays
    unknown)."""
    if not picked:
        return []
    run_ids = [row[0] for _, row in picked]
    job_ids = [row[1] for _, row in picked]
    agent_ids = [agent.agent_id for agent, _ in picked]
    transition(RunState.PLACED, RunState.LEASED)
    transition(JobState.PLACED, JobState.LEASED)
    conn.execute(  # the agents' slots shrink in the runs' statement: three statements still
        "WITH taken AS (UPDATE agent_leases l SET free_slots = greatest(l.free_slots - t.n, 0)"
        "  FROM (SELECT agent_id, count(*)::int AS n FROM unnest(%s::text[]) AS a(agent_id)"
        "   GROUP BY agent_id) t WHERE l.agent_id = t.agent_id AND l.free_slots IS NOT NULL)"
        " UPDATE runs r SET state = %s, leased_at = %s, lease_expires_at = %s,"
        " agent_id = u.agent_id FROM unnest(%s::text[], %s::text[]) AS u(run_id, agent_id)"
        " WHERE r.id = u.run_id",
        (agent_ids, RunState.LEASED, now, expires, run_ids, agent_ids))
    moved = conn.execute(
        "UPDATE jobs SET state = %s, state_changed_at = %s WHERE id = ANY(%s) AND state = %s"
        " RETURNING id", (JobState.LEASED, now, job_ids, JobState.PLACED))
    conn.execute(
        "INSERT INTO job_transitions (job_id, run_id, from_state, to_state, at, reason)"
        " SELECT u.job_id, u.run_id, %s, %s, %s, 'leased by ' || u.agent_id"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(job_id, run_id, agent_id)",
        (JobState.PLACED, JobState.LEASED, now, job_ids, run_ids, agent_ids))
    stale = len(job_ids) - len(moved.fetchall())
    if stale:
        metrics.LEASE_REQUESTS.labels("conflict").inc()  # the request's transaction rolls back
        raise Conflict(f"{stale} of the jobs leased are no longer placed", field="state")
    return [Lease(run_id=run_id, job_id=job_id, fencing_token=token, tasks=tasks,
                  accelerators_per_task=per_task, accelerator_model=model,
                  payload=Payload.model_validate(payload), max_runtime_s=runtime,
                  tenant=tenant, project=project)
            for _, (run_id, job_id, token, model, tasks, per_task, payload, runtime, tenant,
                    project) in picked]


_END_STATES = {RunEventState.SUCCEEDED: (RunState.SUCCEEDED, JobState.SUCCEEDED),
               RunEventState.FAILED: (RunState.FAILED, JobState.FAILED)}


def handle_event(conn: psycopg.Connection, agent: SignedBy, run_id: str, event: RunEvent,
                 cfg: SchedulerConfig, now: datetime) -> EventAck:
    _refuse_if_lapsed(conn, agent, run_id, event, cfg, now)
    with conn.transaction():
        row = conn.execute(
            "SELECT r.job_id, r.site_id, r.fencing_token, r.state, r.lease_expires_at,"
            " r.exit_code, r.leased_at, r.claimed_started_at, j.max_runtime_s"
            " FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.id = %s FOR UPDATE OF r",
            (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id}", field="run_id")
        (job_id, site_id, token, state, _expires, exit_code, leased_at, claimed_start,
         max_runtime_s) = row
        state = RunState(state)
        if site_id != agent.site_id or token != event.fencing_token:
            raise StaleLease(f"fencing token {event.fencing_token} is not run {run_id}'s"
                             " current lease", field="fencing_token")
        if _is_duplicate(state, exit_code, event):
            return EventAck(status=EVENT_STATUS_DUPLICATE)
        if state in ENDED_RUN_STATES or state is RunState.PLACED:
            raise StaleLease(f"run {run_id} is {state}; it takes no {event.state} report",
                             field="state")
        job_state = JobState(conn.execute("SELECT state FROM jobs WHERE id = %s FOR UPDATE",
                                          (job_id,)).fetchone()[0])
        claimed_start = event.started_at or claimed_start or (
            event.at if event.state is RunEventState.RUNNING else None)
        conn.execute("UPDATE site_lease_health SET silent_losses = 0"
                     " WHERE site_id = %s AND silent_losses > 0", (site_id,))  # it runs things
        if event.state is RunEventState.RUNNING:
            started = bound_start(claimed_start, leased_at=leased_at, received_at=now,
                                  clock_skew_s=cfg.clock_skew_s)
            move_run(conn, run_id, state, RunState.RUNNING, now, started_at=started,
                     claimed_started_at=claimed_start, last_heard_at=now,
                     executor_ref=event.executor_ref)
            move_job(conn, job_id, job_state, JobState.RUNNING, started, run_id=run_id,
                     reason=f"running at {event.executor_ref or agent.agent_id}")
            return EventAck(status=EVENT_STATUS_RECORDED)
        run_end, job_end = _END_STATES[event.state]
        claimed_end = event.ended_at or event.at
        billed = bound_claims(claimed_start=claimed_start, claimed_end=claimed_end,
                              leased_at=leased_at, received_at=now,
                              max_runtime_s=max_runtime_s, runtime_grace_s=cfg.runtime_grace_s,
                              clock_skew_s=cfg.clock_skew_s)
        reason = f"exit code {event.exit_code}" if event.exit_code is not None else event.state
        move_run(conn, run_id, state, run_end, now, started_at=billed.started_at,
                 ended_at=billed.ended_at, claimed_started_at=claimed_start,
                 claimed_ended_at=claimed_end, last_heard_at=now, exit_code=event.exit_code,
                 log_tail=event.log_tail, end_reason=reason, executor_ref=event.executor_ref)
        if job_end is JobState.SUCCEEDED:
            move_job(conn, job_id, job_state, job_end, billed.ended_at, run_id=run_id,
                     ended=True, reason=reason)
        else:
            requeue_or_fail(conn, job_id, job_state, run_id, billed.ended_at, lost=False,
                            reason=f"run {run_id} failed: {reason}", cfg=cfg)
        record_usage(conn, run_id, started_at=billed.started_at, ended_at=billed.ended_at,
                     bounded_by=billed.bounded_by)
    return EventAck(status=EVENT_STATUS_RECORDED)


def _refuse_if_lapsed(conn: psycopg.Connection, agent: SignedBy, run_id: str, event: RunEvent,
                      cfg: SchedulerConfig, now: datetime) -> None:
    """Refuse a report on a run whose lease lapsed, expiring the run first in a transaction of
    its own: the expiry must stand though the report is refused (in the report's transaction
    the refusal would roll it back, leaving it to the next cycle)."""
    with conn.transaction():
        row = conn.execute(
            "SELECT job_id, site_id, fencing_token, state, lease_expires_at FROM runs"
            " WHERE id = %s FOR UPDATE", (run_id,)).fetchone()
        if row is None:
            return  # the report's own transaction says so
        job_id, site_id, token, state, expires = row
        state = RunState(state)
        if (site_id != agent.site_id or token != event.fencing_token or expires >= now
                or state in ENDED_RUN_STATES or state is RunState.PLACED):
            return
        expire_run(conn, run_id, job_id, state, now, cfg)
    metrics.FAILOVERS.inc()
    raise StaleLease(f"the lease of run {run_id} expired at {expires.isoformat()}",
                     field="fencing_token")


def _is_duplicate(state: RunState, exit_code: int | None, event: RunEvent) -> bool:
    """The same report sent again (a retry after a lost reply) is acknowledged, not applied."""
    if event.state is RunEventState.RUNNING:
        return state is RunState.RUNNING
    return state.value == event.state.value and exit_code == event.exit_code
