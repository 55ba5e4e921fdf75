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
        server = make_server(Platform(settings, db), host or settings.host, port or settings.port)
        tune_gc_for_ingest()
        server.run()
    finally:
        db.close()


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
