"""The platform as an HTTP server: the app factory's app under uvicorn, tuned for ingest, and
the one way ``jinsuan serve`` and ``jinsuan demo`` stop.

Both commands stop the same way whatever asked them to: Ctrl-C (SIGINT), a service manager or
Kubernetes (SIGTERM), a closed terminal (SIGHUP). ``stopped_by_signals`` turns each into a
KeyboardInterrupt (``StopRequested``) in the main thread, so the command's exit stack unwinds
in order; leaving ``serving`` stops the HTTP server as uvicorn does on Ctrl-C (no new
connections, requests in flight answered, then the app's lifespan shutdown ends the placement
cycle, lease sweep, rollups and audit writer); then the command closes its pool and, in the
demo, the embedded PostgreSQL.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

import uvicorn

from jinsuan.app import create_app
from jinsuan.contract.leasewire import MAX_LEASE_WAIT_S
from jinsuan.kernel.platform import Platform

#: How long a stop waits for requests in flight before it cancels them: a held lease request
#: (at most ``MAX_LEASE_WAIT_S``) ends by itself first, and the whole stop fits Kubernetes'
#: default 30 s grace period.
SHUTDOWN_GRACE_S = int(MAX_LEASE_WAIT_S) + 2

#: The signals that stop a command as Ctrl-C does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def make_server(platform: Platform, host: str, port: int) -> uvicorn.Server:
    # Idle keep-alive connections are kept longer (75 s) than agents and clients keep theirs
    # (httpx: 5 s), so the client always closes first: a server closing a connection just as an
    # agent sends its next batch on it made the send fail ("Server disconnected") and retry.
    settings = platform.settings
    config = uvicorn.Config(create_app(platform), host=host, port=port, log_level="warning",
                            access_log=False, timeout_keep_alive=75,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                            ssl_certfile=settings.tls_cert_file,
                            ssl_keyfile=settings.tls_key_file)
    return uvicorn.Server(config)


def tune_gc_for_ingest() -> None:
    """Keep the cyclic garbage collector off the intake's back; call once, the app built.

    Parsing one report allocates tens of thousands of containers (a list per point) that all
    live until the report is written. With the default threshold (700) that sets off dozens of
    collections per report, and the survivors soon trigger full ones, each walking every
    object the libraries and the app built at start-up. So: those long-lived objects are
    moved out of the collector's sight (``gc.freeze``; they live as long as the process, and
    reference counting still frees any that die), and the youngest generation is collected
    after 50,000 allocations instead of 700. Cyclic garbage is still collected, only in
    fewer, larger passes (the process's RSS stays flat through bench/ingest.py's rounds).
    Measured there: about a third less platform CPU per sample than with the defaults.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(50_000, older, oldest)


@contextmanager
def serving(server: uvicorn.Server) -> Iterator[threading.Event]:
    """Run ``server`` in a thread for the block; once it listens, yield an event set when it
    has stopped (by itself, or as the block ends).

    Leaving the block, however it is left, stops the server and waits for it: uvicorn stops
    accepting, answers the requests in flight (cancelling those still running after
    ``SHUTDOWN_GRACE_S``) and runs the app's lifespan shutdown. The server runs in a thread,
    never the main one, so that uvicorn leaves the signals to ``stopped_by_signals`` (in the
    main thread it would take SIGINT and SIGTERM, and re-raise SIGTERM once stopped, killing
    the process before its pool and database were closed). The waits are on the event, never
    ``Thread.join``: in Python 3.11 a join cut short by KeyboardInterrupt marks the thread as
    ended while it still runs (bpo-45274's handling), and the next join returns at once.
    """
    ended = threading.Event()

    def run() -> None:
        try:
            server.run()
        finally:
            ended.set()

    threading.Thread(target=run, name="platform-http", daemon=True).start()
    try:
        while not server.started:
            if ended.wait(0.05):
                raise SystemExit(f"the platform could not listen on"
                                 f" {server.config.host}:{server.config.port}")
        yield ended
    finally:
        server.should_exit = True
        ended.wait(SHUTDOWN_GRACE_S + 30)


