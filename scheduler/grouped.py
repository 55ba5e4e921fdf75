"""Requests served in groups by one thread per platform process.

Submits (``scheduler.submits``) and woken lease requests (``scheduler.leasedesk``) come hundreds
a second. Served one by one, each would take a worker thread, a pooled connection and a
transaction of its own, and the last would wait for all the others. A :class:`GroupWorker`
queues them instead: its thread takes every request waiting (up to ``max_group``), serves them
together, and settles each caller's future on the caller's event loop. When requests come one
at a time, each is served at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

P = TypeVar("P")  # what a request carries
A = TypeVar("A")  # its answer
T = TypeVar("T")

Request = tuple[P, asyncio.Future[A]]


class GroupWorker(ABC, Generic[P, A]):
    """Subclasses serve a group in :meth:`_serve`, settling each future with
    :func:`answer_from_thread`; the requests it returns are served in the next group."""

    thread_name = "group-worker"

    def __init__(self, max_group: int = 500) -> None:
        self.max_group = max_group
        self._queue: queue.SimpleQueue[Request[P, A] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def _ask(self, payload: P) -> A:
        """Queue ``payload``; its answer once its group is served."""
        self._ensure_started()
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._queue.put((payload, future))
        return await future

    def stop(self) -> None:
        """Serve what is queued, then stop; a later request starts the thread again."""
        with self._lock:
            if self._thread is None:
                return
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    @abstractmethod
    def _serve(self, group: list[Request[P, A]]) -> list[Request[P, A]]:
        """Serve ``group``, settling each future; return the requests left for the next."""

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.thread_name,
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        held_over: list[Request[P, A]] = []
        while True:
            group, stopping = self._take(held_over)
            held_over = self._serve(group) if group else []
            if stopping:
                for request in held_over:
                    self._serve([request])
                return

    def _take(self, held_over: list[Request[P, A]]) -> tuple[list[Request[P, A]], bool]:
        """The next group: what the last one held over, then everything waiting; and whether
        the worker was asked to stop."""
        group = list(held_over)
        if not group:
            first = self._queue.get()
            if first is None:
                return [], True
            group.append(first)
        while len(group) < self.max_group:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                return group, True
            group.append(request)
        return group, False


def answer_from_thread(future: asyncio.Future[T], result: T | BaseException) -> None:
    """Settle ``future`` from a worker thread, on its own event loop; nothing when its caller
    went away or its loop closed."""

    def settle() -> None:
        if future.done():  # the caller went away
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # its event loop closed: nobody is waiting
        future.get_loop().call_soon_threadsafe(settle)
