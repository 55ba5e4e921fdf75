"""The money ledger's proof: an entry's canonical bytes, the hash chain, signed checkpoints.

This file is the one definition of what a ledger entry's hash covers and what a checkpoint
signs, used by the platform (``jinsuan ledger verify``) and by an auditor who trusts neither
the platform nor its database. It needs only Python's standard library and ``cryptography``,
so an auditor copies this one file and runs::

    python ledgerproof.py ledger.jsonl --public-key platform-ledger.pub

on an export (``jinsuan ledger export``) with the platform's public key obtained out of band.

**An entry** moves ``amount`` yuan from one account to another. Its hash is the SHA-256 of the
canonical JSON of its fields (keys sorted, no spaces, UTF-8), which include ``prev``, the hash of
the entry before it (64 zeros for the first): changing, deleting, inserting or reordering an
entry breaks the chain at that entry or the next.

**A checkpoint** is the platform's Ed25519 signature over the head of the chain (its ``seq`` and
hash) at a moment. A rewrite of the whole chain from some entry on (which a database superuser
could do, recomputing every hash) no longer ends in a head a checkpoint signed: the verifier
names the first checkpoint that disagrees.

An export is JSON Lines: ``{"type": "entry", ...fields, "sha256": ...}`` lines in ``seq`` order,
and ``{"type": "checkpoint", "seq", "head", "at", "key_id", "signature"}`` lines (signature in
base64).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

GENESIS = "0" * 64
"""The ``prev`` of the first entry."""

ENTRY_FIELDS = ("seq", "at", "kind", "from_account", "to_account", "amount", "ref", "actor",
                "prev")
"""What an entry's hash covers: every field but the hash itself."""


def _canonical_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_entry(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash is taken over. ``amount`` is a string of yuan to the fen
    (``"1250.00"``), ``at`` an ISO 8601 UTC instant with microseconds, ``ref`` a JSON object."""
    return _canonical_json({name: entry[name] for name in ENTRY_FIELDS})


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_entry(entry)).hexdigest()


def checkpoint_message(seq: int, head: str, at: str) -> bytes:
    """What a checkpoint's signature signs: the chain's length and head hash at ``at``."""
    return _canonical_json({"jinsuan_ledger_checkpoint": 1, "seq": seq, "head": head, "at": at})


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name for a signing key: the first 16 hex digits of its raw bytes' SHA-256."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the verifier found wrong; ``seq`` is the entry or checkpoint it concerns."""

    seq: int | None
    what: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.what}" if self.seq is not None else self.what


def verify(entries: Iterable[Mapping[str, Any]], checkpoints: Iterable[Mapping[str, Any]],
           public_key: Ed25519PublicKey) -> list[Problem]:
    """Every problem with a chain of ``entries`` (in stored order) and its ``checkpoints``.

    An empty list means: the entries form one unbroken chain from the first, each stored hash
    is the hash of its fields, and every checkpoint is signed by ``public_key`` and names a head
    the chain passes through.
    """
    problems: list[Problem] = []
    heads: dict[int, str] = {}
    expected_seq, prev = 1, GENESIS
    for entry in entries:
        seq = entry["seq"]
        if seq != expected_seq:
            problems.append(Problem(seq, f"out of sequence: expected entry {expected_seq}"
                                    " (an entry was deleted, inserted or moved)"))
        if entry["prev"] != prev:
            problems.append(Problem(seq, "its prev hash is not the hash of the entry before it"
                                    " (an entry before it was changed, deleted or moved)"))
        recomputed = entry_hash(entry)
        if entry["sha256"] != recomputed:
            problems.append(Problem(seq, "its fields do not hash to its stored sha256"
                                    " (the entry was changed)"))
        heads[seq] = entry["sha256"]
        expected_seq, prev = seq + 1, entry["sha256"]
    expected_key = key_id(public_key)
    for checkpoint in checkpoints:
        seq, head = checkpoint["seq"], checkpoint["head"]
        label = f"checkpoint at entry {seq} ({checkpoint['at']})"
        if checkpoint["key_id"] != expected_key:
            problems.append(Problem(None, f"{label} names key {checkpoint['key_id']}, not the"
                                    f" given public key {expected_key}"))
            continue
        try:
            public_key.verify(base64.b64decode(checkpoint["signature"]),
                              checkpoint_message(seq, head, checkpoint["at"]))
        except (InvalidSignature, ValueError):
            problems.append(Problem(None, f"{label}: the signature is not valid (forged or"
                                    " altered checkpoint)"))
            continue
        if seq == 0:
            continue
        if seq not in heads:
            problems.append(Problem(seq, f"{label} signed a chain of {seq} entries; only"
                                    f" {len(heads)} are here (entries were deleted)"))
        elif heads[seq] != head:
            problems.append(Problem(seq, f"{label} signed head {head[:16]}…, the chain has"
                                    f" {heads[seq][:16]}… (entries up to it were rewritten)"))
    return problems


_SHAPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "entry": {"seq": int, "at": str, "kind": str, "from_account": str, "to_account": str,
              "amount": str, "ref": dict, "actor": str, "prev": str, "sha256": str},
    "checkpoint": {"seq": int, "head": str, "at": str, "key_id": str, "signature": str},
}


def read_export(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The entries and checkpoints of a JSON Lines export, each in file order; a line that is
    not a well-formed record is a ``ValueError`` naming the line."""
    found: dict[str, list[dict[str, Any]]] = {"entry": [], "checkpoint": []}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"line {number}: not JSON") from None
        kind = record.pop("type", None) if isinstance(record, dict) else None
        if kind not in _SHAPES:
            raise ValueError(f"line {number}: not a ledger entry or checkpoint record")
        shape = _SHAPES[kind]
        wrong = sorted(name for name, typ in shape.items()
                       if not isinstance(record.get(name), typ)
                       or isinstance(record.get(name), bool))
        if wrong or set(record) != set(shape):
            raise ValueError(f"line {number}: a {kind} record with missing, extra or mistyped"
                             f" fields ({', '.join(wrong or sorted(set(record) ^ set(shape)))})")
        found[kind].append(record)
    return found["entry"], found["checkpoint"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Verify an exported jinsuan ledger against the platform's public key.")
    parser.add_argument("export", type=Path, help="the JSON Lines file `jinsuan ledger export`"
                        " wrote")
    parser.add_argument("--public-key", type=Path, required=True,
                        help="the platform's Ed25519 public key (PEM), obtained out of band")
    args = parser.parse_args(argv)
    public_key = load_pem_public_key(args.public_key.read_bytes())
    if not isinstance(public_key, Ed25519PublicKey):
        print(f"{args.public_key}: not an Ed25519 public key", file=sys.stderr)
        return 2
    try:
        with args.export.open(encoding="utf-8") as lines:
            entries, checkpoints = read_export(lines)
    except ValueError as exc:
        print(f"{args.export}: {exc}", file=sys.stderr)
        return 2
    problems = verify(entries, checkpoints, public_key)
    for problem in problems:
        print(problem)
    if not checkpoints:
        print("warning: no checkpoint in the export: the chain is consistent but anchored to"
              " nothing the platform signed")
    covered = max((c["seq"] for c in checkpoints), default=0)
    print(f"{len(entries)} entries, {len(checkpoints)} checkpoints"
          f" (latest covers entry {covered}): " + ("FAILED" if problems else "OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
