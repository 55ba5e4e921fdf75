"""Submits written in groups: one writer thread per platform process, one statement per group.

A submit handler puts its job on a queue and awaits the answer (``scheduler.grouped``); the
writer takes every job waiting, checks each against the registered sites
(``scheduler.feasibility``, from a cache: a job pinned to a site that does not exist is refused,
the others learn what no registered site offers them), writes the rest in one statement
(``scheduler.jobs.submit_jobs``) and answers each. So under load a submit costs a share of one
round trip and no worker thread of its own, and when submits come one at a time each is written
at once. A job's id is answered only after it is committed. Should a group fail, each of its
jobs is written again on its own, so one bad job fails alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from psycopg_pool import ConnectionPool

from jinsuan.kernel.errors import Conflict, Invalid
from scheduler.feasibility import (
    Feasibility,
    Obstacle,
    RegisteredSite,
    RegistryCache,
    check_submit,
)
from scheduler.grouped import GroupWorker, Request, answer_from_thread
from scheduler.jobs import keyed_job_id, new_job_id, stored_spec, stored_specs, submit_jobs
from scheduler.spec import Constraints, JobSpec
from scheduler.states import JobState

log = logging.getLogger(__name__)

# The header a dispatcher names a submit with, so that resending it after a lost answer never
# queues the job twice (as Armada's client id and the IETF's Idempotency-Key draft do).
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 128  # characters


class KeyReused(Conflict):
    code = "idempotency_key_reused"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A committed submit: the job's id, the obstacles no registered site can lift, and the
    job's state (a resend under an idempotency key answers the job as it is now)."""

    job_id: str
    warnings: list[Obstacle]
    state: JobState = JobState.QUEUED  # a resend's job may have moved on since


class _Submit(NamedTuple):
    spec: JobSpec
    tenant: str
    at: datetime  # submitted
    # Chosen once: a group written again after its answer was lost (committed or not) stores
    # each job under the same id, once.
    job_id: str
    keyed: bool  # the id comes from the dispatcher's idempotency key: may name a stored job


class SubmitWriter(GroupWorker[_Submit, Receipt]):
    thread_name = "submit-writer"

    def __init__(self, pool: ConnectionPool, on_written: Callable[[], None],
                 max_group: int = 500) -> None:
        super().__init__(max_group)
        self.pool = pool
        self.on_written = on_written  # e.g. ask for a placement cycle
        self._registry = RegistryCache()  # read by the writer thread only

    async def submit(self, spec: JobSpec, tenant: str, at: datetime,
                     idempotency_key: str | None = None) -> Receipt:
        """Queue the job (submitted ``at``); its receipt once it is committed. Under an
        ``idempotency_key`` the tenant used before for the same job, the receipt names the job
        stored then (nothing new is stored); for another job, :class:`KeyReused`."""
        job_id = new_job_id() if idempotency_key is None else keyed_job_id(tenant,
                                                                            idempotency_key)
        return await self._ask(_Submit(spec, tenant, at, job_id, idempotency_key is not None))

    def _serve(self, group: list[Request[_Submit, Receipt]]) -> list[Request[_Submit, Receipt]]:
        self._write(group)
        return []

    def _write(self, group: list[Request[_Submit, Receipt]]) -> None:
        try:
            with self.pool.connection() as conn:
                pinned = {job.spec.constraints.site for job, _ in group
                          if job.spec.constraints.site is not None}
                registry = self._registry.get(conn, pinned)
                found: dict[tuple[Constraints, int], Feasibility] = {}
                assessed = [_assess(job.spec, registry, found) for job, _ in group]
                kept = [(request, found) for request, found in zip(group, assessed, strict=True)
                        if isinstance(found, Feasibility)]
                jobs = [(job.spec, job.tenant, job.at) for (job, _), _ in kept]
                ids = submit_jobs(conn, jobs, [job.job_id for (job, _), _ in kept]
                                  ) if jobs else []
                keyed = [job.job_id for (job, _), _ in kept if job.keyed]
                stored = stored_specs(conn, keyed) if keyed else {}
        except Exception as exc:
            if len(group) == 1:
                answer_from_thread(group[0][1], exc)
                return
            log.warning("a group of %d submits failed (%s); writing each on its own",
                        len(group), exc)
            for request in group:
                self._write([request])
            return
        for (_, future), found in zip(group, assessed, strict=True):
            if isinstance(found, Invalid):
                answer_from_thread(future, found)
        for ((job, future), found), job_id in zip(kept, ids, strict=True):
            if not job.keyed:
                answer_from_thread(future, Receipt(job_id, found.warnings))
                continue
            submitted = stored_spec(job.spec, job.tenant)
            spec, state = stored.get(job_id, (submitted, JobState.QUEUED))
            if spec == submitted:
                answer_from_thread(future, Receipt(job_id, found.warnings, state))
            else:
                answer_from_thread(future, KeyReused(
                    f"this idempotency key was used for another job ({job_id}); a resend must"
                    " carry the same job", field=IDEMPOTENCY_HEADER))
        if kept:
            self.on_written()


def _assess(spec: JobSpec, registry: dict[str, RegisteredSite],
            found: dict[tuple[Constraints, int], Feasibility]) -> Feasibility | Invalid:
    """``check_submit``, once per constraints and size in a group: jobs submitted together
    mostly come from a few templates, and each assessment walks every registered pool. (A
    refusal is not kept: each refused submit gets an exception of its own.)"""
    key = (spec.constraints, spec.accelerators)
    feasibility = found.get(key)
    if feasibility is None:
        try:
            feasibility = found[key] = check_submit(spec, registry)
        except Invalid as refused:
            return refused
    return feasibility