class StopRequested(KeyboardInterrupt):
    """What a stop signal raises in the main thread.

    A KeyboardInterrupt, so that all that already stops in order on Ctrl-C (psycopg cancels
    the query in flight, the demo's start-up unwinds) does on SIGTERM and SIGHUP too; and a
    class of its own, since CPython 3.11 marks the process as killed by Ctrl-C when a plain
    KeyboardInterrupt comes out of ``exec`` or ``eval`` of a string (the code dataclasses and
    namedtuple generate), even one the program then handles: such a process ended its clean
    stop by killing itself with SIGINT (exit status -2 instead of 0).
    """


class _StopSignals:
    """The handler ``stopped_by_signals`` installs for ``STOP_SIGNALS``.

    The first stop signal raises ``StopRequested`` in the main thread (at once, or where a
    ``signals_held`` block ends). Later ones are ignored: a second Ctrl-C, or a service manager
    repeating SIGTERM, must not cut short the stop under way, since a stop cut short is what
    leaves the embedded PostgreSQL running. SIGKILL is still the way out. A StopRequested that
    Python swallows (see ``check_stop``) is raised again by the commands' next ``check_stop``.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.held = 0
        self._terminal = [fd for fd in (1, 2) if os.isatty(fd)]

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signal.Signals(signum)
        if self.received is signal.SIGHUP:
            self._leave_hung_up_terminal()
        if not self.held:
            raise StopRequested

    def _leave_hung_up_terminal(self) -> None:
        """Point stdout and stderr at /dev/null where they were a terminal that has hung up.

        Every write to a hung-up terminal fails (EIO): the demo's last table or the stop message
        would end the stop with a traceback, and Python's own flush at exit with status 120. A
        ``kill -HUP`` from another shell leaves a terminal that still answers as it was.
        """
        gone = [fd for fd in self._terminal if not os.isatty(fd)]
        if gone:
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in gone:
                os.dup2(devnull, fd)
            os.close(devnull)


_active: _StopSignals | None = None


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Run a command's block so that SIGTERM and SIGHUP stop it as Ctrl-C does.

    Each of ``STOP_SIGNALS`` raises ``StopRequested`` (a KeyboardInterrupt) in the main thread,
    which unwinds the block's exit stacks and ``finally`` clauses in order; it ends here, as a
    stop that was asked for is a clean exit (status 0). A signal the process started with
    ignored (``nohup`` ignores SIGHUP) stays ignored. Call in the main thread.
    """
    global _active
    handler = _StopSignals()
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    unraisable = sys.unraisablehook

    def astray(event: sys.UnraisableHookArgs) -> None:
        if not isinstance(event.exc_value, StopRequested):  # that one check_stop raises again
            unraisable(event)

    sys.unraisablehook = astray
    _active = handler
    try:
        with suppress(KeyboardInterrupt):
            yield
    finally:
        _active = None
        sys.unraisablehook = unraisable
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


def check_stop() -> None:
    """Raise ``StopRequested`` if a stop signal came but its StopRequested went astray.

    A signal's handler runs wherever the main thread is, and that may be a weakref callback or
    a ``__del__`` (the garbage collector runs them at any moment), where Python prints the
    exception and carries on: ``jinsuan serve`` stopped on SIGTERM just as it started then
    never stopped. The commands' waits call this between two waits. Outside
    ``stopped_by_signals`` it does nothing.
    """
    handler = _active
    if handler is not None and handler.received is not None and not handler.held:
        raise StopRequested


def wait_until_stopped(ended: threading.Event) -> None:
    """Wait in the main thread until a stop signal (``StopRequested``) or ``ended`` is set."""
    while not ended.wait(0.5):
        check_stop()


@contextmanager
def signals_held() -> Iterator[None]:
    """A block a stop signal must not cut in two: one received meanwhile stops the command
    where the block ends.

    For starting the embedded database: initdb cut short leaves a data directory that never
    starts, and pg_ctl cut short a server that no process is listed as using. Outside
    ``stopped_by_signals``, or in another thread, it changes nothing.
    """
    handler = _active
    if handler is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = handler.received is not None
    handler.held += 1
    try:
        yield
    finally:
        handler.held -= 1
    if not stopping and handler.received is not None and not handler.held:
        raise StopRequested
