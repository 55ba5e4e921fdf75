"""``jinsuan voucher``: compute vouchers through the REST API, with the caller's key (a
dispatcher applies for its applicant; bureau keys review, approve and settle)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from jinsuan.cli.client import Key, Url, call, call_bytes, console, fail
from jinsuan.cli.rewards import Format

voucher_app = typer.Typer(help="Compute vouchers (算力券): apply, review, approve, statements.",
                          no_args_is_help=True)


def _evidence(paths: list[Path]) -> list[dict[str, str]]:
    """Each document named with its SHA-256; the files themselves stay with the applicant."""
    import hashlib

    papers = []
    for path in paths:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise fail(f"cannot read {path}: {exc}") from None
        papers.append({"name": path.name, "sha256": digest})
    return papers


@voucher_app.command("apply")
def apply(url: Url, key: Key,
          provider: Annotated[str, typer.Option(help="The Shanxi provider enterprise.")],
          contract: Annotated[str, typer.Option(help="The contract's id.")],
          amount: Annotated[str, typer.Option(help="The contract amount in yuan: 300000.00")],
          starts: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")],
          ends: Annotated[str, typer.Option(help="Last day, YYYY-MM-DD.")],
          evidence: Annotated[list[Path], typer.Option(
              help="A contract document (repeat); only its name and SHA-256 are sent.")],
          special: Annotated[str | None, typer.Option(
              help="The national major project or large-model R&D the 30% rate rests on.")]
          = None) -> None:
    """Apply for a voucher against a compute service contract."""
    body = {"provider": provider, "contract_id": contract, "amount": amount,
            "starts_on": starts, "ends_on": ends, "evidence": _evidence(evidence),
            "special": special is not None, "special_basis": special or ""}
    made = call("POST", url, key, "/v1/vouchers/applications", json=body)
    console.print(f"application {made['id']}")


@voucher_app.command("review")
def review(url: Url, key: Key, application: Annotated[int, typer.Argument()]) -> None:
    """Recommend an application (the first bureau key of two)."""
    call("POST", url, key, f"/v1/vouchers/applications/{application}/recommend")
    console.print(f"application {application} recommended; another bureau key approves it")


@voucher_app.command("approve")
def approve(url: Url, key: Key, application: Annotated[int, typer.Argument()]) -> None:
    """Approve a recommended application with another bureau key: the voucher is issued."""
    issued = call("POST", url, key, f"/v1/vouchers/applications/{application}/approve")
    console.print(f"voucher {issued['voucher']}: {issued['face_value']} yuan ({issued['why']})")


@voucher_app.command("decline")
def decline(url: Url, key: Key, application: Annotated[int, typer.Argument()],
            reason: Annotated[str, typer.Option()]) -> None:
    call("POST", url, key, f"/v1/vouchers/applications/{application}/decline",
         json={"reason": reason})
    console.print(f"application {application} declined")


@voucher_app.command("revoke")
def revoke(url: Url, key: Key, voucher: Annotated[int, typer.Argument()],
           reason: Annotated[str, typer.Option()]) -> None:
    """Revoke a voucher; its unspent balance returns to the pool."""
    back = call("POST", url, key, f"/v1/vouchers/{voucher}/revoke", json={"reason": reason})
    console.print(f"voucher {voucher} revoked; {back['returned_to_pool']} yuan back to the pool")


@voucher_app.command("list")
def list_(url: Url, key: Key) -> None:
    """The vouchers you may see: your applicant's, your enterprise's as provider, or all."""
    table = Table("id", "applicant", "provider", "contract", "face value", "balance", "valid",
                  "state")
    for v in call("GET", url, key, "/v1/vouchers"):
        table.add_row(str(v["id"]), v["applicant"], v["provider"], v["contract_id"],
                      v["face_value"], v["balance"], f"{v['valid_from']} .. {v['valid_until']}",
                      v["state"])
    console.print(table)


@voucher_app.command("show")
def show(url: Url, key: Key, voucher: Annotated[int, typer.Argument()]) -> None:
    """A voucher's statement: issued, every draw with its job and usage record, balance."""
    v = call("GET", url, key, f"/v1/vouchers/{voucher}")
    console.print(Text.assemble(
        (f"voucher {v['id']}", "bold"), f" of {v['applicant']} at {v['provider']}"
        f" (contract {v['contract_id']}, rate {v['rate']}): {v['face_value']} issued,"
        f" {v['drawn']} drawn, ", (str(v["balance"]), "bold"), f" left; {v['state']},"
        f" valid {v['valid_from']} .. {v['valid_until']}"))
    _draws(v["draws"])


@voucher_app.command("statement")
def statement(url: Url, key: Key,
              provider: Annotated[str | None, typer.Option(
                  help="The provider enterprise: what the bureau owes it for a period.")] = None,
              day: Annotated[str, typer.Option(help="Any day of the period, YYYY-MM-DD.")]
              = str(date.today()),
              applicant: Annotated[int | None, typer.Option(
                  help="An applicant's id: its vouchers, draws and balances.")] = None,
              kind: Annotated[Format | None, typer.Option(
                  "--format", help="Write the statement as a csv, xlsx or pdf file.")] = None,
              out: Annotated[Path | None, typer.Option(
                  help="The file to write (with --format).", dir_okay=False, writable=True)]
              = None) -> None:
    """A provider's statement for a settlement period, each draw traced, or an applicant's
    (--applicant, as a file); --format and --out write it as CSV, XLSX or PDF."""
    if (provider is None) == (applicant is None):
        raise fail("name one of --provider and --applicant")
    if (kind is None) != (out is None):
        raise fail("--format and --out go together")
    if kind is not None and out is not None:
        if provider is not None:
            path, params = "provider", {"enterprise": provider, "day": day}
        else:
            path, params = "applicant", {"applicant": str(applicant)}
        content = call_bytes("GET", url, key, f"/v1/vouchers/statements/{path}.{kind.value}",
                             params=params)
        out.write_bytes(content)
        console.print(f"wrote {out}: {kind.value}, {len(content):,} bytes")
        return
    if provider is None:
        raise fail("an applicant's statement is a file: give --format and --out")
    s = call("GET", url, key, "/v1/vouchers/statements/provider",
             params={"enterprise": provider, "day": day})
    console.print(Text.assemble((provider, "bold"), f", {s['period'][0]} .. {s['period'][1]}:"
                                f" {s['total']} drawn, {s['unsettled']} not yet settled"))
    _draws(s["draws"])


def _draws(draws: list[dict[str, Any]]) -> None:
    table = Table("usage record", "job", "usage cost", "drew", "why", "when")
    for d in draws:
        table.add_row(str(d["usage_record"]), d["job"], d["usage_cost"], d["amount"],
                      d["reason"], d["drawn_at"][:19])
    console.print(table)
