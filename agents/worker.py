"""The agent's lease loop: pull work from the platform, run it on the site's executor, report it.

Each heartbeat (``step``):

1. ``POST /v1/leases`` with the runs the agent holds (run id and fencing token) and how many more
   it takes. The reply renews held runs, hands out new ones, and names runs to ``cancel`` (stop
   them; their end is still reported, and the platform may refuse it) or ``lost`` (the lease is
   gone: stop them and report nothing more).
2. New leases are recorded, then started on the executor; a run the executor refuses for good
   (``StartError``) is reported failed with the reason, one whose backend could not be reached
   (``ExecutorError``) is started again at the next heartbeat. A cancelled run that never
   started is dropped without a report.
3. Every run is polled; a change (running, then succeeded or failed) becomes an event in the
   outbox. The reason a run failed (timed out, cancelled, node failure) is appended to its log
   tail as a ``[jinsuan-agent]`` line, since the event has no field of its own for it.
4. The outbox is sent, oldest first per run, each event signed under the run's fencing token
   with a fresh ``sent_at``. 200 (``recorded`` or ``duplicate``) acknowledges it; after an end is
   acknowledged the run is cleaned up and forgotten. 409 ``stale_lease`` (another lease owns the
   run now, or it already ended) silences the run: it is stopped and nothing more is sent. 404
   (the platform has no such run) is treated the same. Connection errors, timeouts, 5xx, 408,
   429, 401 and 403 are retried with exponential backoff; any other 4xx drops the event, and
   for an end event the run too, so its lease expires and the platform re-queues the job.

Durability: a small SQLite file (WAL, ``synchronous=FULL``) maps run id → lease, fencing token,
executor ref and what has been reported, and holds the outbox. A run is written before the
executor is asked to start it and its ref right after, so an agent that restarts re-attaches to
the runs it started (executors' ``start`` is idempotent per run id for the crash in between)
and never starts one twice; events queued before a crash are sent after it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.clock import Clock, SystemClock
from agents.executors import (
    Executor,
    ExecutorConfigError,
    ExecutorError,
    RunPhase,
    RunStatus,
    StartError,
    build_executor,
    executor_settings,
    trim_tail,
)
from agents.identity import describe_error
from agents.uploader import Backoff
from jinsuan import __version__
from jinsuan.contract import signing
from jinsuan.contract.leasewire import (
    AGENT_HEADER,
    LEASES_PATH,
    MAX_LEASE_WAIT_S,
    SIGNATURE_HEADER,
    STALE_LEASE_CODE,
    ExecutorKind,
    HeldRun,
    Lease,
    LeaseReply,
    LeaseRequest,
    RunEvent,
    RunEventState,
    run_events_path,
)

log = logging.getLogger("jinsuan.agent.worker")

STATE_FILE = "leases.sqlite3"
_RETRY_LATER = frozenset({401, 403, 408, 429})
_REPORTED_NONE, _REPORTED_RUNNING, _REPORTED_END = 0, 1, 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        fencing_token INTEGER NOT NULL,
        lease TEXT NOT NULL,
        executor_ref TEXT,
        reported INTEGER NOT NULL DEFAULT 0,
        cancel_sent INTEGER NOT NULL DEFAULT 0,
        silenced INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        event TEXT NOT NULL,
        final INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL DEFAULT 0
    )""",
)


