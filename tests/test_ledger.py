"""The money ledger: chained appends, derived balances, signed checkpoints, and tampering found.

Tampering is done as a database superuser would do it (triggers off with
``session_replication_role = replica``), then found both by ``jinsuan.kernel.ledger.verify`` on
the database and by the standalone verifier (``jinsuan/contract/ledgerproof.py``, copied alone
to a directory and run by a bare Python) on an export.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jinsuan.contract import ledgerproof
from jinsuan.kernel import ledger
from jinsuan.kernel.errors import Invalid
from jinsuan.kernel.ledger import Move

PROOF = Path(ledgerproof.__file__)


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return ledger.signing_key(tmp_path / "ledger.pem")


def post(conn: psycopg.Connection, *moves: Move, actor: str = "test") -> list[dict]:
    with conn.transaction():
        return ledger.append(conn, moves, actor)


@pytest.fixture
def chain(conn: psycopg.Connection, key: Ed25519PrivateKey) -> psycopg.Connection:
    """Five entries: a pool funded, two vouchers issued from it, one redemption, one expiry;
    a checkpoint after the fourth and one after the fifth."""
    post(conn, Move("pool.fund", "fund:policy", "pool:2025", Decimal("1000.00")))
    post(conn, Move("voucher.issue", "pool:2025", "voucher:1", Decimal("300.00"), {"voucher": 1}),
         Move("voucher.issue", "pool:2025", "voucher:2", Decimal("200.50"), {"voucher": 2}))
    post(conn, Move("voucher.redeem", "voucher:1", "receivable:provider:7", Decimal("120.25"),
                    {"usage_record": 42, "名": "值"}))
    ledger.checkpoint(conn, key)
    post(conn, Move("voucher.expire", "voucher:2", "pool:2025", Decimal("200.50")))
    ledger.checkpoint(conn, key)
    return conn


def tamper(conn: psycopg.Connection, sql: str, *params: object) -> None:
    """Run ``sql`` with the ledger's triggers off, as only a superuser can."""
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(sql, params)


def problems(conn: psycopg.Connection, key: Ed25519PrivateKey) -> list[str]:
    return [str(p) for p in ledger.verify(conn, key.public_key())]


