"""The agent's durable spool: every report batch is written here before it is sent.

The daemon appends a batch, the uploader sends the oldest ones and acknowledges each only after
the platform has accepted it. If the platform is down for an hour, or the agent is killed with
SIGKILL mid-upload, or both, every batch still arrives, oldest first: a batch leaves the spool
only by ``ack`` (the platform has it) or ``drop`` (the platform refused it for good). The
platform deduplicates on the sequence number, so a batch sent but not yet acknowledged when the
agent died is simply sent again.

Storage is one SQLite file from the standard library:

* WAL journal with ``synchronous=FULL``. In WAL mode ``NORMAL`` keeps the file consistent but a
  power cut may lose the last commits; ``FULL`` syncs the WAL on every commit, so once
  ``append`` has returned the batch survives power loss. The daemon appends once per sampling
  cycle, so one fsync per batch is cheap, and a lost batch is a hole in metered data that money
  depends on.
* Sequence numbers come from a counter row, not ``max(seq)``: after the newest batch is acked
  the maximum drops, and a reused number would be discarded by the platform as a duplicate.
  A number is consumed only when its batch commits, so the stored numbers have no gaps except
  those the platform acknowledged or rejected.
* The pending count and byte total live in the same row, kept by triggers, so the ``max_bytes``
  check is O(1) however large the spool grows.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

GIB = 1 << 30
REJECTED_KEEP = 1000
REASON_MAX_CHARS = 2000

# One tuple of statements per schema version; _migrate applies those above the file's version.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            next_seq INTEGER NOT NULL CHECK (next_seq >= 1),
            pending_count INTEGER NOT NULL,
            pending_bytes INTEGER NOT NULL
        )""",
        "INSERT INTO state (id, next_seq, pending_count, pending_bytes) VALUES (1, 1, 0, 0)",
        """CREATE TABLE batches (
            seq INTEGER PRIMARY KEY,
            size INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            body BLOB NOT NULL
        )""",
        """CREATE TRIGGER batches_counted_in AFTER INSERT ON batches BEGIN
            UPDATE state SET pending_count = pending_count + 1,
                             pending_bytes = pending_bytes + NEW.size;
        END""",
        """CREATE TRIGGER batches_counted_out AFTER DELETE ON batches BEGIN
            UPDATE state SET pending_count = pending_count - 1,
                             pending_bytes = pending_bytes - OLD.size;
        END""",
        """CREATE TABLE rejected (
            id INTEGER PRIMARY KEY,
            seq INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            created_at REAL NOT NULL,
            rejected_at REAL NOT NULL,
            reason TEXT NOT NULL,
            body BLOB NOT NULL
        )""",
    ),
    (
        """CREATE TABLE renumbered (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            from_seq INTEGER NOT NULL,
            to_seq INTEGER NOT NULL,
            batches INTEGER NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class SpoolError(Exception):
    """Base of the spool's own errors."""


class SpoolFull(SpoolError):
    """The append would take the spool past ``max_bytes``; nothing was stored.

    Refusing is deliberate: evicting the oldest batch would silently lose data that was already
    promised to the platform. The daemon logs the refusal and keeps sampling; the next append
    succeeds as soon as the uploader has drained some of the backlog.
    """


class SpoolLocked(SpoolError):
    """Another process holds the spool open."""


class NotPending(SpoolError, LookupError):
    """The sequence number names no batch waiting in the queue."""


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    seq: int
    body: bytes
    attempts: int
    created_at: float  # unix seconds (UTC) when the batch was appended


@dataclass(frozen=True, slots=True)
class RejectedBatch:
    seq: int
    body: bytes
    attempts: int
    created_at: float
    rejected_at: float
    reason: str


class Spool:
    """A durable FIFO of report batches, owned by one agent process.

    ``max_bytes`` bounds the stored bodies of pending batches; the file itself is larger by
    SQLite's page overhead, the WAL and the ``rejected`` table (at most ``rejected_keep`` rows,
    reasons cut to 2000 characters). Freed pages are reused, so the file stays near its
    high-water mark rather than growing without end. Bodies are stored exactly as given: the
    caller may hand in gzip bytes so the uploader can send them unchanged.

    The instance is safe to share between threads of the owning process.
    """

    def __init__(
        self, path: Path, max_bytes: int = 2 * GIB, *, rejected_keep: int = REJECTED_KEEP
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if rejected_keep < 0:
            raise ValueError(f"rejected_keep must be >= 0, got {rejected_keep}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.rejected_keep = rejected_keep
        self._mutex = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.path)
        try:
            self._db: sqlite3.Connection | None = _open_db(self.path)
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database, then release the lock. Calling it twice is harmless."""
        with self._mutex:
            if self._db is None:
                return
            self._db.close()
            self._db = None
            os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- queue -------------------------------------------------------------------------------

    def append(self, build: Callable[[int], bytes]) -> int:
        """Store ``build(seq)`` under the next sequence number and return that number.

        ``build`` runs inside the transaction, so the body can embed its own sequence number.
        If ``build`` raises, or the spool is full (``SpoolFull``), nothing is stored and the
        number is offered again to the next append.
        """
        with self._mutex, self._transaction() as db:
            seq, pending_bytes = db.execute(
                "SELECT next_seq, pending_bytes FROM state WHERE id = 1"
            ).fetchone()
            body = build(seq)
            if not isinstance(body, bytes | bytearray | memoryview):
                raise TypeError(f"build({seq}) returned {type(body).__name__}, expected bytes")
            size = len(body)
            if pending_bytes + size > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.path} is full: {pending_bytes} bytes pending + {size} new "
                    f"> max_bytes {self.max_bytes}; batch {seq} not stored"
                )
            db.execute(
                "INSERT INTO batches (seq, size, created_at, body) VALUES (?, ?, ?, ?)",
                (seq, size, time.time(), bytes(body)),
            )
            db.execute("UPDATE state SET next_seq = ? WHERE id = 1", (seq + 1,))
            return seq

    def renumber(self, first_seq: int, reseal: Callable[[bytes, int], bytes]) -> int:
        """Move every pending batch up to start at ``first_seq``, in order, rewriting each body
        with ``reseal(body, new_seq)``; later appends continue after them. Return the shift.

        For a platform that already holds the spool's numbers with other bodies (the agent's
        state was restored without its spool): the platform names the first number it has not
        seen, and the batches are re-signed under new numbers, none lost and none sent twice.
        The whole move is one transaction, recorded in ``renumbered``.
        """
        with self._mutex, self._transaction() as db:
            row = db.execute("SELECT min(seq) FROM batches").fetchone()
            if row[0] is None:
                shift = 0
            else:
                shift = first_seq - row[0]
                if shift <= 0:
                    raise ValueError(f"renumber to {first_seq} would not move batch {row[0]} up")
                # Highest first, so that no new number meets one not yet moved.
                for seq, body, size in db.execute(
                        "SELECT seq, body, size FROM batches ORDER BY seq DESC").fetchall():
                    new_body = reseal(bytes(body), seq + shift)
                    db.execute("UPDATE batches SET seq = ?, body = ?, size = ? WHERE seq = ?",
                               (seq + shift, new_body, len(new_body), seq))
                    db.execute("UPDATE state SET pending_bytes = pending_bytes + ? WHERE id = 1",
                               (len(new_body) - size,))
                db.execute("INSERT INTO renumbered (at, from_seq, to_seq, batches)"
                           " SELECT ?, ?, ?, count(*) FROM batches",
                           (time.time(), row[0], first_seq))
            (next_seq,) = db.execute("SELECT next_seq FROM state WHERE id = 1").fetchone()
            db.execute("UPDATE state SET next_seq = ? WHERE id = 1",
                       (max(next_seq + shift, first_seq),))
            return shift

    def renumberings(self, limit: int = 5) -> list[tuple[float, int, int, int]]:
        """The latest renumberings: (unix time, first old seq, first new seq, batches)."""
        with self._mutex:
            return self._conn().execute(
                "SELECT at, from_seq, to_seq, batches FROM renumbered ORDER BY id DESC LIMIT ?",
                (limit,)).fetchall()

    def oldest(self, limit: int = 1) -> list[SpooledBatch]:
        """The ``limit`` oldest pending batches, oldest first; reads no more rows than that."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._mutex:
            rows = self._conn().execute(
                "SELECT seq, body, attempts, created_at FROM batches ORDER BY seq LIMIT ?",
                (limit,),
            )
            return [SpooledBatch(*row) for row in rows]

    def ack(self, seq: int) -> None:
        """The platform has the batch: delete it.

        Acking a batch already acked or dropped does nothing; a number the spool never handed
        out raises ``NotPending``, since that is a bug in the caller.
        """
        with self._mutex, self._transaction() as db:
            self._check_allocated(db, seq)
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def record_failure(self, seq: int) -> int:
        """Count one more failed send of a pending batch; returns the new count."""
        with self._mutex, self._transaction() as db:
            rows = db.execute(
                "UPDATE batches SET attempts = attempts + 1 WHERE seq = ? RETURNING attempts",
                (seq,),
            ).fetchall()
            if not rows:
                raise NotPending(f"batch {seq} is not pending in spool {self.path}")
            return rows[0][0]

    def drop(self, seq: int, reason: str) -> None:
        """The platform refused the batch for good (a 4xx): move it to ``rejected``.

        The body and reason stay for an operator to inspect; only the newest
        ``rejected_keep`` rejected batches are kept.
        """
        if not reason.strip():
            raise ValueError(f"drop({seq}) needs a reason")
        with self._mutex, self._transaction() as db:
            moved = db.execute(
                "INSERT INTO rejected (seq, attempts, created_at, rejected_at, reason, body) "
                "SELECT seq, attempts, created_at, ?, ?, body FROM batches WHERE seq = ?",
                (time.time(), reason[:REASON_MAX_CHARS], seq),
            ).rowcount
            if moved == 0:
                raise NotPending(f"batch {seq} is not pending in spool {self.path}")
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            db.execute(
                "DELETE FROM rejected WHERE id NOT IN "
                "(SELECT id FROM rejected ORDER BY id DESC LIMIT ?)",
                (self.rejected_keep,),
            )

    def rejected(self, limit: int = 20) -> list[RejectedBatch]:
        """The newest rejected batches, newest first."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._mutex:
            rows = self._conn().execute(
                "SELECT seq, body, attempts, created_at, rejected_at, reason FROM rejected "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            return [RejectedBatch(*row) for row in rows]

    def pending(self) -> int:
        """How many batches wait to be acknowledged."""
        return self._state("pending_count")

    def pending_bytes(self) -> int:
        """Total size of the bodies waiting to be acknowledged."""
        return self._state("pending_bytes")

    # -- internals ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError(f"spool {self.path} is closed")
        return self._db

    def _state(self, column: str) -> int:
        with self._mutex:
            return self._conn().execute(f"SELECT {column} FROM state WHERE id = 1").fetchone()[0]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn())

    def _check_allocated(self, db: sqlite3.Connection, seq: int) -> None:
        (next_seq,) = db.execute("SELECT next_seq FROM state WHERE id = 1").fetchone()
        if not 1 <= seq < next_seq:
            raise NotPending(
                f"batch {seq} was never appended to spool {self.path} (next is {next_seq})"
            )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` if the block raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except BaseException:
                # A failed COMMIT (disk full, I/O error) can leave the transaction open.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        self._db.execute("ROLLBACK")


def _take_lock(path: Path) -> int:
    """Hold an exclusive ``flock`` on ``<path>.lock`` and write our pid into it.

    The kernel drops the lock when the process dies, even by SIGKILL, so a stale lock cannot
    outlive its holder. The file is never deleted: unlinking it would let a second process lock
    a new file of the same name while the first still holds the old one.
    """
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SpoolLocked(
            f"spool {path} is already open (holder pid {holder}, lock file {lock_path})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass(frozen=True, slots=True)
class SpoolSummary:
    pending: int
    pending_bytes: int
    rejected: int
    renumberings: list[tuple[float, int, int, int]]  # as Spool.renumberings


def read_summary(path: Path) -> SpoolSummary | None:
    """What a spool holds, read without its lock (a running agent keeps it open); None when
    there is no spool yet. For ``jinsuan agent check``."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        pending, pending_bytes = db.execute(
            "SELECT pending_count, pending_bytes FROM state WHERE id = 1").fetchone()
        (rejected,) = db.execute("SELECT count(*) FROM rejected").fetchone()
        has_renumbered = db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'renumbered'").fetchone()
        renumberings = db.execute(
            "SELECT at, from_seq, to_seq, batches FROM renumbered ORDER BY id DESC LIMIT 5"
        ).fetchall() if has_renumbered else []
        return SpoolSummary(pending, pending_bytes, rejected, renumberings)
    finally:
        db.close()


def _open_db(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are opened explicitly by _Transaction.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise SpoolError(f"spool {path}: SQLite refused WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        _migrate(db, path)
        return db
    except BaseException:
        db.close()
        raise


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    with _Transaction(db):
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise SpoolError(
                f"spool {path} has schema version {version}; this agent knows up to "
                f"{SCHEMA_VERSION}: upgrade the agent"
            )
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