class WorkerSettings(BaseModel):
    """The ``[executor]`` section's own keys; the rest go to the executor's config model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    max_runs: int = Field(default=4, ge=0, description="Runs held at once, at most.")
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="Lease requests this often (and at ttl/4 at the latest)."
    )
    request_timeout_s: float = Field(default=30.0, gt=0, le=600)
    long_poll: bool = Field(
        default=True, description="Let the platform hold each lease request up to the"
        " heartbeat interval while nothing is placed here (and free slots remain): a job placed"
        " here starts within a second, not at the next heartbeat.")


WORKER_KEYS = frozenset(WorkerSettings.model_fields)


@dataclass(frozen=True, slots=True)
class HeldRecord:
    run_id: str
    fencing_token: int
    lease: Lease
    executor_ref: str | None
    reported: int
    cancel_sent: bool
    silenced: bool


@dataclass
class StepReport:
    """What one heartbeat did, for logs, metrics and tests."""

    reply: LeaseReply | None = None
    started: list[str] = field(default_factory=list)
    events_sent: list[tuple[str, str]] = field(default_factory=list)  # (run id, state)
    silenced: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)


class WorkerState:
    """The durable run table and event outbox (one SQLite file)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def add(self, lease: Lease) -> None:
        """Record a new lease before starting it; a run already known is left as it is."""
        self._db.execute(
            "INSERT OR IGNORE INTO runs (run_id, fencing_token, lease) VALUES (?, ?, ?)",
            (lease.run_id, lease.fencing_token, lease.model_dump_json()),
        )

    def runs(self) -> list[HeldRecord]:
        rows = self._db.execute(
            "SELECT run_id, fencing_token, lease, executor_ref, reported, cancel_sent, silenced"
            " FROM runs ORDER BY rowid"
        ).fetchall()
        return [
            HeldRecord(
                r[0], r[1], Lease.model_validate_json(r[2]), r[3], r[4], bool(r[5]), bool(r[6])
            )
            for r in rows
        ]

    def get(self, run_id: str) -> HeldRecord | None:
        return next((r for r in self.runs() if r.run_id == run_id), None)

    def set_ref(self, run_id: str, ref: str) -> None:
        self._db.execute("UPDATE runs SET executor_ref = ? WHERE run_id = ?", (ref, run_id))

    def mark_cancel_sent(self, run_id: str) -> None:
        self._db.execute("UPDATE runs SET cancel_sent = 1 WHERE run_id = ?", (run_id,))

    def queue_event(self, run_id: str, event: dict[str, Any], reported: int) -> None:
        """Queue an event and record that it is reported, in one transaction."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO outbox (run_id, event, final) VALUES (?, ?, ?)",
                (run_id, json.dumps(event), int(reported == _REPORTED_END)),
            )
            self._db.execute("UPDATE runs SET reported = ? WHERE run_id = ?", (reported, run_id))

    def silence(self, run_id: str) -> None:
        """Report nothing more for this run and stop holding it; it stays until cleaned up."""
        with self._transaction():
            self._db.execute("UPDATE runs SET silenced = 1 WHERE run_id = ?", (run_id,))
            self._db.execute("DELETE FROM outbox WHERE run_id = ?", (run_id,))

    def forget(self, run_id: str) -> None:
        self._db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def due_events(self, now: float) -> list[tuple[int, str, dict[str, Any], bool]]:
        """The oldest queued event of each run, if its retry time has come."""
        rows = self._db.execute(
            "SELECT o.id, o.run_id, o.event, o.final, o.next_at FROM outbox o"
            " WHERE o.id = (SELECT min(id) FROM outbox WHERE run_id = o.run_id) ORDER BY o.id"
        ).fetchall()
        return [(r[0], r[1], json.loads(r[2]), bool(r[3])) for r in rows if r[4] <= now]

    def pending_events(self) -> int:
        return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def ack(self, event_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (event_id,))

    def retry_later(self, event_id: int, backoff: Backoff, now: float) -> int:
        with self._transaction():
            attempts = self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ? RETURNING attempts",
                (event_id,),
            ).fetchone()[0]
            self._db.execute(
                "UPDATE outbox SET next_at = ? WHERE id = ?",
                (now + backoff.delay(attempts), event_id),
            )
        return attempts

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


class LeaseWorker:
    """Runs the lease loop; ``run`` on its own thread and ``stop`` from any, or call ``step``."""

    def __init__(
        self,
        *,
        platform_url: str,
        agent_id: str,
        key: Ed25519PrivateKey,
        executor: Executor,
        state_path: Path,
        max_runs: int = 4,
        heartbeat_s: float = 10.0,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        client: httpx.Client | None = None,
        request_timeout_s: float = 30.0,
        long_poll: bool = False,
    ) -> None:
        self.base_url = platform_url.rstrip("/")
        self.agent_id = agent_id
        self.key = key
        self.executor = executor
        self.executor_kind = ExecutorKind(executor.name)
        self.state = WorkerState(state_path)
        self.max_runs = max_runs
        self.heartbeat_s = heartbeat_s
        # A held request must come back well inside the client's timeout.
        self.max_wait_s = min(MAX_LEASE_WAIT_S, request_timeout_s / 2) if long_poll else 0.0
        self.clock = clock or SystemClock()
        self.backoff = backoff or Backoff()
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(request_timeout_s, connect=min(10.0, request_timeout_s)),
            headers={"User-Agent": f"jinsuan-agent/{__version__}"},
        )
        self.lease_ttl_s: float | None = None
        self._stop = threading.Event()

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Ask for work every heartbeat interval. With long polls the platform holds each
        request while there is nothing new, up to the interval, so the loop asks again at once
        when a request comes back held that long, and as soon as it was handed new runs (more
        may be placed here); otherwise it waits out the rest of the interval."""
        while not self._stop.is_set():
            started = self.clock.monotonic()
            interval = heartbeat_interval(self.heartbeat_s, self.lease_ttl_s)
            handed_new = False
            try:
                report = self.step(wait_s=min(interval, self.max_wait_s))
                handed_new = report.reply is not None and bool(report.reply.new)
            except Exception:  # one bad heartbeat must not end the loop; the next may work
                log.exception("lease heartbeat failed")
            if not handed_new:
                self.clock.wait(self._stop, interval - (self.clock.monotonic() - started))

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._client.close()
        self.state.close()

    def step(self, wait_s: float = 0.0) -> StepReport:
        """One heartbeat (held up to ``wait_s`` by the platform while nothing is placed here),
        then the runs started, polled and their events sent."""
        report = StepReport()
        report.reply = self._heartbeat(wait_s)
        if report.reply is not None:
            self._apply(report.reply, report)
        self._start_unstarted(report)
        self._poll_runs(report)
        self._flush(report)
        return report

    # -- heartbeat -------------------------------------------------------------------------

    def _heartbeat(self, wait_s: float) -> LeaseReply | None:
        runs = self.state.runs()
        free_slots = max(0, self.max_runs - len(runs))
        request = LeaseRequest(
            agent_id=self.agent_id,
            sent_at=self._now(),
            executor=self.executor_kind,
            held=[
                HeldRun(run_id=r.run_id, fencing_token=r.fencing_token)
                for r in runs
                if not r.silenced
            ],
            free_slots=free_slots,
            wait_s=wait_s if free_slots else 0.0,  # nothing to wait for without a free slot
        )
        response = self._post(LEASES_PATH, request)
        if response is None:
            return None
        if response.status_code != 200:
            log.error("lease request refused: %s", describe_error(response))
            return None
        try:
            reply = LeaseReply.model_validate_json(response.content)
        except ValidationError as exc:
            log.error("lease reply not understood: %s", exc)
            return None
        self.lease_ttl_s = reply.lease_ttl_s
        return reply

    def _apply(self, reply: LeaseReply, report: StepReport) -> None:
        for run_id in reply.lost:
            record = self.state.get(run_id)
            if record is not None and not record.silenced:
                log.warning("run %s: lease lost; stopping it, its end is not reported", run_id)
                self.state.silence(run_id)
                report.silenced.append(run_id)
                self._cancel(record)
        for run_id in reply.cancel:
            record = self.state.get(run_id)
            if record is None or record.cancel_sent or record.silenced:
                continue
            log.info("run %s: cancelled by the platform; stopping it", run_id)
            if record.executor_ref is None:  # never started: nothing to stop, nothing to say
                self.state.silence(run_id)
                report.silenced.append(run_id)
            else:
                self._cancel(record)
        for lease in reply.new:
            if lease.run_id in reply.lost or lease.run_id in reply.cancel:
                continue
            self.state.add(lease)  # started below, with any earlier start that failed for now

    def _cancel(self, record: HeldRecord) -> None:
        if record.executor_ref is None:
            return
        try:
            self.executor.cancel(record.executor_ref)
        except ExecutorError as exc:
            log.warning(
                "run %s: cancel failed, trying again next heartbeat: %s", record.run_id, exc
            )
            return
        self.state.mark_cancel_sent(record.run_id)

    # -- starting --------------------------------------------------------------------------

    def _start(self, lease: Lease, report: StepReport) -> None:
        try:
            ref = self.executor.start(lease)
        except StartError as exc:
            log.error("run %s cannot start here: %s", lease.run_id, exc)
            now = self._now()
            self._queue(
                lease.run_id,
                lease.fencing_token,
                _REPORTED_END,
                state=RunEventState.FAILED,
                at=now,
                ended_at=now,
                log_tail=_with_reason("", f"the run could not start: {exc}"),
            )
            return
        except ExecutorError as exc:
            log.warning("run %s: start failed, trying again next heartbeat: %s", lease.run_id, exc)
            return
        self.state.set_ref(lease.run_id, ref)
        report.started.append(lease.run_id)
        log.info("run %s started as %s", lease.run_id, ref)

    def _start_unstarted(self, report: StepReport) -> None:
        for record in self.state.runs():
            if record.executor_ref is None and not record.silenced and not record.reported:
                self._start(record.lease, report)

    # -- polling ---------------------------------------------------------------------------

    def _poll_runs(self, report: StepReport) -> None:
        for record in self.state.runs():
            if record.executor_ref is None:
                if record.silenced:  # never started: nothing to stop or clean
                    self.state.forget(record.run_id)
                    report.forgotten.append(record.run_id)
                continue
            try:
                status = self.executor.poll(record.executor_ref)
            except ExecutorError as exc:
                log.warning("run %s: cannot poll %s: %s", record.run_id, record.executor_ref, exc)
                continue
            if record.silenced:
                if status.state.ended:
                    self._cleanup(record, report)
                elif not record.cancel_sent:
                    self._cancel(record)
                continue
            self._report_change(record, status)

    def _report_change(self, record: HeldRecord, status: RunStatus) -> None:
        common = {"executor_ref": record.executor_ref, "started_at": status.started_at}
        if status.state is RunPhase.RUNNING and record.reported == _REPORTED_NONE:
            self._queue(
                record.run_id,
                record.fencing_token,
                _REPORTED_RUNNING,
                state=RunEventState.RUNNING,
                at=self._now(),
                log_tail=status.log_tail,
                **common,
            )
        elif status.state.ended and record.reported != _REPORTED_END:
            ended = status.state is RunPhase.SUCCEEDED
            self._queue(
                record.run_id,
                record.fencing_token,
                _REPORTED_END,
                state=RunEventState.SUCCEEDED if ended else RunEventState.FAILED,
                at=status.ended_at or self._now(),
                exit_code=status.exit_code,
                ended_at=status.ended_at,
                log_tail=_with_reason(status.log_tail, status.reason),
                **common,
            )

    def _queue(self, run_id: str, token: int, reported: int, **fields: Any) -> None:
        event = RunEvent(agent_id=self.agent_id, sent_at=self._now(), fencing_token=token, **fields)
        body = event.model_dump(mode="json", exclude={"agent_id", "sent_at"})
        self.state.queue_event(run_id, body, reported)

    def _cleanup(self, record: HeldRecord, report: StepReport) -> None:
        if record.executor_ref is not None:
            try:
                self.executor.cleanup(record.executor_ref)
            except ExecutorError as exc:
                log.warning("run %s: cleanup failed, trying again: %s", record.run_id, exc)
                return
        self.state.forget(record.run_id)
        report.forgotten.append(record.run_id)

    # -- sending ---------------------------------------------------------------------------

    def _flush(self, report: StepReport) -> None:
        for event_id, run_id, fields, final in self.state.due_events(self.clock.time()):
            event = RunEvent(agent_id=self.agent_id, sent_at=self._now(), **fields)
            response = self._post(run_events_path(run_id), event)
            if response is None:
                self._retry(event_id, run_id, "platform unreachable")
                continue
            status = response.status_code
            if status == 200:
                self.state.ack(event_id)
                report.events_sent.append((run_id, event.state.value))
                if final:
                    record = self.state.get(run_id)
                    if record is not None:
                        self._cleanup(record, report)
            elif status == 404 or (status == 409 and _error_code(response) == STALE_LEASE_CODE):
                log.warning(
                    "run %s: %s; reporting nothing more for it", run_id, describe_error(response)
                )
                self.state.silence(run_id)
                report.silenced.append(run_id)
            elif status >= 500 or status in _RETRY_LATER:
                self._retry(event_id, run_id, describe_error(response))
            else:
                log.error(
                    "run %s: platform refused its %s event for good: %s",
                    run_id,
                    event.state,
                    describe_error(response),
                )
                self.state.ack(event_id)
                if final:  # stop holding it: its lease expires and the platform re-queues it
                    self.state.silence(run_id)
                    report.silenced.append(run_id)

    def _retry(self, event_id: int, run_id: str, detail: str) -> None:
        attempts = self.state.retry_later(event_id, self.backoff, self.clock.time())
        if attempts == 1 or attempts % 10 == 0:
            log.warning("run %s: event not delivered (attempt %d): %s", run_id, attempts, detail)

    def _post(self, path: str, model: BaseModel) -> httpx.Response | None:
        body = model.model_dump_json().encode()
        headers = {
            "Content-Type": "application/json",
            AGENT_HEADER: self.agent_id,
            SIGNATURE_HEADER: signing.sign(self.key, body),
        }
        try:
            return self._client.post(self.base_url + path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("POST %s failed: %s: %s", path, type(exc).__name__, exc)
            return None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), UTC)


