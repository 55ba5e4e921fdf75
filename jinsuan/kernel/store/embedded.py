"""The embedded PostgreSQL (pgserver) used when no ``DATABASE_URL`` is set.

pgserver ships PostgreSQL binaries in its wheel and keeps the cluster in a directory we choose,
so ``jinsuan demo`` needs no database installed and its data survives restarts.
"""

from __future__ import annotations

import json
import os
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
        from pgserver.postgres_server import PostgresServer

        pgdata = data_dir / "pgdata"
        pgdata.mkdir(parents=True, exist_ok=True)
        with PostgresServer._lock:
            forget_dead_users(pgdata)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    return server.get_uri("postgres"), server


def forget_dead_users(pgdata: Path) -> list[int]:
    """Drop processes that no longer run from pgserver's list of the server's users.

    pgserver stops the server when the last process on its list lets go. A process killed
    before it let go (``kill -9``, a closed terminal before the demo handled SIGHUP) stays on
    the list, and the server would then never be stopped again by anyone. Returns the pids
    dropped. Call under pgserver's inter-process lock.
    """
    users = pgdata / _USERS_FILE
    if not users.exists():
        return []
    pids: list[int] = json.loads(users.read_text() or "[]")
    dead = [pid for pid in pids if not _running(pid)]
    if dead:
        users.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


_USERS_FILE = ".handle_pids.json"  # pgserver's own name for the list


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
