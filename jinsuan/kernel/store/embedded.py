"""The embedded PostgreSQL (pgserver) used when no ``DATABASE_URL`` is set.

pgserver ships PostgreSQL binaries in its wheel and keeps the cluster in a directory we choose,
so ``jinsuan demo`` needs no database installed and its data survives restarts.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def start(data_dir: Path) -> tuple[str, Any]:
    """Start (or attach to) the embedded server; return its URL and a handle to keep alive.

    The server stops when the last process using it calls ``cleanup()`` on the handle.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

        pgdata = data_dir / "pgdata"
        pgdata.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    return server.get_uri("postgres"), server
