"""Jobs and runs in the store: submit, move between states, cancel, read back.

Every state change goes through :func:`move_job` / :func:`move_run`, which check the transition
table, update the row only if it is still in the expected state, and keep the time of the move.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel

from jinsuan.kernel.errors import Conflict, NotFound
from scheduler.config import SchedulerConfig
from scheduler.feasibility import Obstacle
from scheduler.spec import JobSpec
from scheduler.states import JobState, RunState, transition
from scheduler.usage import record_unreported_end


def new_job_id() -> str:
    return "job_" + secrets.token_hex(8)


def keyed_job_id(tenant: str, idempotency_key: str) -> str:
    """The id of the job ``tenant`` submits under ``idempotency_key``: the same for every
    resend, in every platform process, so the store's key on ids keeps it one job."""
    digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()
    return "job_" + digest[:16]


def stored_spec(spec: JobSpec, tenant: str) -> dict[str, Any]:
    """The spec as a job row keeps it (``jobs.spec``): what a resend is compared with."""
    return spec.model_copy(update={"tenant": tenant}).model_dump(mode="json")


def new_run_id() -> str:
    return "run_" + secrets.token_hex(8)


def stored_specs(conn: psycopg.Connection, ids: list[str]
                 ) -> dict[str, tuple[dict[str, Any], JobState]]:
    """The specs (as :func:`stored_spec` gives them) and states of the jobs stored under
    ``ids``."""
    return {job_id: (spec, JobState(state)) for job_id, spec, state in conn.execute(
        "SELECT id, spec, state FROM jobs WHERE id = ANY(%s)", (ids,))}


def submit_job(conn: psycopg.Connection, spec: JobSpec, tenant: str, now: datetime) -> str:
    """Queue a job for ``tenant``; return its id."""
    return submit_jobs(conn, [(spec, tenant, now)])[0]


def submit_jobs(conn: psycopg.Connection, jobs: list[tuple[JobSpec, str, datetime]],
                ids: list[str] | None = None) -> list[str]:
    """Queue jobs, each ``(spec, tenant, submitted at)``; return their ids in order.

    All of them, with their first transitions, are written by one statement: one round trip,
    atomic on its own. Submits come hundreds a second and are written in groups
    (``scheduler.submits``); the group travels as one JSON document, which costs far less to
    encode than a dozen array parameters.

    Written again with the same ``ids`` (a group whose answer was lost: committed or not, or a
    dispatcher's resend under the same idempotency key, :func:`keyed_job_id`), it stores only
    the jobs not stored yet: a job is never stored twice.
    """
    ids = ids or [new_job_id() for _ in jobs]
    rows = [
        {"id": job_id, "tenant": tenant, "project": spec.project, "name": spec.name,
         "spec": stored_spec(spec, tenant),
         "constraints": spec.constraints_key(), "tasks": spec.tasks,
         "per_task": spec.accelerators_per_task, "priority": spec.priority,
         "max_runtime_s": spec.max_runtime_s, "retries": spec.retries, "at": at.isoformat()}
        for job_id, (spec, tenant, at) in zip(ids, jobs, strict=True)
    ]
    conn.execute(
        "WITH job AS (INSERT INTO jobs (id, tenant, project, name, spec, constraints, tasks,"
        " accelerators_per_task, priority, max_runtime_s, retries, state, submitted_at,"
        " state_changed_at)"
        " SELECT u.id, u.tenant, u.project, u.name, u.spec, u.constraints, u.tasks,"
        " u.per_task, u.priority, u.max_runtime_s, u.retries, %s, u.at, u.at"
        " FROM jsonb_to_recordset(%s::jsonb) AS u(id text, tenant text, project text,"
        " name text, spec jsonb, constraints text, tasks int, per_task int, priority int,"
        " max_runtime_s int, retries int, at timestamptz)"
        " ON CONFLICT (id) DO NOTHING RETURNING id, submitted_at)"
        " INSERT INTO job_transitions (job_id, run_id, from_state, to_state, at, reason)"
        " SELECT id, NULL, NULL, %s, submitted_at, 'submitted' FROM job",
        (JobState.QUEUED, json.dumps(rows), JobState.QUEUED),
    )
    return ids


def record_transition(conn: psycopg.Connection, job_id: str, run_id: str | None,
                      from_state: JobState | None, to_state: JobState, at: datetime,
                      reason: str) -> None:
    conn.execute(
        "INSERT INTO job_transitions (job_id, run_id, from_state, to_state, at, reason)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (job_id, run_id, from_state, to_state, at, reason),
    )


