"""The process executor: each run is a local subprocess, for the demo, tests and small sites.

Each run gets a directory ``<runs_dir>/<ref>/`` holding ``spec.json`` (what to run),
``output.log`` (stdout and stderr together; its tail is reported), a ``work/`` directory used as
the working directory when the payload names none, and the files of its supervisor (see
``agents.executors.supervise``): a small stdlib program that starts the command in its own
process group, enforces the max runtime (SIGTERM, then SIGKILL after ``kill_grace_s``) and
records the exit status. The supervisor runs in its own session, so runs survive an agent
restart.

Re-attaching after a restart: the supervisor holds an ``flock`` on the run's lock file for its
whole life, so "still supervised" is a lock test that a reused pid cannot fool; signals go to
its pid only after its kernel start time matches the one it recorded. If the supervisor is gone
without an ``exit.json`` (killed, or the machine rebooted) the run is reported **failed** with
that reason rather than guessed at: the command's outcome is unknowable, and a job's retries
exist for this. Its command's process group, if it still lives, is killed on ``cancel``.

A lease's ``tasks`` and accelerator counts are passed to the command as ``JINSUAN_TASKS`` and
``JINSUAN_ACCELERATORS_PER_TASK``; the command runs once (gangs need Slurm or Kubernetes).

What a run may reach: only the variables named in ``pass_env`` of the agent's environment
(default ``PATH``), never the rest (the agent's own settings and secrets); with ``run_as`` it runs
as that unprivileged user, so the agent's state directory (its signing key) and the site config
(meter and BMC passwords), readable by the agent's user only, are out of its reach; with
``devices`` it sees only the accelerators it was granted. It is not a container: the job shares
the host's filesystem, network and process table with whatever else runs there (README,
"What the process executor does not isolate").
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agents.executors import (
    ExecutorError,
    RunPhase,
    RunStatus,
    StartError,
    log_tail,
    run_environment,
)
from agents.executors.supervise import proc_start_ticks, write_json
from jinsuan.contract.leasewire import Lease

SUPERVISOR = Path(__file__).with_name("supervise.py")
LOG_FILE = "output.log"
STARTED_WAIT_S = 10.0  # how long start() waits for the supervisor to report in


class ProcessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    runs_dir: Path | None = Field(
        default=None, description="Where run directories live; <state_dir>/runs if unset."
    )
    kill_grace_s: float = Field(
        default=10.0, ge=0, description="SIGTERM to SIGKILL, on cancel and at max runtime."
    )
    pass_env: list[str] = Field(
        default_factory=lambda: ["PATH"],
        description="Names of the agent's environment variables a run may see (an opt-in"
                    " allow-list). Nothing else of the agent's environment reaches a job: it"
                    " may hold the agent's secrets.")
    run_as: str | None = Field(
        default=None,
        description="Run jobs as this unprivileged user (the agent must run as root to switch);"
                    " its own group, no supplementary groups. Unset: as the agent's user.")
    devices: list[str] = Field(
        default_factory=list,
        description="The accelerator indices this host hands out, e.g. ['0', '1', '2', '3']: each"
                    " run gets as many as its lease grants, in CUDA_VISIBLE_DEVICES and"
                    " ASCEND_RT_VISIBLE_DEVICES, and no two live runs share one.")


class ProcessExecutor:
    name = "process"

    def __init__(self, config: ProcessConfig | None = None, *, state_dir: Path) -> None:
        self.config = config or ProcessConfig()
        self.runs_dir = Path(self.config.runs_dir or Path(state_dir) / "runs")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # reaped on poll

    def start(self, lease: Lease) -> str:
        ref = run_ref(lease.run_id)
        run_dir = self.runs_dir / ref
        run_dir.mkdir(exist_ok=True)
        lock = os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return ref  # its supervisor is alive: started before
            if (run_dir / "spec.json").exists():
                return ref  # launched before and ended (or its supervisor died): poll tells
            self._launch(lease, run_dir, lock)
        finally:
            os.close(lock)
        return ref

    def _launch(self, lease: Lease, run_dir: Path, lock: int) -> None:
        payload = lease.payload
        workdir = Path(payload.workdir) if payload.workdir else run_dir / "work"
        if payload.workdir is None:
            workdir.mkdir(exist_ok=True)
        elif not workdir.is_dir():
            raise StartError(f"workdir {payload.workdir!r} is not a directory on this host")
        env = {name: os.environ[name] for name in self.config.pass_env if name in os.environ}
        env.setdefault("PATH", os.defpath)
        devices = self._free_devices(lease)
        env.update(run_environment(lease, devices))
        spec = {
            "run_id": lease.run_id,
            "command": payload.command,
            "env": env,
            "workdir": str(workdir),
            "max_runtime_s": lease.max_runtime_s,
            "kill_grace_s": self.config.kill_grace_s,
            "run_as": self.config.run_as,
            "devices": devices,
        }
        if self.config.run_as is not None:
            shutil.chown(workdir, user=self.config.run_as, group=_group_of(self.config.run_as))
        write_json(run_dir / "spec.json", spec)
        with open(run_dir / LOG_FILE, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, str(SUPERVISOR), str(run_dir), str(lock)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(lock,),
                start_new_session=True,
            )
        self._children[run_dir.name] = child
        self._await_supervisor(run_dir, child)

    def _free_devices(self, lease: Lease) -> list[str] | None:
        """The devices this run gets: as many as its lease grants, none held by a live run
        (read from the live runs' specs, so an agent restart keeps the assignment). None when
        the executor was given no device list (the job then sees whatever the host shows)."""
        if not self.config.devices:
            return None
        wanted = lease.tasks * lease.accelerators_per_task
        held: set[str] = set()
        for spec_file in self.runs_dir.glob("*/spec.json"):
            if not (spec_file.parent / "exit.json").exists():
                held.update(json.loads(spec_file.read_text()).get("devices") or [])
        free = [d for d in self.config.devices if d not in held]
        if len(free) < wanted:
            raise StartError(f"the lease grants {wanted} accelerator(s) and {len(free)} of this"
                             f" host's devices {self.config.devices} are free")
        return free[:wanted]

    def _await_supervisor(self, run_dir: Path, child: subprocess.Popen[bytes]) -> None:
        """Return once the supervisor has recorded itself, so a crash of the agent from here on
        finds the run by its files; a supervisor that dies first is a StartError."""
        deadline = time.monotonic() + STARTED_WAIT_S
        while not (run_dir / "supervisor.json").exists() and time.monotonic() < deadline:
            try:
                child.wait(timeout=0.02)
                break  # it ended (quickly, or failed to start)
            except subprocess.TimeoutExpired:
                pass
        if not (run_dir / "supervisor.json").exists():
            raise StartError(
                f"the run's supervisor did not start: {log_tail(run_dir / LOG_FILE, 2000)}"
            )

    def poll(self, ref: str) -> RunStatus:
        run_dir = self._run_dir(ref)
        child = self._children.get(ref)
        if child is not None and child.poll() is not None:
            del self._children[ref]
        tail = log_tail(run_dir / LOG_FILE)
        held = _lock_held(run_dir)  # before exit.json: the supervisor writes it, then lets go
        ended = _read_json(run_dir / "exit.json")
        if ended is not None:
            failure = ended["failure"]
            ok = ended["exit_code"] == 0 and failure is None
            return RunStatus(
                state=RunPhase.SUCCEEDED if ok else RunPhase.FAILED,
                exit_code=ended["exit_code"],
                started_at=_time(ended["started_at"]),
                ended_at=_time(ended["ended_at"]),
                log_tail=tail,
                reason=failure,
            )
        supervisor = _read_json(run_dir / "supervisor.json")
        if held:
            started = supervisor.get("started_at") if supervisor else None
            return RunStatus(
                state=RunPhase.RUNNING if started else RunPhase.PENDING,
                started_at=_time(started),
                log_tail=tail,
            )
        if supervisor is None:
            reason = "the run did not start: the agent stopped while launching it"
        else:
            reason = (
                f"the run's supervisor (pid {supervisor['pid']}) ended without recording an exit"
                " status: it was killed or the machine restarted"
            )
        return RunStatus(state=RunPhase.FAILED, log_tail=tail, reason=reason)

    def cancel(self, ref: str) -> None:
        run_dir = self._run_dir(ref)
        if (run_dir / "exit.json").exists():
            return
        supervisor = _read_json(run_dir / "supervisor.json")
        if supervisor is None:
            return
        if _lock_held(run_dir) and _same_process(supervisor["pid"], supervisor["start_ticks"]):
            os.kill(supervisor["pid"], signal.SIGTERM)  # it stops the command and records it
        elif "child_pid" in supervisor and _same_process(
            supervisor["child_pid"], supervisor["child_start_ticks"]
        ):
            os.killpg(supervisor["child_pid"], signal.SIGKILL)  # orphaned by a dead supervisor

    def cleanup(self, ref: str) -> None:
        run_dir = self._run_dir(ref)
        if _lock_held(run_dir):
            raise ExecutorError(f"run {ref} is still running; cancel it before cleaning up")
        self._children.pop(ref, None)
        shutil.rmtree(run_dir, ignore_errors=True)

    def _run_dir(self, ref: str) -> Path:
        if ref != run_ref_safe(ref):
            raise ValueError(f"not a process-executor run ref: {ref!r}")
        return self.runs_dir / ref


def run_ref(run_id: str) -> str:
    """A directory name for ``run_id``: the id itself when it is filename-safe, else a safe form
    with a digest so that two ids never share a directory."""
    safe = run_ref_safe(run_id)
    if safe == run_id:
        return safe
    return f"{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"


def run_ref_safe(text: str) -> str:
    safe = re.sub(r"[^\w.@-]", "_", text)
    return "_" + safe if safe.startswith(".") else safe


def _lock_held(run_dir: Path) -> bool:
    try:
        fd = os.open(run_dir / "lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def _same_process(pid: int, start_ticks: int | None) -> bool:
    return start_ticks is not None and proc_start_ticks(pid) == start_ticks


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _group_of(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
