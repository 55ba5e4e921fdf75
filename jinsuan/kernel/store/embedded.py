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

    The server stops when the last process using it calls ``cleanup()`` on the handle; pgserver
    also registers that call with ``atexit``, so a handle its holder never closed (a start that
    failed after the server came up) still stops the server when the interpreter exits. Only
    a process killed outright never lets go: see ``forget_dead_users``.
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
    """Drop stale entries from pgserver's list of the server's users; return the pids dropped.

    pgserver stops the server when the last process on its list lets go. A process killed
    before it let go (``kill -9``, or a closed terminal's SIGHUP, whose default is to kill)
    stays on the list, and then no later user's stop would ever stop the server. Dropped: the
    processes that no longer run, and every entry while no server runs (a server that does
    not run has no users, whoever holds those pids now: a container restarted after a crash
    soon hands them out again). Call under pgserver's inter-process lock.
    """
    users = pgdata / _USERS_FILE
    if not users.exists():
        return []
    pids: list[int] = json.loads(users.read_text() or "[]")
    serving = _server_running(pgdata)
    dead = [pid for pid in pids if not serving or not _running(pid)]
    if dead:
        users.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


_USERS_FILE = ".handle_pids.json"  # pgserver's own name for the list


def _server_running(pgdata: Path) -> bool:
    """Whether the postmaster named in ``postmaster.pid`` runs (the file outlives a crash)."""
    try:
        return _running(int((pgdata / "postmaster.pid").read_text().split()[0]))
    except (FileNotFoundError, IndexError, ValueError):
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
