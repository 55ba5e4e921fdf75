"""The money ledger in the store: append, derive balances, checkpoint, verify, export.

One append-only, double-entry ledger serves vouchers and rewards alike: each entry moves an
amount from one account to another and is never updated; an account's balance is what came
in minus what went out. The proof format (what a hash covers, what a checkpoint signs) is
:mod:`jinsuan.contract.ledgerproof`; this module keeps the chain in PostgreSQL.

Accounts are named ``kind:detail`` (``pool:2025``, ``voucher:17``, ``receivable:provider:3``);
the rooms that post entries document theirs.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from jinsuan.contract import ledgerproof
from jinsuan.contract.money import is_fen
from jinsuan.kernel.auth import Principal
from jinsuan.kernel.errors import Invalid


@dataclass(frozen=True, slots=True)
class Move:
    """One entry to append: ``amount`` yuan (to the fen, > 0) from one account to another."""

    kind: str
    from_account: str
    to_account: str
    amount: Decimal
    ref: dict[str, Any] = field(default_factory=dict)


def key_actor(principal: Principal) -> str:
    """How an entry names the API key that made it (``actor``)."""
    return f"api_key:{principal.key_id}"


def lock(conn: psycopg.Connection) -> tuple[int, str]:
    """Take the ledger's lock for the rest of the current transaction; return the head.

    Every append takes it, so a caller that checks a balance after taking it and then appends
    (issuing from a pool that must not overdraw) cannot be overtaken by another writer.
    """
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("the ledger is locked inside a transaction only")
    row = conn.execute("SELECT seq, sha256 FROM ledger_head FOR UPDATE").fetchone()
    assert row is not None  # the migration inserts the one row
    return row[0], row[1]


def append(conn: psycopg.Connection, moves: Sequence[Move], actor: str) -> list[dict[str, Any]]:
    """Append ``moves`` in order as chained entries, in the caller's transaction; return them."""
    seq, prev = lock(conn)
    at = _instant(conn.execute("SELECT clock_timestamp()").fetchone()[0])  # type: ignore[index]
    written = []
    for move in moves:
        if not (move.amount > 0 and is_fen(move.amount)):
            raise Invalid(f"a ledger amount is > 0 yuan to the fen, not {move.amount}",
                          field="amount")
        seq += 1
        entry = {"seq": seq, "at": at, "kind": move.kind, "from_account": move.from_account,
                 "to_account": move.to_account, "amount": f"{move.amount:.2f}",
                 "ref": move.ref, "actor": actor, "prev": prev}
        entry["sha256"] = prev = ledgerproof.entry_hash(entry)
        conn.execute(
            "INSERT INTO ledger_entries (seq, at, kind, from_account, to_account, amount, ref,"
            " actor, prev, sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (seq, at, move.kind, move.from_account, move.to_account, move.amount,
             json.dumps(move.ref), actor, entry["prev"], entry["sha256"]),
        )
        written.append(entry)
    conn.execute("UPDATE ledger_head SET seq = %s, sha256 = %s", (seq, prev))
    return written


def balance(conn: psycopg.Connection, account: str) -> Decimal:
    """What came into ``account`` minus what went out of it, over the whole ledger."""
    row = conn.execute(
        "SELECT coalesce(sum(amount) FILTER (WHERE to_account = %(a)s), 0)"
        " - coalesce(sum(amount) FILTER (WHERE from_account = %(a)s), 0)"
        " FROM ledger_entries WHERE to_account = %(a)s OR from_account = %(a)s",
        {"a": account},
    ).fetchone()
    return row[0] if row else Decimal("0.00")  # type: ignore[return-value]


def balances(conn: psycopg.Connection, prefix: str) -> dict[str, Decimal]:
    """Every account named ``prefix…`` that an entry touched → its balance."""
    rows = conn.execute(
        "SELECT account, sum(delta) FROM ("
        "  SELECT to_account AS account, amount AS delta FROM ledger_entries"
        "  WHERE starts_with(to_account, %(p)s)"
        "  UNION ALL SELECT from_account, -amount FROM ledger_entries"
        "  WHERE starts_with(from_account, %(p)s)) moves GROUP BY account ORDER BY account",
        {"p": prefix},
    ).fetchall()
    return {account: total for account, total in rows}


def entries(conn: psycopg.Connection) -> Iterator[dict[str, Any]]:
    """Every entry in ``seq`` order, as its hash sees it (plus the stored ``sha256``); read in
    batches by a server-side cursor when called inside a transaction."""
    in_transaction = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    with conn.cursor(name="ledger_entries") if in_transaction else conn.cursor() as cur:
        cur.execute("SELECT seq, at, kind, from_account, to_account, amount, ref, actor, prev,"
                    " sha256 FROM ledger_entries ORDER BY seq")
        for row in cur:
            yield {"seq": row[0], "at": _instant(row[1]), "kind": row[2],
                   "from_account": row[3], "to_account": row[4], "amount": f"{row[5]:.2f}",
                   "ref": row[6], "actor": row[7], "prev": row[8], "sha256": row[9]}


def checkpoints(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT seq, head, at, key_id, signature FROM ledger_checkpoints ORDER BY id"
    ).fetchall()
    return [{"seq": r[0], "head": r[1], "at": r[2], "key_id": r[3], "signature": r[4]}
            for r in rows]


def checkpoint(conn: psycopg.Connection, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign the chain's current head and store the signature; return the checkpoint."""
    with conn.transaction():
        seq, head = lock(conn)
        at = _instant(datetime.now(UTC))
        signed = {"seq": seq, "head": head, "at": at,
                  "key_id": ledgerproof.key_id(key.public_key()),
                  "signature": base64.b64encode(
                      key.sign(ledgerproof.checkpoint_message(seq, head, at))).decode()}
        conn.execute(
            "INSERT INTO ledger_checkpoints (seq, head, at, key_id, signature)"
            " VALUES (%(seq)s, %(head)s, %(at)s, %(key_id)s, %(signature)s)", signed)
    return signed


def verify(conn: psycopg.Connection, public_key: Ed25519PublicKey) -> list[ledgerproof.Problem]:
    """Check the stored chain against the stored checkpoints (:func:`ledgerproof.verify`)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return ledgerproof.verify(entries(conn), checkpoints(conn), public_key)


def export(conn: psycopg.Connection, out: IO[str]) -> tuple[int, int]:
    """Write every entry, then every checkpoint, as JSON Lines; return how many of each."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        count = 0
        for entry in entries(conn):
            out.write(json.dumps({"type": "entry", **entry}, ensure_ascii=False) + "\n")
            count += 1
        signed = checkpoints(conn)
    for record in signed:
        out.write(json.dumps({"type": "checkpoint", **record}) + "\n")
    return count, len(signed)


def signing_key(path: Path) -> Ed25519PrivateKey:
    """The platform's ledger signing key at ``path``, created (mode 0600) on first use."""
    if path.exists():
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise Invalid(f"{path} does not hold an Ed25519 private key",
                          field="ledger_key_file")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
