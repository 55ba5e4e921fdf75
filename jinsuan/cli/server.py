"""Running the platform: ``jinsuan serve`` and ``jinsuan demo``."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (JINSUAN_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (JINSUAN_PORT).")] = None,
) -> None:
    """Run the platform: HTTP API, intake, rollups and /metrics, until interrupted."""
    from jinsuan.kernel.platform import Platform
    from jinsuan.kernel.settings import Settings
    from jinsuan.kernel.store import Database
    from jinsuan.serve import make_server, tune_gc_for_ingest

    settings = Settings()
    db = Database.open(settings)
    try:
        host, port = host or settings.host, port or settings.port
        server = make_server(Platform(settings, db), host, port)
        typer.echo(f"jinsuan serve: listening on {settings.scheme}://{host}:{port}")
        flavour = "TimescaleDB" if db.timescale else "plain PostgreSQL"
        typer.echo(f"database: {without_secrets(db.url)} ({flavour}); raw samples kept"
                   f" {settings.retention_days} days")
        typer.echo(
            f"background jobs: rollups every {settings.rollup_every_s:g} s, partition upkeep"
            " hourly, the placement cycle and lease sweep" if settings.run_background_jobs
            else "background jobs: none (JINSUAN_RUN_BACKGROUND_JOBS=false)")
        tune_gc_for_ingest()
        server.run()
    finally:
        db.close()


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
    """Start the platform on the embedded database with five simulated Shanxi sites."""
    from jinsuan.demo.run import run_demo

    stop = threading.Event()
    # A closed terminal (SIGHUP) or a service manager (SIGTERM) stops the demo as Ctrl-C does:
    # agents, then the platform, then the embedded database.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    run_demo(port=port, interval=interval, refresh=refresh, jobs_every=jobs_every,
             stop=stop, history_days=history_days)
