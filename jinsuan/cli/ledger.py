"""``jinsuan ledger``: verify, export and checkpoint the money ledger (docs/ledger.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from jinsuan.cli.admin import connection
from jinsuan.cli.client import console

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ledger_app = typer.Typer(help="The money ledger: append-only, hash-chained, signed.",
                         no_args_is_help=True)


def _key() -> Ed25519PrivateKey:
    from jinsuan.kernel.ledger import signing_key
    from jinsuan.kernel.settings import Settings

    return signing_key(Settings(run_background_jobs=False).ledger_key_path())


@ledger_app.command("verify")
def verify(public_key: Annotated[Path | None, typer.Option(
        help="Check against this Ed25519 public key (PEM) instead of the platform's own.")]
           = None) -> None:
    """Check the stored chain, entry by entry, against the signed checkpoints."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from jinsuan.kernel import ledger

    key = load_pem_public_key(public_key.read_bytes()) if public_key else _key().public_key()
    with connection() as conn:
        problems = ledger.verify(conn, key)  # type: ignore[arg-type]
        head = conn.execute("SELECT seq FROM ledger_head").fetchone()[0]  # type: ignore[index]
        signed = conn.execute("SELECT max(seq) FROM ledger_checkpoints").fetchone()[0]  # type: ignore[index]
    for problem in problems:
        console.print(str(problem), style="red")
    console.print(Text.assemble(f"{head} entries; the latest checkpoint covers"
                                f" {'none' if signed is None else f'entry {signed}'}:",
                                (" FAILED", "red") if problems else " OK"))
    if problems:
        raise typer.Exit(code=1)


@ledger_app.command("export")
def export(out: Annotated[Path | None, typer.Option(
        "--out", help="Write here instead of standard output.")] = None) -> None:
    """Write every entry and checkpoint as JSON Lines, for jinsuan/contract/ledgerproof.py."""
    from jinsuan.kernel import ledger

    with connection() as conn:
        if out is None:
            entries, signed = ledger.export(conn, sys.stdout)
        else:
            with out.open("w", encoding="utf-8") as target:
                entries, signed = ledger.export(conn, target)
    print(f"exported {entries} entries and {signed} checkpoints", file=sys.stderr)


@ledger_app.command("checkpoint")
def checkpoint() -> None:
    """Sign the chain's head now."""
    from jinsuan.kernel import ledger

    key = _key()
    with connection() as conn:
        signed = ledger.checkpoint(conn, key)
    console.print(f"signed entry {signed['seq']} head {signed['head']} with key"
                  f" {signed['key_id']}")


@ledger_app.command("public-key")
def public_key() -> None:
    """Print the platform's ledger public key (PEM), to hand to auditors out of band."""
    from jinsuan.kernel.ledger import public_pem

    typer.echo(public_pem(_key()), nl=False)