def heartbeat_interval(heartbeat_s: float, lease_ttl_s: float | None) -> float:
    """Seconds between lease requests: ``heartbeat_s``, and at most a quarter of the lease TTL
    the platform last gave, so three requests can be late or lost before a lease lapses."""
    return heartbeat_s if lease_ttl_s is None else min(heartbeat_s, lease_ttl_s / 4)


def check_worker_section(
    section: Mapping[str, Any],
) -> tuple[WorkerSettings, dict[str, Any]]:
    """Validate an ``[executor]`` table without building anything: the worker's own settings,
    and the executor's options (checked by its config model). Raises ExecutorConfigError or
    UnknownExecutor."""
    own = {k: v for k, v in section.items() if k in WORKER_KEYS}
    options = {k: v for k, v in section.items() if k not in WORKER_KEYS}
    problems: list[str] = []
    try:
        settings = WorkerSettings.model_validate(own)
    except ValidationError as exc:
        problems = [f"executor.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    kind = own.get("kind")
    if isinstance(kind, str):  # report the executor's own mistakes alongside the worker's
        try:
            executor_settings(kind, options)
        except ExecutorConfigError as exc:
            problems += exc.problems
    if problems:
        raise ExecutorConfigError(problems)
    return settings, options


def build_worker(
    section: Mapping[str, Any],
    *,
    platform_url: str,
    agent_id: str,
    key: Ed25519PrivateKey,
    state_dir: Path,
    clock: Clock | None = None,
) -> LeaseWorker:
    """A worker from the agent config's ``[executor]`` table: ``kind``, ``max_runs``,
    ``heartbeat_s``, ``request_timeout_s``, ``long_poll``; every other key is the executor's own
    option. Raises ExecutorConfigError (``executor.<key>: ...`` lines) or UnknownExecutor."""
    settings, options = check_worker_section(section)
    executor = build_executor(settings.kind, options, state_dir)
    return LeaseWorker(
        platform_url=platform_url,
        agent_id=agent_id,
        key=key,
        executor=executor,
        state_path=Path(state_dir) / STATE_FILE,
        max_runs=settings.max_runs,
        heartbeat_s=settings.heartbeat_s,
        clock=clock,
        request_timeout_s=settings.request_timeout_s,
        long_poll=settings.long_poll,
    )


def _with_reason(tail: str, reason: str | None) -> str:
    if not reason:
        return tail
    if tail and not tail.endswith("\n"):
        tail += "\n"
    return trim_tail(f"{tail}[jinsuan-agent] {reason}\n")


def _error_code(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
