"""How ``jinsuan demo`` and ``jinsuan serve`` stop: real processes, real signals.

A closed terminal (SIGHUP), a service manager or Kubernetes (SIGTERM) and Ctrl-C (SIGINT) all
stop them the same way (``jinsuan.serve.stopped_by_signals``): requests in flight answered,
background jobs ended, pool closed, exit status 0; the demo also stops its agents and, last,
the embedded PostgreSQL, leaving no entry in pgserver's list of the server's users.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import free_port

from jinsuan.contract.leasewire import (
    AGENT_HEADER,
    LEASES_PATH,
    SIGNATURE_HEADER,
    ExecutorKind,
    LeaseReply,
    LeaseRequest,
)
from jinsuan.contract.signing import new_private_key, public_key_b64, sign
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database, embedded
from jinsuan.serve import make_server, serving
from scheduler.seed import PoolSpec, seed_site

#: The demo's users list, pgserver's own file in the data directory.
USERS = Path("pgdata") / ".handle_pids.json"


def _wait_for(what: str, check: Callable[[], object], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --- the one way both commands stop ------------------------------------------------------------

def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)


def test_a_stop_signal_landing_in_generated_code_still_ends_with_status_0() -> None:
    """CPython 3.11 takes a plain KeyboardInterrupt out of ``exec`` of a string (as dataclasses
    generate their methods while a lazy import runs) for an unhandled Ctrl-C, and the process
    then kills itself with SIGINT at exit: a demo stopped during its start-up once ended so."""
    done = _run_python(
        "import os, signal\n"
        "from jinsuan.serve import stopped_by_signals\n"
        "with stopped_by_signals():\n"
        "    exec('import os, signal\\nos.kill(os.getpid(), signal.SIGTERM)\\nx = 1')\n"
        "    print('not stopped')\n"
        "print('stopped')\n")
    assert (done.returncode, done.stdout) == (0, "stopped\n"), done.stderr


def test_a_stop_signal_waits_for_the_end_of_a_held_block() -> None:
    done = _run_python(
        "import os, signal\n"
        "from jinsuan.serve import signals_held, stopped_by_signals\n"
        "with stopped_by_signals():\n"
        "    with signals_held():\n"
        "        os.kill(os.getpid(), signal.SIGHUP)\n"
        "        os.kill(os.getpid(), signal.SIGINT)  # a second signal changes nothing\n"
        "        print('held block finished')\n"
        "    print('not stopped')\n"
        "print('stopped')\n")
    assert (done.returncode, done.stdout) == (0, "held block finished\nstopped\n"), done.stderr


def test_a_stop_signal_python_swallows_still_stops_the_command() -> None:
    """A signal's handler runs wherever the main thread is, a weakref callback included, where
    Python prints what it raises and carries on (``jinsuan serve``, sent SIGTERM as it started,
    then ran on): the command's next wait raises the stop again, and nothing is printed."""
    done = _run_python(
        "import os, signal, threading, weakref\n"
        "from jinsuan.serve import stopped_by_signals, wait_until_stopped\n"
        "class Thing: pass\n"
        "def collected(_):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    sum(i for i in range(9))  # the handler runs here, in the callback\n"
        "with stopped_by_signals():\n"
        "    thing = Thing()\n"
        "    ref = weakref.ref(thing, collected)\n"
        "    del thing\n"
        "    print('carried on')\n"
        "    wait_until_stopped(threading.Event())\n"
        "print('stopped')\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "carried on\nstopped\n", "")


# --- jinsuan demo ------------------------------------------------------------------------------

@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The demo's data directory, outside pytest's base directory: run as root, pgserver runs
    PostgreSQL as its own user, which must traverse every parent, and each pytest session that
    starts makes pytest's base directory private again."""
    with tempfile.TemporaryDirectory(prefix="jinsuan-demo-") as path:
        yield Path(path)
        _stop_strays(Path(path) / "pgdata")


def _stop_strays(pgdata: Path) -> None:
    """Stop a PostgreSQL a failed test left running on ``pgdata`` (SIGTERM: a smart stop)."""
    strays = []
    for pid in _postgres_serving(pgdata):
        with suppress(psutil.NoSuchProcess):
            strays.append(psutil.Process(pid))
            strays[-1].terminate()
    psutil.wait_procs(strays, timeout=30)


def _demo_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jinsuan.cli", "demo", "--port", str(port), "--interval", "1",
            *extra]


