"""The audit log: every state-changing call, who made it, with which key, from where, and how
it ended; append-only, readable by admins and the bureau (``GET /v1/audit``).

Recorded: every request other than ``GET``/``HEAD``/``OPTIONS``, refused ones included (a 401
names the key prefix presented, never the secret). Not recorded here: the agents' signed
traffic (reports, lease requests, run events), which is kept where it lands (``reports``,
``job_transitions``), and which would otherwise flood the log with heartbeats.

Each request gets an id, returned in ``X-Request-Id`` and stored with its row, so a complaint
quoting it finds the call. The row is queued when the response has been sent (its status is
then known) and written by one writer thread on a connection of its own, in batches: a request
never waits for the log, nor takes a connection from the requests' pool (under load that would
stall the platform, jinsuan.kernel.gate). What is queued is written before the platform stops;
a crash loses at most the rows of the last moment, and says so in the log.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import uuid
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow

log = logging.getLogger(__name__)

READS = frozenset({"GET", "HEAD", "OPTIONS"})
AGENT_TRAFFIC = re.compile(r"^/v1/(reports|leases|runs/[^/]+/events)$")
_KEY_PREFIX = re.compile(rb"^Bearer jsk_([0-9a-f]{12})_")
MAX_ROWS = 10_000

_INSERT = (
    "INSERT INTO audit_log (request_id, key_id, key_prefix, role, method, path, query, status,"
    " client) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class AuditWriter:
    """One thread writing queued audit rows in batches on its own connection to ``url``."""

    BATCH = 500

    def __init__(self, url: str) -> None:
        self.url = url
        self.rows: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-writer",
                                                daemon=True)
                self._thread.start()
        self.rows.put(row)

    def flush(self) -> None:
        """Return once every row queued so far is written."""
        self.rows.join()

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is not None and self._thread.is_alive():
            self.rows.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while True:
            batch = [self.rows.get()]
            while len(batch) < self.BATCH and not self.rows.empty():
                batch.append(self.rows.get_nowait())
            stop = None in batch
            rows = [row for row in batch if row is not None]
            try:
                if rows:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.url, autocommit=True)
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(_INSERT, rows)
            except Exception:  # the calls are done; say loudly which records are missing
                log.exception("audit: could not record %d calls: %s", len(rows),
                              ", ".join(f"{r[4]} {r[5]} (request {r[0]})" for r in rows))
                conn = None
            finally:
                for _ in batch:
                    self.rows.task_done()
            if stop:
                if conn is not None:
                    conn.close()
                return


class AuditLog:
    """ASGI middleware: a request id for every request, a row for every state-changing one."""

    def __init__(self, app: ASGIApp, writer: AuditWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        status = 500

        async def with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        finally:
            if scope["method"] not in READS and not AGENT_TRAFFIC.match(scope["path"]):
                self.writer.put(_row(scope, request_id, status))


def _row(scope: Scope, request_id: str, status: int) -> tuple[Any, ...]:
    principal: Principal | None = scope.get("state", {}).get("principal")
    header = dict(scope["headers"]).get(b"authorization", b"")
    prefix = _KEY_PREFIX.match(header)
    client = scope.get("client")
    return (request_id, principal.key_id if principal else None,
            prefix[1].decode() if prefix else None,
            principal.role.value if principal else None, scope["method"], scope["path"],
            scope.get("query_string", b"").decode("latin-1")[:2000], status,
            client[0] if client else None)


Auditors = Annotated[Principal, allow(Role.ADMIN, Role.BUREAU, Role.VIEWER)]
_COLUMNS = ("id", "at", "request_id", "key_id", "key_prefix", "role", "method", "path",
            "query", "status", "client")


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/audit", tags=["audit"])

    @api.get("")
    def entries(conn: ConnDep, _: Auditors,
                since: Annotated[datetime | None, Query()] = None,
                until: Annotated[datetime | None, Query()] = None,
                key_prefix: Annotated[str | None, Query(max_length=12)] = None,
                limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 1000,
                ) -> list[dict[str, Any]]:
        """State-changing calls, newest first."""
        return _rows(conn, since, until, key_prefix, limit)

    @api.get("/export")
    def export(conn: ConnDep, _: Auditors,
               since: Annotated[datetime | None, Query()] = None,
               until: Annotated[datetime | None, Query()] = None) -> Response:
        """The log as JSON Lines, oldest first (at most the newest 10,000 rows per call)."""
        rows = reversed(_rows(conn, since, until, None, MAX_ROWS))
        body = "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in rows)
        return Response(body, media_type="application/jsonl",
                        headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'})

    return api


def _rows(conn: Any, since: datetime | None, until: datetime | None, prefix: str | None,
          limit: int) -> list[dict[str, Any]]:
    found = conn.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM audit_log"
        " WHERE (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
        " AND (%(until)s::timestamptz IS NULL OR at < %(until)s)"
        " AND (%(prefix)s::text IS NULL OR key_prefix = %(prefix)s)"
        " ORDER BY id DESC LIMIT %(limit)s",
        {"since": since, "until": until, "prefix": prefix, "limit": limit}).fetchall()
    return [dict(zip(_COLUMNS, row, strict=True)) for row in found]
