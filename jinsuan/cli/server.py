"""Running the platform: ``jinsuan serve`` and ``jinsuan demo``."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Annotated

import typer


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (JINSUAN_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (JINSUAN_PORT).")] = None,
) -> None:
    """Run the platform: HTTP API, intake, rollups and /metrics, until stopped.

    Ctrl-C, SIGTERM and SIGHUP stop it cleanly: requests in flight are answered, the background
    jobs end, the pool is closed, and it exits 0.
    """
    from jinsuan.kernel.platform import Platform
    from jinsuan.kernel.settings import Settings
    from jinsuan.kernel.store import Database
    from jinsuan.serve import (
        make_server,
        serving,
        signals_held,
        stopped_by_signals,
        tune_gc_for_ingest,
        wait_until_stopped,
    )

    settings = Settings()
    with stopped_by_signals(), ExitStack() as stack:
        with signals_held():
            db = Database.open(settings)
            stack.callback(db.close)
        host, port = host or settings.host, port or settings.port
        server = make_server(Platform(settings, db), host, port)
        typer.echo(f"jinsuan serve: listening on {settings.scheme}://{host}:{port}")
        flavour = {"timescale": "TimescaleDB", "citus": "Citus"}.get(db.flavour,
                                                                     "plain PostgreSQL")
        typer.echo(f"database: {without_secrets(db.url)} ({flavour}); raw samples kept"
                   f" {settings.retention_days} days")
        typer.echo(
            f"background jobs: rollups every {settings.rollup_every_s:g} s, partition upkeep"
            " hourly, the placement cycle and lease sweep" if settings.run_background_jobs
            else "background jobs: none (JINSUAN_RUN_BACKGROUND_JOBS=false)")
        tune_gc_for_ingest()
        with serving(server) as ended:
            try:
                wait_until_stopped(ended)
            except KeyboardInterrupt:
                typer.echo("jinsuan serve: stopping: answering the requests in flight, then"
                           " ending the background jobs and closing the pool …")
                raise
        raise SystemExit("jinsuan serve: the HTTP server stopped by itself")
    typer.echo("jinsuan serve: stopped")


def without_secrets(url: str) -> str:
    """A database URL to print: user, host, port and database, never the password."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url)
    where = info.get("host") or "local socket"
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{where}{port}/{info.get('dbname', '')}"


def demo(
    port: Annotated[int, typer.Option(help="Port of the platform's API.")] = 8080,
    interval: Annotated[float, typer.Option(help="Agents' sampling interval, seconds.")] = 5.0,
    refresh: Annotated[float, typer.Option(help="Table refresh, seconds.")] = 3.0,
    jobs_every: Annotated[float, typer.Option(
        help="The simulated dispatcher submits a job this often, seconds.")] = 4.0,
    history_days: Annotated[float, typer.Option(
        min=0, max=800,
        help="First send this many days of the sites' simulated past, so the dashboards and"
             " 'jinsuan report' have history to show.")] = 0,
) -> None:
    """Start the platform on the embedded database with five simulated Shanxi sites.

    Ctrl-C, SIGTERM (a service manager) and SIGHUP (a closed terminal) all stop it the same way:
    agents, then the platform, then the embedded database.
    """
    from jinsuan.demo.run import run_demo
    from jinsuan.serve import stopped_by_signals

    with stopped_by_signals():
        run_demo(port=port, interval=interval, refresh=refresh, jobs_every=jobs_every,
                 history_days=history_days)


def migrate() -> None:
    """Apply the schema migrations this version ships to DATABASE_URL, print them, and exit.

    For a Kubernetes init container or Job ahead of `jinsuan serve`. Several may run at once
    (one per replica): they take the advisory lock `jinsuan serve` migrates under, so one
    applies each migration and the others find it done.
    """
    import psycopg

    from jinsuan.kernel.settings import Settings
    from jinsuan.kernel.store import migrate as schema
    from jinsuan.kernel.store.readiness import applied_migrations

    settings = Settings()
    # Past any transaction pooler: the lock below is a session's (JINSUAN_DIRECT_DATABASE_URL).
    url = settings.direct_database_url or settings.database_url
    if not url:
        typer.echo("jinsuan migrate: DATABASE_URL is not set (`jinsuan serve` migrates its"
                   " embedded database itself)", err=True)
        raise typer.Exit(2)
    try:
        where = without_secrets(url)
    except psycopg.ProgrammingError:  # its message may quote the string, password and all
        typer.echo("jinsuan migrate: DATABASE_URL is not a valid connection string", err=True)
        raise typer.Exit(2) from None
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=30) as conn:
            # The lock is held across reading what is there, migrating and reading again, so
            # what is printed is what this process applied, not what a concurrent one did.
            # Advisory locks are re-entrant: migrate() takes the same one again inside.
            conn.execute("SELECT pg_advisory_lock(%s)", (schema.MIGRATION_LOCK,))
            before = applied_migrations(conn)
            flavour = schema.upgrade(conn, want_timescale=settings.use_timescale,
                                     want_citus=settings.use_citus)
            after = applied_migrations(conn)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        typer.echo(f"jinsuan migrate: {where}: {reason}", err=True)
        raise typer.Exit(1) from None
    applied = sorted(after.keys() - before.keys())
    for version in applied:
        typer.echo(f"applied {version:04d}_{after[version]}")
    latest = max(after)
    typer.echo(f"{'schema complete' if applied else 'nothing to apply'}: {where} at"
               f" {latest:04d}_{after[latest]} ({flavour.value})")
