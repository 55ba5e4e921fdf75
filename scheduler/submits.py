"""Submits written in groups: one writer thread per platform process, one statement per group.

A submit handler puts its job on a queue and awaits the answer; the writer takes every job
waiting, writes them all in one statement (``scheduler.jobs.submit_jobs``) and answers each. So
under load a submit costs a share of one round trip and no worker thread of its own, and when
submits come one at a time each is written at once. A job's id is answered only after it is
committed. Should a group fail, each of its jobs is written again on its own, so one bad job
fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime

from psycopg_pool import ConnectionPool

from scheduler.jobs import submit_jobs
from scheduler.spec import JobSpec

log = logging.getLogger(__name__)

_Item = tuple[JobSpec, str, datetime, asyncio.Future[str]]


class SubmitWriter:
    def __init__(self, pool: ConnectionPool, on_written: Callable[[], None],
                 max_group: int = 500) -> None:
        self.pool = pool
        self.on_written = on_written  # e.g. ask for a placement cycle
        self.max_group = max_group
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def submit(self, spec: JobSpec, tenant: str, at: datetime) -> str:
        """Queue the job (submitted ``at``); its id once it is committed."""
        self._ensure_started()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.put((spec, tenant, at, future))
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
                ids = submit_jobs(conn, [(spec, tenant, at) for spec, tenant, at, _ in group])
        except Exception as exc:
            if len(group) == 1:
                _answer(group[0][3], exc)
                return
            log.warning("a group of %d submits failed (%s); writing each on its own",
                        len(group), exc)
            for item in group:
                self._write([item])
            return
        for (*_, future), job_id in zip(group, ids, strict=True):
            _answer(future, job_id)
        self.on_written()


def _answer(future: asyncio.Future[str], result: str | BaseException) -> None:
    def settle() -> None:
        if future.done():  # the caller went away
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # its event loop closed: nobody is waiting
        future.get_loop().call_soon_threadsafe(settle)