def run_standalone(conn: psycopg.Connection, key: Ed25519PrivateKey, tmp_path: Path,
                   ) -> subprocess.CompletedProcess[str]:
    """Export, and run the standalone verifier as an auditor would: the one file, copied alone
    into an empty directory, run by Python with the platform's packages out of reach."""
    auditor = tmp_path / "auditor"
    auditor.mkdir(exist_ok=True)
    shutil.copy(PROOF, auditor / "ledgerproof.py")
    with (auditor / "ledger.jsonl").open("w", encoding="utf-8") as out:
        ledger.export(conn, out)
    (auditor / "platform.pub").write_bytes(key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return subprocess.run(
        [sys.executable, "-I", "ledgerproof.py", "ledger.jsonl", "--public-key", "platform.pub"],
        cwd=auditor, capture_output=True, text=True, timeout=60, check=False)


def test_balances_are_derived_from_the_moves(chain: psycopg.Connection) -> None:
    # pool: +1000.00 - 300.00 - 200.50 + 200.50 (expiry) = 700.00
    assert ledger.balance(chain, "pool:2025") == Decimal("700.00")
    # voucher 1: +300.00 - 120.25 = 179.75; voucher 2: +200.50 - 200.50 = 0
    assert ledger.balances(chain, "voucher:") == {"voucher:1": Decimal("179.75"),
                                                  "voucher:2": Decimal("0.00")}
    assert ledger.balance(chain, "receivable:provider:7") == Decimal("120.25")
    # double entry: every account together sums to zero
    assert sum(ledger.balances(chain, "").values()) == 0
    head = chain.execute("SELECT seq, sha256 FROM ledger_head").fetchone()
    last = chain.execute("SELECT seq, sha256 FROM ledger_entries ORDER BY seq DESC LIMIT 1"
                         ).fetchone()
    assert head == last and head[0] == 5


def test_an_untouched_chain_verifies_in_the_database_and_standalone(
        chain: psycopg.Connection, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    assert problems(chain, key) == []
    result = run_standalone(chain, key, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 entries, 2 checkpoints (latest covers entry 5): OK" in result.stdout


def test_amounts_are_positive_fen(conn: psycopg.Connection) -> None:
    for amount in ("0.00", "-1.00", "1.005"):
        with pytest.raises(Invalid):
            post(conn, Move("x", "a", "b", Decimal(amount)))
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 0


def test_no_role_may_update_or_delete_an_entry(chain: psycopg.Connection) -> None:
    # the owner (here a superuser) is stopped by the trigger ...
    for sql in ("UPDATE ledger_entries SET amount = 1 WHERE seq = 1",
                "DELETE FROM ledger_entries WHERE seq = 5", "TRUNCATE ledger_entries CASCADE",
                "DELETE FROM ledger_checkpoints"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"), \
                chain.transaction():
            chain.execute(sql)
    # ... and a non-superuser owner by its privileges, before any trigger runs
    with chain.transaction(force_rollback=True):
        chain.execute("CREATE ROLE jinsuan_test_ledger_owner NOLOGIN")
        chain.execute("GRANT jinsuan_test_ledger_owner TO CURRENT_USER")
        chain.execute("ALTER TABLE ledger_entries OWNER TO jinsuan_test_ledger_owner")
        chain.execute("SET LOCAL ROLE jinsuan_test_ledger_owner")
        for sql in ("UPDATE ledger_entries SET amount = 1", "DELETE FROM ledger_entries"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied for table ledger_entries"), \
                    chain.transaction():
                chain.execute(sql)
        assert chain.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 5


TAMPERING = {
    "an amount changed": (
        ["UPDATE ledger_entries SET amount = 9120.25 WHERE seq = 4"],
        ["entry 4: its fields do not hash to its stored sha256"]),
    "an entry changed with its hash recomputed": (
        ["UPDATE ledger_entries SET to_account = 'receivable:provider:8' WHERE seq = 4",
         "RECOMPUTE 4"],
        ["entry 5: its prev hash is not the hash of the entry before it",
         "checkpoint at entry 4"]),
    "a middle entry deleted": (
        ["DELETE FROM ledger_entries WHERE seq = 3"],
        ["entry 4: out of sequence: expected entry 3", "entry 4: its prev hash"]),
    "the last entry deleted": (
        ["DELETE FROM ledger_entries WHERE seq = 5"],
        ["entry 5: checkpoint at entry 5", "only 4 are here (entries were deleted)"]),
    "an entry inserted": (
        ["INSERT INTO ledger_entries SELECT 6, at, 'voucher.redeem', 'voucher:1',"
         " 'receivable:provider:7', 10, '{}', 'x', sha256, repeat('a', 64)"
         " FROM ledger_entries WHERE seq = 5",
         "UPDATE ledger_entries SET seq = seq + 10 WHERE seq >= 5",
         "UPDATE ledger_entries SET seq = 5 WHERE seq = 16",
         "UPDATE ledger_entries SET seq = 6 WHERE seq = 15"],
        ["entry 5: its prev hash is not the hash of the entry before it"]),
    "two entries swapped": (
        ["UPDATE ledger_entries SET seq = 100 WHERE seq = 2",
         "UPDATE ledger_entries SET seq = 2 WHERE seq = 3",
         "UPDATE ledger_entries SET seq = 3 WHERE seq = 100"],
        ["entry 2: its prev hash", "entry 3: its prev hash"]),
    "a checkpoint forged": (
        ["UPDATE ledger_checkpoints SET head = repeat('b', 64) WHERE seq = 4"],
        ["checkpoint at entry 4", "the signature is not valid"]),
}


def _recompute(conn: psycopg.Connection, seq: int) -> None:
    """What a careful forger does: recompute the changed entry's hash (and the head)."""
    entry = next(e for e in ledger.entries(conn) if e["seq"] == seq)
    tamper(conn, "UPDATE ledger_entries SET sha256 = %s WHERE seq = %s",
           ledgerproof.entry_hash(entry), seq)


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampering_is_found_and_named(how: str, chain: psycopg.Connection,
                                      key: Ed25519PrivateKey, tmp_path: Path) -> None:
    statements, expected = TAMPERING[how]
    for sql in statements:
        if sql.startswith("RECOMPUTE"):
            _recompute(chain, int(sql.split()[1]))
        else:
            tamper(chain, sql)
    found = "\n".join(problems(chain, key))
    for text in expected:
        assert text in found, found
    result = run_standalone(chain, key, tmp_path)
    assert result.returncode == 1
    for text in expected:
        assert text in result.stdout, result.stdout
    assert "FAILED" in result.stdout


def test_a_rewritten_chain_does_not_match_the_signed_head(
        chain: psycopg.Connection, key: Ed25519PrivateKey) -> None:
    """A superuser rewrites entry 2 and recomputes every hash after it: the chain is consistent
    again, but no longer passes through the heads the platform signed."""
    tamper(chain, "UPDATE ledger_entries SET amount = 30 WHERE seq = 2")
    for seq in range(2, 6):
        prev = chain.execute("SELECT sha256 FROM ledger_entries WHERE seq = %s",
                             (seq - 1,)).fetchone()[0]
        tamper(chain, "UPDATE ledger_entries SET prev = %s WHERE seq = %s", prev, seq)
        _recompute(chain, seq)
    found = problems(chain, key)
    assert [p for p in found if "prev" in p or "stored sha256" in p] == []
    assert any("checkpoint at entry 4" in p and "rewritten" in p for p in found)
    assert any("checkpoint at entry 5" in p and "rewritten" in p for p in found)


def test_a_checkpoint_by_another_key_is_refused(chain: psycopg.Connection,
                                                key: Ed25519PrivateKey) -> None:
    ledger.checkpoint(chain, Ed25519PrivateKey.generate())
    assert any("names key" in p for p in problems(chain, key))


@pytest.mark.parametrize("line", [
    "not json", '{"seq": 1}', '{"type": "other"}', "[1, 2]", '{"type": "entry"}',
    '{"type": "checkpoint", "seq": "1", "head": "", "at": "", "key_id": "", "signature": ""}',
    '{"type": "checkpoint", "seq": 1, "head": "", "at": "", "key_id": "", "signature": "",'
    ' "extra": 1}'])
def test_the_standalone_verifier_refuses_a_malformed_export(line: str, tmp_path: Path,
                                                            key: Ed25519PrivateKey) -> None:
    (tmp_path / "bad.jsonl").write_text(line + "\n", encoding="utf-8")
    (tmp_path / "platform.pub").write_bytes(key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    result = subprocess.run(
        [sys.executable, str(PROOF), str(tmp_path / "bad.jsonl"), "--public-key",
         str(tmp_path / "platform.pub")], capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 2
    assert "line 1" in result.stderr


def test_the_export_is_the_entries_as_hashed(chain: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with path.open("w", encoding="utf-8") as out:
        assert ledger.export(chain, out) == (5, 2)
    entries, checkpoints = ledgerproof.read_export(path.read_text(encoding="utf-8").splitlines())
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[3]["ref"] == {"usage_record": 42, "名": "值"}
    assert entries[3]["amount"] == "120.25"
    assert all(ledgerproof.entry_hash(e) == e["sha256"] for e in entries)
    assert [c["seq"] for c in checkpoints] == [4, 5]
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["prev"] == "0" * 64


@pytest.fixture
def connections(database_url: str) -> Iterator[list[psycopg.Connection]]:
    opened = [psycopg.connect(database_url, autocommit=True) for _ in range(8)]
    try:
        yield opened
    finally:
        for c in opened:
            c.close()


def test_concurrent_writers_keep_one_chain(connections: list[psycopg.Connection],
                                           key: Ed25519PrivateKey) -> None:
    """Eight sessions append 25 entries each at once: 200 entries numbered 1..200, one chain."""
    start = threading.Barrier(len(connections))
    failures: list[BaseException] = []

    def writer(number: int, conn: psycopg.Connection) -> None:
        try:
            start.wait()
            for i in range(25):
                post(conn, Move("test", "pool:2025", f"voucher:{number}", Decimal("1.01"),
                                {"i": i}), actor=f"writer {number}")
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n, c)) for n, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    conn = connections[0]
    ledger.checkpoint(conn, key)
    assert problems(conn, key) == []
    assert [r[0] for r in conn.execute("SELECT seq FROM ledger_entries ORDER BY seq")] == list(
        range(1, 201))
    assert ledger.balance(conn, "pool:2025") == Decimal("-202.00")


def test_the_ledger_from_the_command_line(chain: psycopg.Connection, database_url: str,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          ) -> None:
    """``jinsuan ledger``: the platform's key in the data directory signs; ``verify`` passes,
    then fails with the entry named once an amount is changed; ``export`` feeds the verifier."""
    from typer.testing import CliRunner

    from jinsuan.cli import app

    runner = CliRunner()
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("JINSUAN_DATA_DIR", str(tmp_path))
    public = runner.invoke(app, ["ledger", "public-key"])
    assert public.exit_code == 0 and public.output.startswith("-----BEGIN PUBLIC KEY-----")
    assert (tmp_path / "ledger-ed25519.pem").stat().st_mode & 0o777 == 0o600
    signed = runner.invoke(app, ["ledger", "checkpoint"])
    assert signed.exit_code == 0 and "signed entry 5" in signed.output
    # the chain fixture's checkpoints were signed by another key, which verify names
    (tmp_path / "platform.pub").write_text(public.output, encoding="utf-8")
    result = runner.invoke(app, ["ledger", "verify"])
    assert result.exit_code == 1 and "names key" in result.output
    export = runner.invoke(app, ["ledger", "export", "--out", str(tmp_path / "l.jsonl")])
    assert export.exit_code == 0
    entries, signed_heads = ledgerproof.read_export(
        (tmp_path / "l.jsonl").read_text(encoding="utf-8").splitlines())
    assert len(entries) == 5 and len(signed_heads) == 3
    tamper(chain, "UPDATE ledger_entries SET amount = 1 WHERE seq = 2")
    again = runner.invoke(app, ["ledger", "verify", "--public-key", str(tmp_path / "platform.pub")])
    assert again.exit_code == 1 and "entry 2: its fields do not hash" in again.output


def test_the_background_checkpoint_signs_only_a_new_head(db, settings) -> None:
    """``collectors.jobs.checkpoint_ledger``: nothing to sign on an empty ledger's first head
    once signed; a new entry, a new checkpoint; no new entry, none."""
    from collectors.jobs import checkpoint_ledger

    def count() -> int:
        with db.pool.connection() as c:
            return c.execute("SELECT count(*) FROM ledger_checkpoints").fetchone()[0]

    checkpoint_ledger(db, settings)
    assert count() == 1  # the empty chain's head (entry 0) is signed once
    checkpoint_ledger(db, settings)
    assert count() == 1
    with db.pool.connection() as c:
        post(c, Move("pool.fund", "fund:policy", "pool:2025", Decimal("5.00")))
    checkpoint_ledger(db, settings)
    assert count() == 2
    with db.pool.connection() as c:
        assert ledger.verify(c, ledger.signing_key(settings.ledger_key_path()).public_key()) == []
