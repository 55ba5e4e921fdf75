"""``jinsuan report``: the month's PDF for the bureau, from the dashboards' own queries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer


@contextmanager
def _read_only(settings: Any) -> Iterator[tuple[Any, str]]:
    """A connection that cannot write (``DATABASE_URL``, or the embedded server), and a note
    saying which database it is, without credentials."""
    import psycopg

    from jinsuan.kernel.store import embedded

    server = None
    # A session's setting: past any transaction pooler, which would hand it on to its next client
    url = settings.direct_database_url or settings.database_url
    if not url:
        url, server = embedded.start(settings.data_dir)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = on")
            info = conn.info
            where = (f"the embedded PostgreSQL in {settings.data_dir}" if server else
                     f"PostgreSQL database {info.dbname} on {info.host}:{info.port}")
            yield conn, f"{where}, as {info.user}"
    finally:
        if server is not None:
            server.cleanup()


def report(
    month: Annotated[str, typer.Option(
        help="The month, YYYY-MM: an Asia/Shanghai calendar month.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder for the PDF and its PNG charts.")] = Path("."),
    city: Annotated[list[str] | None, typer.Option(
        help="Only this city (repeat for several); all cities if left out.")] = None,
) -> None:
    """Write jinsuan-report-YYYY-MM.pdf and its charts (PNG): capacity, PUE and jobs."""
    import psycopg

    from dashboards.report import ReportError, parse_month, write_report
    from jinsuan.kernel.pdf.fonts import NoCjkFont
    from jinsuan.kernel.settings import Settings

    try:
        parsed = parse_month(month)
    except ReportError as exc:
        typer.echo(f"error: --month: {exc}", err=True)
        raise typer.Exit(code=2) from None
    try:
        with _read_only(Settings(run_background_jobs=False)) as (conn, source):
            written = write_report(conn, parsed, out, source=source,
                                   chosen={"city": city} if city else None)
    except (ReportError, NoCjkFont) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except psycopg.errors.UndefinedTable as exc:
        typer.echo(f"error: the database has no jinsuan tables ({exc.diag.message_primary}); "
                   f"is DATABASE_URL the platform's database?", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"{written.pdf} ({written.pages} pages, font {written.font.family})")
    for chart in written.charts:
        typer.echo(f"{chart}")