def _demo_env(data_dir: Path) -> dict[str, str]:
    """The demo on the embedded database in ``data_dir``, as a user starts it."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["JINSUAN_DATA_DIR"] = str(data_dir)
    return env


def _start_demo(data_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    """``jinsuan demo`` in its own session (its pid is its process group); stderr to a file."""
    with (data_dir / "demo-stderr.log").open("ab") as log:
        return subprocess.Popen(_demo_command(port, *extra), env=_demo_env(data_dir),
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _wait_until_serving(demo: subprocess.Popen, port: int, data_dir: Path) -> None:
    def serving() -> bool:
        assert demo.poll() is None, _stderr(data_dir)
        return _answers(port)

    _wait_for("the demo's platform to answer", serving, timeout_s=180)


def _stderr(data_dir: Path) -> str:
    log = data_dir / "demo-stderr.log"
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def _postgres_serving(pgdata: Path) -> list[int]:
    """The postgres processes started on ``pgdata`` (its postmaster and workers), by pid."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and str(pgdata) in cmdline:
            found.append(process.pid)
    return found


def _embedded_url(data_dir: Path) -> str:
    """The running embedded server's address, from its ``postmaster.pid`` (socket directory
    and port on its fifth and fourth lines)."""
    lines = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/postgres?host={lines[4]}&port={lines[3]}"


def _users(data_dir: Path) -> list[int]:
    return json.loads((data_dir / USERS).read_text())


def _assert_stopped_everything(demo: subprocess.Popen, port: int, data_dir: Path) -> None:
    """The demo ended with status 0 and left nothing running and no entry behind."""
    assert demo.returncode == 0, _stderr(data_dir)
    assert not _answers(port), "the demo's platform still answers"
    assert _postgres_serving(data_dir / "pgdata") == [], "the embedded PostgreSQL still runs"
    assert _users(data_dir) == [], "an entry was left in pgserver's list of users"


def _stop(demo: subprocess.Popen, data_dir: Path, send: Callable[[], None]) -> None:
    try:
        send()
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=30)
            pytest.fail(f"the demo did not stop:\n{_stderr(data_dir)}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_stops_the_demo_whole_and_the_next_demo_stops_on_ctrl_c(
        data_dir: Path, signum: signal.Signals) -> None:
    port = free_port()
    demo = _start_demo(data_dir, port)
    _wait_until_serving(demo, port, data_dir)
    assert _postgres_serving(data_dir / "pgdata") and _users(data_dir) == [demo.pid]
    _stop(demo, data_dir, lambda: demo.send_signal(signum))
    _assert_stopped_everything(demo, port, data_dir)

    # The same data directory again; Ctrl-C reaches the terminal's whole process group.
    port = free_port()
    again = _start_demo(data_dir, port)
    _wait_until_serving(again, port, data_dir)
    assert _users(data_dir) == [again.pid]
    _stop(again, data_dir, lambda: os.killpg(again.pid, signal.SIGINT))
    _assert_stopped_everything(again, port, data_dir)


@pytest.mark.slow
def test_a_closed_terminal_stops_the_demo_whole(data_dir: Path) -> None:
    """The demo on a pseudo-terminal as its controlling terminal; closing the terminal's side
    sends the demo SIGHUP and makes every later write to the terminal fail (EIO)."""
    setsid = shutil.which("setsid")
    if setsid is None:
        pytest.skip("util-linux setsid is not installed")
    port = free_port()
    terminal, tty = pty.openpty()
    with (data_dir / "demo-stderr.log").open("ab") as log:
        demo = subprocess.Popen([setsid, "--ctty", "--wait", *_demo_command(port)],
                                env=_demo_env(data_dir), stdin=tty, stdout=tty, stderr=log)
    os.close(tty)
    with _read_until_closed(terminal) as screen:
        _wait_until_serving(demo, port, data_dir)
        _wait_for("the demo's table on the terminal", lambda: b"all sites" in screen)
    _stop(demo, data_dir, lambda: os.close(terminal))
    _assert_stopped_everything(demo, port, data_dir)
    assert "Traceback" not in _stderr(data_dir)