def move_job(conn: psycopg.Connection, job_id: str, current: JobState, target: JobState,
             at: datetime, *, run_id: str | None = None, reason: str = "",
             ended: bool = False) -> None:
    """Move a job from ``current`` (which the caller has read under a row lock) to ``target``."""
    transition(current, target)
    moved = conn.execute(
        "UPDATE jobs SET state = %s, state_changed_at = %s,"
        " ended_at = CASE WHEN %s THEN %s ELSE ended_at END,"
        " end_reason = CASE WHEN %s THEN %s ELSE end_reason END"
        " WHERE id = %s AND state = %s RETURNING id",  # a row, not rowcount: pipeline mode too
        (target, at, ended, at, ended, reason or None, job_id, current),
    ).fetchone()
    if moved is None:
        raise Conflict(f"job {job_id} is no longer {current}", field="state")
    record_transition(conn, job_id, run_id, current, target, at, reason)


def move_run(conn: psycopg.Connection, run_id: str, current: RunState, target: RunState,
             at: datetime, **columns: Any) -> None:
    """Move a run and set ``columns`` (e.g. ``leased_at``) in the same statement."""
    transition(current, target)
    sets = "".join(f", {name} = %s" for name in columns)
    moved = conn.execute(
        f"UPDATE runs SET state = %s{sets} WHERE id = %s AND state = %s RETURNING id",
        (target, *columns.values(), run_id, current),
    ).fetchone()  # a row, not rowcount, which pipeline mode (scheduler.leases) leaves unknown
    if moved is None:
        raise Conflict(f"run {run_id} is no longer {current}", field="state")


def requeue_or_fail(conn: psycopg.Connection, job_id: str, current: JobState, run_id: str,
                    at: datetime, *, lost: bool, reason: str, cfg: SchedulerConfig) -> JobState:
    """After a run failed or lost its lease: queue the job again while tries remain."""
    tries, retries = conn.execute(
        "SELECT tries, retries FROM jobs WHERE id = %s", (job_id,)).fetchone()
    if lost:
        allowed = 1 + retries + cfg.lost_lease_allowance
        if tries < allowed:
            move_job(conn, job_id, current, JobState.QUEUED, at, run_id=run_id, reason=reason)
            return JobState.QUEUED
        move_job(conn, job_id, current, JobState.FAILED, at, run_id=run_id, ended=True,
                 reason=f"{reason}; no tries left ({tries} of {allowed})")
        return JobState.FAILED
    move_job(conn, job_id, current, JobState.FAILED, at, run_id=run_id, reason=reason,
             ended=tries > retries)
    if tries <= retries:
        move_job(conn, job_id, JobState.FAILED, JobState.QUEUED, at, run_id=run_id,
                 reason=f"retry {tries} of {retries}")
        return JobState.QUEUED
    return JobState.FAILED


