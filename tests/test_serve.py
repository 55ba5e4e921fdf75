"""``jinsuan serve`` as an operator starts it: it says where it listens, which database (never
its password) and flavour, and which background jobs run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
from servers import free_port


def test_serve_says_where_it_listens_which_store_and_which_jobs(database_url: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info["password"] = "Sup3r-Secret-pw"  # trust auth ignores it; it must never be printed
    port = free_port()
    env = {**os.environ, "DATABASE_URL": psycopg.conninfo.make_conninfo(**info),
           "JINSUAN_PORT": str(port), "JINSUAN_ROLLUP_EVERY_S": "120"}
    server = subprocess.Popen([sys.executable, "-m", "jinsuan.cli", "serve"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("background jobs") for line in lines):
            assert time.monotonic() < deadline, lines
            line = server.stdout.readline()  # type: ignore[union-attr]
            assert line or server.poll() is None, lines
            lines.append(line.strip())
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = "\n".join(lines)
    assert f"listening on http://127.0.0.1:{port}" in text
    assert f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}" in text
    assert "(plain PostgreSQL)" in text or "(TimescaleDB)" in text
    assert "rollups every 120 s" in text
    assert "Sup3r-Secret-pw" not in text