@contextmanager
def _read_until_closed(terminal: int) -> Iterator[bytearray]:
    """Read what the demo writes to the terminal while the block runs, as a terminal does
    (else the demo blocks once the terminal's buffer is full)."""
    screen = bytearray()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if select.select([terminal], [], [], 0.1)[0]:
                screen.extend(os.read(terminal, 65536))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield screen
    finally:
        done.set()
        reader.join(timeout=10)


@pytest.mark.slow
def test_a_stop_during_start_up_stops_the_demo_at_once(data_dir: Path) -> None:
    """SIGTERM while the demo is still sending a week of history (minutes of work) stops it
    there, as Ctrl-C does, instead of once everything has started."""
    port = free_port()
    demo = _start_demo(data_dir, port, "--history-days", "7")
    _wait_until_serving(demo, port, data_dir)
    with psycopg.connect(_embedded_url(data_dir), autocommit=True) as conn:
        _wait_for("the first history reports", lambda: conn.execute(
            "SELECT count(*) FROM reports").fetchone()[0] > 0)
    began = time.monotonic()
    _stop(demo, data_dir, lambda: demo.send_signal(signal.SIGTERM))
    assert time.monotonic() - began < 30
    _assert_stopped_everything(demo, port, data_dir)


@pytest.mark.slow
def test_a_killed_demo_does_not_keep_the_database_running_for_the_next_one(
        data_dir: Path) -> None:
    """The killed process stays on pgserver's list of the server's users; the next user of
    the data directory drops it, so its own stop stops the server again."""
    port = free_port()
    demo = _start_demo(data_dir, port)
    try:
        _wait_until_serving(demo, port, data_dir)
    finally:
        demo.kill()
        demo.wait(timeout=30)
    pgdata = data_dir / "pgdata"
    assert _users(data_dir) == [demo.pid]
    assert _postgres_serving(pgdata)

    url, server = embedded.start(data_dir)  # as the next demo (or jinsuan report) does
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    server.cleanup()
    assert _postgres_serving(pgdata) == [], "the next user's stop left the server running"


def test_an_entry_left_by_a_crash_is_dropped_whoever_holds_its_pid_now(data_dir: Path) -> None:
    """After a crash took both the demo and its server down, the demo's pid on the list may
    belong to another process by the next start (containers hand out the same few pids); a
    server that does not run has no users, so the entry goes and the next stop stops it."""
    _, server = embedded.start(data_dir)
    server.cleanup()
    pgdata = data_dir / "pgdata"
    assert _postgres_serving(pgdata) == [] and _users(data_dir) == []
    with subprocess.Popen(["sleep", "60"]) as holder:  # the pid's new holder
        try:
            (data_dir / USERS).write_text(json.dumps([holder.pid]))
            _, server = embedded.start(data_dir)
            assert _users(data_dir) == [os.getpid()]
            server.cleanup()
            assert _postgres_serving(pgdata) == [], "the server outlived its last user"
        finally:
            holder.kill()


# --- jinsuan serve -----------------------------------------------------------------------------

def _held_lease(url: str, agent_id: str, key: Ed25519PrivateKey,
                wait_s: float) -> httpx.Response:
    """A site agent's lease request, held by the platform up to ``wait_s`` (nothing to lease)."""
    body = LeaseRequest(agent_id=agent_id, sent_at=datetime.now(UTC),
                        executor=ExecutorKind.PROCESS, held=[], free_slots=4,
                        wait_s=wait_s).model_dump_json().encode()
    return httpx.post(url + LEASES_PATH, content=body, timeout=wait_s + 30,
                      headers={AGENT_HEADER: agent_id, SIGNATURE_HEADER: sign(key, body),
                               "Content-Type": "application/json"})


