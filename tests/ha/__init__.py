"""A Patroni-managed PostgreSQL pair on loopback (``.ci/ha.sh``) for the fault tests.

``start_pair()`` makes sure both nodes run with a leader and a synchronous standby (skipping
the caller's tests, with the reason, only where the packages cannot be installed here);
``kill_leader()`` kills the leader's Patroni and PostgreSQL with SIGKILL, as a host that dies
would; ``start_pair()`` again brings the dead node back as a standby (Patroni rewinds it);
``restart_leader()`` restarts the leader's PostgreSQL through Patroni's REST API, as an operator
applying a setting would (no failover: the leader keeps its key while it restarts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psycopg
import pytest

SETUP = Path(__file__).resolve().parents[2] / ".ci" / "ha.sh"
BASE = Path(os.environ.get("JINSUAN_HA_DIR", "/var/lib/jinsuan-ha"))
CANNOT_INSTALL = 3
HOSTS = "127.0.0.1:5460,127.0.0.1:5461"
REST = ("http://127.0.0.1:8108", "http://127.0.0.1:8109")


def url(dbname: str = "postgres", application_name: str | None = None) -> str:
    """The multi-host URL the platform uses: libpq finds the primary among the nodes.

    ``application_name`` names the client in ``pg_stat_activity``, so a test can tell which
    platform process a server backend belongs to."""
    named = f"&application_name={application_name}" if application_name else ""
    return (f"postgresql://postgres@{HOSTS}/{dbname}"
            f"?target_session_attrs=read-write&connect_timeout=2{named}")


def start_pair() -> None:
    if os.geteuid() != 0:
        pytest.skip("the HA pair is started as root (it runs PostgreSQL as user postgres)")
    done = subprocess.run(["bash", str(SETUP), "start"], capture_output=True, text=True,
                          timeout=300, check=False)
    if done.returncode == CANNOT_INSTALL:
        pytest.skip(f"no Patroni here: {done.stdout.strip().splitlines()[-1]}")
    if done.returncode != 0:
        pytest.fail(f"{SETUP} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def members() -> list[dict]:
    for rest in REST:
        try:
            return httpx.get(f"{rest}/cluster", timeout=2).json()["members"]
        except (httpx.HTTPError, ValueError):
            continue
    return []


def leader() -> str:
    (name,) = [m["name"] for m in members() if m["role"] == "leader"]
    return name


def kill_leader() -> str:
    """SIGKILL the leader's Patroni, its postmaster and the postmaster's children."""
    name = leader()
    patroni = subprocess.run(["pgrep", "-f", f"patroni {BASE}/{name}.yml"], capture_output=True,
                             text=True, check=False).stdout.split()
    postmaster = (BASE / name / "postmaster.pid").read_text().split()[0]
    children = subprocess.run(["pgrep", "-P", postmaster], capture_output=True, text=True,
                              check=False).stdout.split()
    for pid in [*patroni, postmaster, *children]:
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    return name


def healthy() -> bool:
    """A leader and a synchronous standby, both running: the pair can lose a node."""
    roles = sorted(m["role"] for m in members() if m["state"] in ("running", "streaming"))
    return roles == ["leader", "sync_standby"]


def restart_leader(timeout_s: float = 90) -> str:
    """Restart the leader's PostgreSQL with ``POST /restart`` on its Patroni; return its name.

    Patroni answers once the server is back up, or with 503 "still starting" when that takes
    longer than its own wait (the restart is then under way: wait for the pair to be whole);
    any other answer is a refusal."""
    (leading,) = [m for m in members() if m["role"] == "leader"]
    api = leading["api_url"].removesuffix("/patroni")
    reply = httpx.post(f"{api}/restart", json={}, timeout=timeout_s)
    if reply.status_code == 503 and "still starting" in reply.text:
        deadline = time.monotonic() + timeout_s
        while not healthy():
            if time.monotonic() > deadline:
                pytest.fail(f"{leading['name']} did not come back within {timeout_s} s")
            time.sleep(0.2)
    elif reply.status_code != 200:
        pytest.fail(f"Patroni refused to restart {leading['name']}: {reply.status_code}"
                    f" {reply.text}")
    return leading["name"]


def wait_for_new_leader(old: str, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [m["name"] for m in members() if m["role"] == "leader" and m["name"] != old]
        if found:
            return found[0]
        time.sleep(0.2)
    pytest.fail(f"no node took over from {old} within {timeout_s} s")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new database on the pair (replicated like everything else); yields its URL."""
    name = f"jinsuan_ha_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url(name)
    finally:
        with psycopg.connect(url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
