"""``jinsuan evidence``: check a site's figures again against the signed reports the store
keeps (docs/metering.md, "Traceability"), on the platform's database."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from jinsuan.cli.admin import connection
from jinsuan.cli.client import console, fail

evidence_app = typer.Typer(help="The signed reports behind the figures.", no_args_is_help=True)

_WHEN = ("a day, YYYY-MM-DD (its midnight, Asia/Shanghai), or a moment with its time zone,"
         " e.g. 2026-11-01T08:00+08:00 or 2026-11-01T00:00Z")


def _moment(option: str, text: str) -> datetime:
    """A day (midnight Beijing time, as the policy's dates are) or an aware moment."""
    from jinsuan.contract.policytime import parse_moment

    try:
        return parse_moment(text)
    except ValueError as exc:
        raise fail(f"{option} {text!r} {exc}: give {_WHEN}") from None


@evidence_app.command("verify")
def verify(
    site: Annotated[str, typer.Option(help="The site's name.", show_default=False)],
    start: Annotated[str, typer.Option("--from", help=f"From: {_WHEN}.", show_default=False)],
    end: Annotated[str, typer.Option("--to", help=f"Up to, not including: {_WHEN}.",
                                     show_default=False)],
) -> None:
    """Verify every signature behind the site's samples in the range, compare the samples with
    what was signed, and recompute the hourly figures: exit 1 on any difference."""
    from collectors.evidence import verify as check
    from jinsuan.kernel.errors import JinsuanError
    from jinsuan.kernel.settings import Settings
    from jinsuan.kernel.sites import site_by_name

    begin, until = _moment("--from", start), _moment("--to", end)
    if begin >= until:
        raise fail(f"--from {start} is not before --to {end}")
    settings = Settings(run_background_jobs=False)
    with connection() as conn:
        try:
            found = site_by_name(conn, site)  # type: ignore[arg-type]
        except JinsuanError as exc:
            raise fail(exc.reason) from None
        verdict = check(conn, settings, found.id, begin, until)  # type: ignore[arg-type]
    for problem in verdict.problems:
        console.print(problem, style="red", highlight=False)
    notes = []
    if verdict.past_retention:
        notes.append(f"{_many(verdict.past_retention, 'hour')} not checked: their raw samples"
                     f" are past the {settings.retention_days}-day retention")
    if verdict.not_rolled_up:
        notes.append(f"{_many(verdict.not_rolled_up, 'hour')} not rolled up yet")
    console.print(
        f"site {site}, {begin:%Y-%m-%dT%H:%MZ} to {until:%Y-%m-%dT%H:%MZ} (UTC):"
        f" {_many(verdict.hours, 'hour')} recomputed, {_many(verdict.reports, 'report')}"
        f" verified, {_many(verdict.samples, 'sample')} compared with what was signed"
        + "".join(f"; {n}" for n in notes) + ": "
        + (f"FAILED, {_many(len(verdict.problems), 'problem')}" if verdict.problems else "OK"),
        highlight=False)
    if verdict.problems:
        raise typer.Exit(code=1)


def _many(count: int, thing: str) -> str:
    return f"{count:,} {thing}{'' if count == 1 else 's'}"