def _a_site(conn: psycopg.Connection, db: Database) -> tuple[str, Ed25519PrivateKey]:
    key = new_private_key()
    _, agent_id = seed_site(conn, db.partitions, name="taiyuan-1", city="Taiyuan",
                            now=datetime.now(UTC), public_key=public_key_b64(key),
                            pools=[PoolSpec("H100", 8, Decimal("9.00"))])
    return agent_id, key


def _asked(conn: psycopg.Connection, agent_id: str, since: datetime) -> bool:
    """Whether the platform has handled a lease request the agent sent after ``since`` (and,
    with nothing to lease, now holds it)."""
    return conn.execute("SELECT 1 FROM agent_leases WHERE agent_id = %s AND last_lease_at > %s",
                        (agent_id, since)).fetchone() is not None


def _refuses(port: int) -> bool:
    """Whether a new request goes unanswered: refused, or reset as the listener closes."""
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.TransportError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_serve_stops_on_a_signal_after_answering_the_request_in_flight(
        database_url: str, conn: psycopg.Connection, db: Database,
        signum: signal.Signals) -> None:
    agent_id, key = _a_site(conn, db)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "JINSUAN_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "jinsuan.cli", "serve"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up() -> bool:
            assert server.poll() is None, server.communicate()[0]
            return _answers(port)

        _wait_for("jinsuan serve to answer", up, timeout_s=60)
        with ThreadPoolExecutor(1) as pool:
            wait_s, since, sent = 4.0, datetime.now(UTC), time.monotonic()
            held = pool.submit(_held_lease, f"http://127.0.0.1:{port}", agent_id, key, wait_s)
            _wait_for("the lease request to be held", lambda: _asked(conn, agent_id, since))
            server.send_signal(signum)
            _wait_for("the listening socket to close", lambda: _refuses(port), timeout_s=5)
            assert not held.done(), "the held request ended as the stop began"
            reply = held.result(timeout=wait_s + 30)
        answered = time.monotonic() - sent
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
    assert reply.status_code == 200, reply.text
    assert LeaseReply.model_validate_json(reply.content).new == []
    assert answered >= wait_s - 0.5, "the held request was cut short"
    assert server.returncode == 0, out
    lines = out.splitlines()
    assert lines[-1] == "jinsuan serve: stopped", out  # after its pool was closed
    assert any(line.startswith("jinsuan serve: stopping") for line in lines), out
    assert "Traceback" not in out


def test_leaving_serving_answers_the_request_in_flight_then_ends_the_background_jobs(
        database_url: str, tmp_path: Path, conn: psycopg.Connection, db: Database) -> None:
    """What both commands do as they stop, inside one process: every thread the platform
    started (placement cycle and its wake-up listener, rollups and upkeep, audit writer,
    uvicorn) has ended once ``serving`` returns, and the held request was answered first."""
    agent_id, key = _a_site(conn, db)
    settings = Settings(database_url=database_url, data_dir=tmp_path, run_background_jobs=True)
    platform_db = Database.open(settings)
    before = set(threading.enumerate())
    port = free_port()
    try:
        with ThreadPoolExecutor(1) as pool:
            with serving(make_server(Platform(settings, platform_db), "127.0.0.1", port)):
                since, sent = datetime.now(UTC), time.monotonic()
                held = pool.submit(_held_lease, f"http://127.0.0.1:{port}", agent_id, key, 2.0)
                _wait_for("the lease request to be held", lambda: _asked(conn, agent_id, since))
                started = {t.name for t in set(threading.enumerate()) - before}
            answered_first, answered = held.done(), time.monotonic() - sent
        reply = held.result()
        left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    finally:
        platform_db.close()
    assert {"platform-http", "placement-cycle", "placement-listener", "APScheduler"} <= started
    assert answered_first and reply.status_code == 200, reply.text
    assert answered >= 2.0 - 0.5, "the held request was cut short"
    assert left == []
