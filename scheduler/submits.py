"""Submits written in groups: one writer thread per platform process, one statement per group.

A submit handler puts its job on a queue and awaits the answer; the writer takes every job
waiting, checks each against the registered sites (``scheduler.feasibility``, from a cache: a
job pinned to a site that does not exist is refused, the others learn what no registered site
offers them), writes the rest in one statement (``scheduler.jobs.submit_jobs``) and answers
each. So under load a submit costs a share of one round trip and no worker thread of its own,
and when submits come one at a time each is written at once. A job's id is answered only after
it is committed. Should a group fail, each of its jobs is written again on its own, so one bad
job fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from psycopg_pool import ConnectionPool

from jinsuan.kernel.errors import Conflict, Invalid
from scheduler.feasibility import (
    Feasibility,
    Obstacle,
    RegisteredSite,
    RegistryCache,
    check_submit,
)
from scheduler.jobs import keyed_job_id, new_job_id, stored_spec, stored_specs, submit_jobs
from scheduler.spec import Constraints, JobSpec

log = logging.getLogger(__name__)

T = TypeVar("T")


# The header a dispatcher names a submit with, so that resending it after a lost answer never
# queues the job twice (as Armada's client id and the IETF's Idempotency-Key draft do).
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 128  # characters


class KeyReused(Conflict):
    code = "idempotency_key_reused"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A committed submit: the job's id, and the obstacles no registered site can lift."""

    job_id: str
    warnings: list[Obstacle]


# spec, tenant, submitted at, the answer, the job's id, chosen once (a group written again after
# its answer was lost, committed or not, stores each job under the same id, once), and whether
# the id comes from the dispatcher's idempotency key (a resend may name a job stored before).
_Item = tuple[JobSpec, str, datetime, asyncio.Future[Receipt], str, bool]


class SubmitWriter:
    def __init__(self, pool: ConnectionPool, on_written: Callable[[], None],
                 max_group: int = 500) -> None:
        self.pool = pool
        self.on_written = on_written  # e.g. ask for a placement cycle
        self.max_group = max_group
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._registry = RegistryCache()  # read by the writer thread only
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def submit(self, spec: JobSpec, tenant: str, at: datetime,
                     idempotency_key: str | None = None) -> Receipt:
        """Queue the job (submitted ``at``); its receipt once it is committed. Under an
        ``idempotency_key`` the tenant used before for the same job, the receipt names the job
        stored then (nothing new is stored); for another job, :class:`KeyReused`."""
        self._ensure_started()
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        job_id = new_job_id() if idempotency_key is None else keyed_job_id(tenant,
                                                                            idempotency_key)
        self._queue.put((spec, tenant, at, future, job_id, idempotency_key is not None))
        return await future

    def stop(self) -> None:
        """Write what is queued, then stop; a later submit starts the writer again."""
        with self._lock:
            if self._thread is None:
                return
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="submit-writer",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stopping = False
            while len(group) < self.max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)
            self._write(group)
            if stopping:
                return

    def _write(self, group: list[_Item]) -> None:
        try:
            with self.pool.connection() as conn:
                pinned = {spec.constraints.site for spec, *_ in group
                          if spec.constraints.site is not None}
                registry = self._registry.get(conn, pinned)
                found: dict[tuple[Constraints, int], Feasibility] = {}
                assessed = [_assess(spec, registry, found) for spec, *_ in group]
                kept = [(item, found) for item, found in zip(group, assessed, strict=True)
                        if isinstance(found, Feasibility)]
                jobs = [(spec, tenant, at) for (spec, tenant, at, *_), _ in kept]
                ids = submit_jobs(conn, jobs, [item[4] for item, _ in kept]) if jobs else []
                keyed = [item[4] for item, _ in kept if item[5]]
                stored = stored_specs(conn, keyed) if keyed else {}
        except Exception as exc:
            if len(group) == 1:
                answer_from_thread(group[0][3], exc)
                return
            log.warning("a group of %d submits failed (%s); writing each on its own",
                        len(group), exc)
            for item in group:
                self._write([item])
            return
        for (*_, future, _, _), found in zip(group, assessed, strict=True):
            if isinstance(found, Invalid):
                answer_from_thread(future, found)
        for ((spec, tenant, _, future, _, keyed), found), job_id in zip(kept, ids, strict=True):
            if keyed and stored.get(job_id) != stored_spec(spec, tenant):
                answer_from_thread(future, KeyReused(
                    f"this idempotency key was used for another job ({job_id}); a resend must"
                    " carry the same job", field=IDEMPOTENCY_HEADER))
            else:
                answer_from_thread(future, Receipt(job_id, found.warnings))
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


def answer_from_thread(future: asyncio.Future[T], result: T | BaseException) -> None:
    """Settle ``future`` from a writer thread, on its own event loop; nothing when its caller
    went away or its loop closed. (The submit writer's, and the lease desk's.)"""

    def settle() -> None:
        if future.done():  # the caller went away
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # its event loop closed: nobody is waiting
        future.get_loop().call_soon_threadsafe(settle)
