"""The supervisor of one process-executor run: ``python supervise.py RUN_DIR LOCK_FD``.

It runs as its own session, apart from the agent, so a run outlives an agent restart; the agent
re-attaches by reading the files this program keeps in the run directory:

* ``supervisor.json``: this program's pid and kernel start time (so a reused pid is never
  signalled), and once the command started, its pid, start time and ``started_at``.
* ``exit.json``: written once, atomically, when the command has ended: exit code (128 + signal
  number when a signal ended it, as a shell reports it), start and end times, and ``failure``
  (why the run failed when it was stopped: timed out, cancelled), else null.
* the lock file whose descriptor ``LOCK_FD`` the agent passed in, ``flock``-ed: it is held for
  exactly as long as this program lives, even if it is killed with SIGKILL, so "is the run
  still supervised" needs no pid guessing.

The command runs in its own process group. Max runtime is enforced here, not by the agent, so it
holds while the agent is down: SIGTERM to the group, then SIGKILL after the grace period. SIGTERM
to this program (``cancel``) stops the command the same way. When the command ends, what is left
of its group is killed, so no stray process outlives its run.

Standard library only: it is started with the agent's interpreter by path.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import selectors
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path


def proc_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has ended; only its exit status is left to collect
        return None
    return int(fields[19])


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _say(message: str) -> None:
    print(f"[jinsuan-supervisor] {message}", file=sys.stderr, flush=True)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def supervise(run_dir: Path) -> int:
    spec = json.loads((run_dir / "spec.json").read_text())
    # Handlers first: once supervisor.json names this process, a cancel must be caught.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stop_reason: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop_reason.append("cancelled"))
    me = {"pid": os.getpid(), "start_ticks": proc_start_ticks(os.getpid())}
    write_json(run_dir / "supervisor.json", me)

    started_at = _now()
    try:
        user = spec.get("run_as")
        child = subprocess.Popen(
            spec["command"],
            env=spec["env"],
            cwd=spec["workdir"],
            stdin=subprocess.DEVNULL,
            process_group=0,
            # Drop to the configured user: its own group, no supplementary groups.
            user=user,
            group=pwd.getpwnam(user).pw_gid if user else None,
            extra_groups=[] if user else None,
        )
    except OSError as exc:
        _say(f"cannot run {spec['command'][0]!r}: {exc}")
        write_json(
            run_dir / "exit.json",
            {
                "exit_code": 127 if isinstance(exc, FileNotFoundError) else 126,
                "started_at": None,
                "ended_at": _now(),
                "failure": f"cannot run {spec['command'][0]!r}: {exc.strerror or exc}",
            },
        )
        return 0
    me.update(child_pid=child.pid, child_start_ticks=proc_start_ticks(child.pid))
    me["started_at"] = started_at
    write_json(run_dir / "supervisor.json", me)

    max_runtime = spec.get("max_runtime_s")
    deadline = time.monotonic() + max_runtime if max_runtime else None
    pidfd = os.pidfd_open(child.pid)
    selector = selectors.DefaultSelector()
    selector.register(pidfd, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    failure: str | None = None
    while child.poll() is None:
        if stop_reason:
            failure = "cancelled"
            break
        if deadline is not None and time.monotonic() >= deadline:
            failure = f"timed out after {max_runtime} s (max runtime)"
            break
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        for key, _ in selector.select(timeout):
            if key.fd == wake_r:
                os.read(wake_r, 512)
    if failure is not None and child.poll() is None:
        _say(f"{failure}: stopping the command (SIGTERM, SIGKILL after {spec['kill_grace_s']} s)")
        _kill_group(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=spec["kill_grace_s"])
        except subprocess.TimeoutExpired:
            _kill_group(child.pid, signal.SIGKILL)
            child.wait()
    _kill_group(child.pid, signal.SIGKILL)  # whatever the command left running in its group
    code = child.returncode
    if code < 0:
        if failure is None:
            failure = f"killed by signal {_signal_name(-code)}"
        code = 128 - code
    write_json(
        run_dir / "exit.json",
        {"exit_code": code, "started_at": started_at, "ended_at": _now(), "failure": failure},
    )
    return 0


def main() -> int:
    run_dir, lock_fd = Path(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(lock_fd, False)  # the lock is ours alone; the command must not hold it
    return supervise(run_dir)


if __name__ == "__main__":
    sys.exit(main())
