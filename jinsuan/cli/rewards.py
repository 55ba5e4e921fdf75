"""``jinsuan rewards``: assess, list, explain and approve the policy's rewards through the REST
API, with the caller's key (a bureau key assesses and moves awards; an operator's reads its own).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from jinsuan.cli.client import Key, Url, call, call_bytes, console

rewards_app = typer.Typer(help="Rewards: assess a year, list awards, explain, approve, pay,"
                          " export.",
                          no_args_is_help=True)

Year = Annotated[int, typer.Option(help="The Asia/Shanghai policy year.")]


def _mark(source: str) -> Text:
    return Text(source, {"assumption": "yellow", "declared": "cyan"}.get(source, ""))


@rewards_app.command("assess")
def assess(url: Url, key: Key, year: Year,
           measure: Annotated[str | None, typer.Option(
               help="5b, 4, 1, 2, 3, 6 or 10; all by default.")] = None) -> None:
    """Assess a year from the platform's measurements; re-running on unchanged data writes
    nothing new."""
    body: dict[str, Any] = {"year": year, "measure": measure}
    for done in call("POST", url, key, "/v1/rewards/assessments", json=body):
        state = "new" if done["created"] else "unchanged, already stored"
        console.print(f"measure {done['measure']} {done['year']}: assessment {done['id']}"
                      f" ({state}); {done['awards']} awards, {done['total']} yuan in all;"
                      f" inputs {done['inputs_sha256'][:16]}…, policy {done['policy']}")
        for diff in done["differences"]:
            centre = f" / {diff['data_centre']}" if diff["data_centre"] else ""
            console.print(f"  changed since assessment {diff['previous_assessment']}:"
                          f" {diff['enterprise']}{centre} {diff['before']} → {diff['after']}")


@rewards_app.command("awards")
def awards(url: Url, key: Key, year: Year,
           measure: Annotated[str | None, typer.Option()] = None) -> None:
    """The awards of the latest assessments of a year."""
    params = {"year": year, **({"measure": measure} if measure else {})}
    table = Table("id", "measure", "enterprise", "data centre", "yuan", "state", "why",
                  "rests on assumptions")
    for award in call("GET", url, key, "/v1/rewards/awards", params=params):
        table.add_row(str(award["id"]), award["measure"], award["enterprise"],
                      award["data_centre"] or "", award["amount"], award["state"],
                      "; ".join(award["reasons"]), ", ".join(award["assumptions"]))
    console.print(table)


@rewards_app.command("explain")
def explain(url: Url, key: Key, year: Year,
            enterprise: Annotated[str, typer.Option()],
            measure: Annotated[str, typer.Option(help="5b, 4, 1, 2, 3, 6 or 10.")],
            hours: Annotated[bool, typer.Option(help="List every rollup row behind it.")]
            = False) -> None:
    """Trace an award down to its sites, hours, rollup rows and policy parameters."""
    found = call("GET", url, key, "/v1/rewards/explain",
                 params={"year": year, "enterprise": enterprise, "measure": measure,
                         "hours": hours})
    head = found["assessment"]
    console.print(Text.assemble((found["measure"]["title"], "bold"), f", {enterprise}, {year}"))
    console.print(f"assessment {head['id']} of {head['created_at']}: inputs sha256"
                  f" {head['inputs_sha256']}, policy {head['policy']} (sha256"
                  f" {head['policy_sha256']}), code {head['code_version']}")
    console.print(f"basis: {found['measure']['basis']}")
    console.print(f"rounding: {head['rounding']}")
    parameters = Table("parameter", "value", "unit", "per", "source", "note")
    for p in found["parameters"]:
        parameters.add_row(p["name"], p["value"], p["unit"], p["per"],
                           _mark("assumption" if p["assumption"] else "policy"), p["note"])
    console.print(parameters)
    for award in found["awards"]:
        centre = f" — data centre {award['data_centre']}" if award["data_centre"] else ""
        console.print(Text.assemble((f"\naward {award['id']}{centre}: {award['amount']} yuan"
                                     f" ({award['state']})", "bold"),
                                    f": {'; '.join(award['reasons'])}"))
        figures = Table("figure", "value", "source", "how")
        for f in award["figures"]:
            figures.add_row(f["name"], f["value"], _mark(f["source"]), f["detail"])
        console.print(figures)
    sites = Table("site", "city", "data centre", "rollup rows", "rows with quality flags")
    for s in found["sites"]:
        sites.add_row(s["name"], s["city"], s["data_centre"], str(s["rollup_rows"]),
                      str(s["rows_with_quality_flags"]))
    console.print(sites)
    for d in found["declarations"]:
        console.print(f"declaration {d['id']} ({d['kind']}, {d['data_centre'] or 'enterprise'}):"
                      f" {d['value']}; evidence {d['evidence']}")
    if found["hours"] is not None:
        rows = Table("site", "hour (UTC)", "PFlops", "of which estimated", "accel. coverage",
                     "IT kWh", "facility kWh", "IT cov.", "facility cov.", "racks", "quality")
        for h in found["hours"]:
            rows.add_row(str(h["site_id"]), h["hour"], h["fp16_pflops"],
                         h["fp16_pflops_estimated"], h["coverage_accelerators"],
                         h["it_kwh"] or "", h["facility_kwh"] or "", h["coverage_it"],
                         h["coverage_facility"], str(h["racks"]), ",".join(h["quality"]))
        console.print(rows)


def _step(step: str, url: str, key: str, award: int, **body: Any) -> None:
    done = call("POST", url, key, f"/v1/rewards/awards/{award}/{step}", json=body or None)
    console.print(f"award {done['id']}: {done['state']}, {done['amount']} yuan")


@rewards_app.command("propose")
def propose(url: Url, key: Key, award: Annotated[int, typer.Argument()]) -> None:
    """Propose an assessed award (the maker's step)."""
    _step("propose", url, key, award)


@rewards_app.command("approve")
def approve(url: Url, key: Key, award: Annotated[int, typer.Argument()]) -> None:
    """Approve a proposed award with another bureau key than the proposer's."""
    _step("approve", url, key, award)


@rewards_app.command("pay")
def pay(url: Url, key: Key, award: Annotated[int, typer.Argument()],
        reference: Annotated[str, typer.Option(help="The payment's reference.")]) -> None:
    """Record that an approved award was paid."""
    _step("pay", url, key, award, reference=reference)


class Format(StrEnum):
    CSV = "csv"
    XLSX = "xlsx"
    PDF = "pdf"


EXPORTS = {Format.CSV: "/v1/rewards/awards.csv", Format.XLSX: "/v1/rewards/awards.xlsx",
           Format.PDF: "/v1/rewards/report.pdf"}


@rewards_app.command("export")
def export(url: Url, key: Key, year: Year,
           kind: Annotated[Format, typer.Option("--format", help="csv or xlsx: the awards;"
                                                " pdf: the year's summary.")],
           out: Annotated[Path, typer.Option("--out", help="The file to write.", dir_okay=False,
                                             writable=True)]) -> None:
    """Write the awards of a year as CSV or XLSX, or the year's PDF summary; an operator's key
    gets its own enterprise's only."""
    content = call_bytes("GET", url, key, EXPORTS[kind], params={"year": year})
    out.write_bytes(content)
    console.print(f"wrote {out}: {kind.value}, {len(content):,} bytes")
