"""``jinsuan federation``: register lower-tier platforms (an admin, through the API) and print
this platform's forwarding public key for the upper tier's admin (docs/federation.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from jinsuan.cli.client import Key, Url, call, console

federation_app = typer.Typer(
    help="Federation: site-hours forwarded, signed, to a higher-tier platform.",
    no_args_is_help=True)

KeyFile = Annotated[Path | None, typer.Option(
    "--key-file", envvar="JINSUAN_FEDERATION_KEY_FILE",
    help="The forwarding key (PEM); default: federation-ed25519.pem in the data directory."
    " Made on first use.")]


@federation_app.command("add-peer")
def add_peer(name: Annotated[str, typer.Argument(help="The lower-tier platform's name.")],
             public_key: Annotated[str, typer.Argument(
                 help="Its forwarding public key: base64, as its `jinsuan federation"
                 " public-key` prints it.")],
             url: Url, key: Key) -> None:
    """Register a lower-tier platform whose signed site-hours this platform accepts."""
    peer = call("POST", url, key, "/v1/federation/peers",
                json={"name": name, "public_key": public_key})
    console.print(f"registered peer {peer['name']} (id {peer['id']})")


@federation_app.command("peers")
def peers(url: Url, key: Key) -> None:
    """List the registered lower-tier platforms."""
    table = Table("name", "public key", "registered")
    for peer in call("GET", url, key, "/v1/federation/peers"):
        table.add_row(peer["name"], peer["public_key"], peer["created_at"])
    console.print(table)


@federation_app.command("public-key")
def public_key(key_file: KeyFile = None) -> None:
    """Print this platform's forwarding public key (base64), for the upper tier's admin."""
    from jinsuan.contract.signing import public_key_b64
    from jinsuan.kernel.ledger import signing_key
    from jinsuan.kernel.settings import Settings

    path = key_file or Settings(run_background_jobs=False).federation_key_path()
    print(public_key_b64(signing_key(path)))
