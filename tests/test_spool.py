"""The agent's spool against real SQLite files, including an agent killed with SIGKILL."""

from __future__ import annotations

import collections
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

import agents
from agents.spool import NotPending, Spool, SpoolError, SpoolFull, SpoolLocked

REPO_ROOT = Path(agents.__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
REPORT_TIMEOUT_S = 60.0


def batch_body(seq: int) -> bytes:
    """A body that embeds its seq and varies in size, as the agent's report bodies do."""
    return b"seq=%d;" % seq + bytes([seq % 251]) * (100 + 37 * (seq % 113))


def fill(spool: Spool, count: int) -> list[int]:
    return [spool.append(batch_body) for _ in range(count)]


def test_seq_keeps_increasing_after_acks_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "spool.db"
    with Spool(path) as spool:
        assert fill(spool, 3) == [1, 2, 3]
        for seq in (3, 1, 2):  # ack the newest first: max(seq) falls to nothing
            spool.ack(seq)
        assert spool.pending() == 0
        assert spool.append(batch_body) == 4
        spool.ack(4)
    with Spool(path) as spool:
        assert spool.pending() == 0
        assert spool.append(batch_body) == 5


def test_oldest_first_with_bodies_attempts_and_times(tmp_path: Path) -> None:
    before = time.time()
    with Spool(tmp_path / "spool.db") as spool:
        seqs = fill(spool, 5)
        spool.ack(seqs[1])
        assert spool.record_failure(seqs[0]) == 1
        assert spool.record_failure(seqs[0]) == 2
        batches = spool.oldest(limit=10)
    assert [b.seq for b in batches] == [1, 3, 4, 5]
    assert [b.body for b in batches] == [batch_body(s) for s in (1, 3, 4, 5)]
    assert [b.attempts for b in batches] == [2, 0, 0, 0]
    assert all(before <= b.created_at <= time.time() for b in batches)
    assert batches == sorted(batches, key=lambda b: b.created_at)


def test_counts_and_bytes_follow_appends_acks_and_drops(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        seqs = fill(spool, 4)
        assert spool.pending() == 4
        assert spool.pending_bytes() == sum(len(batch_body(s)) for s in seqs)
        spool.ack(seqs[0])
        spool.drop(seqs[2], "422 unknown metric")
        assert spool.pending() == 2
        assert spool.pending_bytes() == len(batch_body(seqs[1])) + len(batch_body(seqs[3]))


def test_ack_is_idempotent_but_refuses_numbers_never_handed_out(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        first, second = fill(spool, 2)
        spool.ack(first)
        spool.ack(first)
        assert [b.seq for b in spool.oldest(limit=5)] == [second]
        with pytest.raises(NotPending, match="never appended"):
            spool.ack(second + 1)
        with pytest.raises(NotPending):
            spool.ack(0)


def test_attempts_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        (seq,) = fill(spool, 1)
        spool.record_failure(seq)
    with Spool(path) as spool:
        assert spool.record_failure(seq) == 2
        assert spool.oldest()[0].attempts == 2
        spool.ack(seq)
        with pytest.raises(NotPending, match=f"batch {seq} is not pending"):
            spool.record_failure(seq)


def test_oldest_reads_only_limit_rows(tmp_path: Path) -> None:
    body_size = 256 * 1024
    count = 64  # 16 MiB in the spool

    def big(seq: int) -> bytes:
        return seq.to_bytes(8, "big") * (body_size // 8)

    with Spool(tmp_path / "spool.db") as spool:
        for _ in range(count):
            spool.append(big)
        tracemalloc.start()
        try:
            batches = spool.oldest(limit=2)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert [b.seq for b in batches] == [1, 2]
    assert batches[1].body == big(2)
    # Two bodies must be held; loading the spool would peak near count * body_size.
    assert peak < 6 * body_size, f"oldest(limit=2) peaked at {peak} bytes"


def test_full_spool_refuses_append_and_stores_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", max_bytes=1000) as spool:

        def sized(seq: int) -> bytes:
            return b"%d;" % seq + b"." * 398

        first, second = spool.append(sized), spool.append(sized)
        with pytest.raises(SpoolFull, match="800 bytes pending \\+ 400 new > max_bytes 1000"):
            spool.append(sized)
        assert spool.pending() == 2
        assert spool.pending_bytes() == 800
        with pytest.raises(SpoolFull):
            spool.append(lambda seq: b"x" * 1001)
        spool.ack(first)
        # the refused number was never stored, so it is offered again: stored seqs stay gap-free
        assert spool.append(sized) == second + 1
        assert [b.seq for b in spool.oldest(limit=5)] == [second, second + 1]


def test_failed_build_stores_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:

        def broken(seq: int) -> bytes:
            raise RuntimeError(f"cannot serialise batch {seq}")

        with pytest.raises(RuntimeError, match="batch 1"):
            spool.append(broken)
        with pytest.raises(TypeError, match="returned str"):
            spool.append(lambda seq: f"seq={seq}")  # type: ignore[arg-type, return-value]
        assert spool.pending() == 0
        assert spool.append(batch_body) == 1


def test_drop_moves_batch_to_rejected(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        seqs = fill(spool, 3)
        spool.record_failure(seqs[1])
        spool.drop(seqs[1], "HTTP 422: series 'x' names unknown metric")
        assert [b.seq for b in spool.oldest(limit=5)] == [seqs[0], seqs[2]]
        with pytest.raises(NotPending):
            spool.drop(seqs[1], "again")
        with pytest.raises(ValueError, match="needs a reason"):
            spool.drop(seqs[0], "  ")
    with Spool(path) as spool:
        (rejected,) = spool.rejected()
    assert rejected.seq == seqs[1]
    assert rejected.body == batch_body(seqs[1])
    assert rejected.attempts == 1
    assert rejected.reason == "HTTP 422: series 'x' names unknown metric"
    assert rejected.created_at <= rejected.rejected_at


def test_rejected_keeps_only_the_newest(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", rejected_keep=3) as spool:
        for seq in fill(spool, 5):
            spool.drop(seq, f"rejected {seq}")
        kept = spool.rejected(limit=10)
    assert [r.seq for r in kept] == [5, 4, 3]
    assert [r.reason for r in kept] == ["rejected 5", "rejected 4", "rejected 3"]


def test_second_open_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        fill(spool, 1)
        with pytest.raises(SpoolLocked) as refused:
            Spool(path)
        assert str(path) in str(refused.value)
        assert f"pid {os.getpid()}" in str(refused.value)
        assert spool.pending() == 1  # the refused open left the holder working
    with Spool(path) as spool:
        assert spool.pending() == 1


def test_closed_spool_says_so(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="is closed"):
        spool.append(batch_body)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(SpoolError, match="schema version 99"):
        Spool(path)
    Spool(path.with_name("other.db")).close()  # the refused open released its lock


def test_storage_is_wal_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        fill(spool, 1)
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            db.close()
        # synchronous is per connection, so read it from the spool's own.
        assert spool._conn().execute("PRAGMA synchronous").fetchone() == (2,)  # 2 = FULL


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    from agents.spool import Spool
    from test_spool import batch_body

    spool = Spool(Path(sys.argv[1]))
    while True:
        seq = spool.append(batch_body)
        sys.stdout.write(f"{seq}\\n")
        sys.stdout.flush()
    """
)


class Reports:
    """Sequence numbers a child prints one per line, read with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._partial = b""
        self.seqs: list[int] = []

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while len(self.seqs) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                pytest.fail(f"child reported {len(self.seqs)} of {count} appends in time")
            if not self._read():
                pytest.fail(f"child exited early with {self._proc.wait()}: {self._stderr()}")

    def drain(self) -> None:
        """After the child is dead: take whatever it wrote before it died."""
        while self._read():
            pass
        assert self._partial == b"" or self._partial.isdigit()
        self._partial = b""  # a number cut off mid-line was not fully reported

    def _read(self) -> bool:
        chunk = os.read(self._fd, 65536)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        self.seqs.extend(int(line) for line in lines)
        return bool(chunk)

    def _stderr(self) -> str:
        assert self._proc.stderr is not None
        return self._proc.stderr.read().decode(errors="replace")


@pytest.mark.parametrize("kill_after", [1, 37, 250])
def test_sigkill_mid_append_loses_and_duplicates_nothing(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "spool.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(REPO_ROOT), str(TESTS_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    try:
        reports = Reports(proc)
        reports.wait_for(kill_after)
        with pytest.raises(SpoolLocked, match=f"holder pid {proc.pid}"):
            Spool(path)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=REPORT_TIMEOUT_S) == -signal.SIGKILL
        reports.drain()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()

    reported = reports.seqs
    assert reported == list(range(1, len(reported) + 1))
    assert len(reported) >= kill_after

    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()

    with Spool(path) as spool:
        stored = spool.oldest(limit=len(reported) + 10)
        seqs = [b.seq for b in stored]
        assert not [s for s, n in collections.Counter(seqs).items() if n > 1]
        assert seqs == sorted(seqs)
        assert seqs[: len(reported)] == reported
        # at most the one append that committed before the child could report it
        assert len(seqs) - len(reported) in (0, 1)
        assert all(b.body == batch_body(b.seq) for b in stored)
        assert spool.pending() == len(seqs)
        assert spool.pending_bytes() == sum(len(b.body) for b in stored)
        assert spool.append(batch_body) == seqs[-1] + 1


def test_renumber_moves_every_pending_batch_up_in_order_and_later_appends_follow(
        tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite") as spool:
        for _ in range(5):
            spool.append(lambda seq: f"batch {seq}".encode())
        spool.ack(1)
        spool.ack(2)  # 3, 4 and 5 wait; the platform already holds 1..9 from another life
        shift = spool.renumber(10, lambda body, seq: body + f" now {seq}".encode())
        assert shift == 7
        assert [(b.seq, b.body) for b in spool.oldest(5)] == [
            (10, b"batch 3 now 10"), (11, b"batch 4 now 11"), (12, b"batch 5 now 12")]
        assert spool.pending_bytes() == sum(len(b.body) for b in spool.oldest(5))
        assert spool.append(lambda seq: f"batch {seq}".encode()) == 13
        (entry,) = spool.renumberings()
        assert entry[1:] == (3, 10, 3)
        with pytest.raises(ValueError, match="would not move"):
            spool.renumber(10, lambda body, seq: body)
    with Spool(tmp_path / "empty.sqlite") as empty:
        assert empty.renumber(8, lambda body, seq: body) == 0
        assert empty.append(lambda seq: b"x") == 8  # numbering resumes where the platform said