def lock_job(conn: psycopg.Connection, job_id: str) -> tuple[JobState, str, str | None]:
    """Lock a job row; return its state, tenant and current run."""
    row = conn.execute("SELECT state, tenant, current_run_id FROM jobs WHERE id = %s FOR UPDATE",
                       (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"no job {job_id}", field="job")
    return JobState(row[0]), row[1], row[2]


def cancel_job(conn: psycopg.Connection, job_id: str, at: datetime,
               tenant: str | None = None) -> JobState:
    """Cancel a job (and its live run, which the agent then sees in ``cancel``)."""
    with conn.transaction():
        state, owner, run_id = lock_job(conn, job_id)
        if tenant is not None and owner != tenant:
            raise NotFound(f"no job {job_id}", field="job")
        if state is JobState.CANCELLED:
            return state
        if state in (JobState.SUCCEEDED, JobState.FAILED):
            raise Conflict(f"job {job_id} already ended: {state}", field="state")
        if run_id is not None and state is not JobState.QUEUED:
            run_state = RunState(conn.execute("SELECT state FROM runs WHERE id = %s FOR UPDATE",
                                              (run_id,)).fetchone()[0])
            move_run(conn, run_id, run_state, RunState.CANCELLED, at, ended_at=at,
                     end_reason="cancelled by the dispatcher")
            record_unreported_end(conn, run_id, "cancelled by the dispatcher")
        move_job(conn, job_id, state, JobState.CANCELLED, at, run_id=run_id, ended=True,
                 reason="cancelled by the dispatcher")
    return JobState.CANCELLED


# ---- reading back ------------------------------------------------------------------------------

class JobSummary(BaseModel):
    id: str
    tenant: str
    project: str
    name: str
    state: JobState
    tasks: int
    accelerators_per_task: int
    priority: int
    tries: int
    submitted_at: datetime
    state_changed_at: datetime
    ended_at: datetime | None
    end_reason: str | None


class RunOut(BaseModel):
    id: str
    attempt: int
    site_id: int
    site: str
    model: str
    accelerators: int
    state: RunState
    fencing_token: int
    placed_at: datetime
    leased_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    lease_expires_at: datetime
    exit_code: int | None
    executor_ref: str | None
    end_reason: str | None
    log_tail: str


class TransitionOut(BaseModel):
    from_state: JobState | None
    to_state: JobState
    at: datetime
    run_id: str | None
    reason: str


class WhyNot(BaseModel):
    site_id: int
    site: str
    constraint: str
    reason: str


class JobDetail(JobSummary):
    spec: dict[str, Any]
    runs: list[RunOut]
    transitions: list[TransitionOut]
    why_not: list[WhyNot] | None = None  # while queued: per site, what keeps it out now
    # While queued: what keeps it from every registered site whatever their capacity
    # (scheduler.feasibility); empty when some site could take it once capacity frees.
    permanent: list[Obstacle] | None = None


_SUMMARY = ("SELECT id, tenant, project, name, state, tasks, accelerators_per_task, priority,"
            " tries, submitted_at, state_changed_at, ended_at, end_reason")


def list_jobs(conn: psycopg.Connection, *, tenant: str | None, state: JobState | None,
              limit: int) -> list[JobSummary]:
    where, params = [], []
    if tenant is not None:
        where.append("tenant = %s")
        params.append(tenant)
    if state is not None:
        where.append("state = %s")
        params.append(state)
    sql = _SUMMARY + " FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
    rows = conn.execute(sql + " ORDER BY submitted_at DESC, id LIMIT %s", (*params, limit))
    fields = list(JobSummary.model_fields)
    return [JobSummary(**dict(zip(fields, row, strict=True))) for row in rows]


WITHHELD = "(withheld)"


def withhold_contents(detail: JobDetail) -> JobDetail:
    """The job as overseers (bureau, admins) see it: what ran where, when and how it ended, but
    not its environment's values (dispatchers pass tokens there) nor its output's tail, which
    only the job's own tenant reads."""
    spec = dict(detail.spec)
    payload = dict(spec.get("payload") or {})
    if payload.get("env"):
        payload["env"] = dict.fromkeys(payload["env"], WITHHELD)
    spec["payload"] = payload
    runs = [run.model_copy(update={"log_tail": WITHHELD if run.log_tail else ""})
            for run in detail.runs]
    return detail.model_copy(update={"spec": spec, "runs": runs})


def job_detail(conn: psycopg.Connection, job_id: str, *, tenant: str | None) -> JobDetail:
    row = conn.execute(_SUMMARY + ", spec FROM jobs WHERE id = %s", (job_id,)).fetchone()
    if row is None or (tenant is not None and row[1] != tenant):
        raise NotFound(f"no job {job_id}", field="job")
    fields = [*JobSummary.model_fields, "spec"]
    run_fields = list(RunOut.model_fields)
    runs = [
        RunOut(**dict(zip(run_fields, r, strict=True)))
        for r in conn.execute(
            "SELECT r.id, r.attempt, r.site_id, s.name, r.model, r.accelerators, r.state,"
            " r.fencing_token, r.placed_at, r.leased_at, r.started_at, r.ended_at,"
            " r.lease_expires_at, r.exit_code, r.executor_ref, r.end_reason, r.log_tail"
            " FROM runs r JOIN sites s ON s.id = r.site_id WHERE r.job_id = %s"
            " ORDER BY r.attempt", (job_id,))
    ]
    transitions = [
        TransitionOut(from_state=f, to_state=t, at=at, run_id=run, reason=reason)
        for f, t, at, run, reason in conn.execute(
            "SELECT from_state, to_state, at, run_id, reason FROM job_transitions"
            " WHERE job_id = %s ORDER BY id", (job_id,))
    ]
    return JobDetail(**dict(zip(fields, row, strict=True)), runs=runs, transitions=transitions)
