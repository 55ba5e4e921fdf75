"""Executors: how a site runs the work the platform leases to its agent.

An executor turns a ``Lease`` into something running on the site (a Slurm batch job, a
Kubernetes Job, a local process) and reports on it. The lease worker (``agents.worker``) is the
only caller; it keeps the run → ref mapping durable, so an executor needs no state of its own
beyond what its backend keeps, and every method may be called again after an agent restart.

* ``start(lease) -> ref``: idempotent per run id. Starting a run that is already started (the
  agent died between starting it and recording the ref) returns the existing ref.
* ``poll(ref) -> RunStatus``: never raises for a run that failed; a run the backend no longer
  knows is reported ``failed`` with a reason.
* ``cancel(ref)``: asks the backend to stop the run; safe on an ended run.
* ``cleanup(ref)``: frees what the run left (log files, the Job object) once its end is reported.

Executors register by name in ``EXECUTOR_KINDS`` (the names of ``ExecutorKind`` on the wire); a
plugin's module, and the vendor library it needs, is imported only when a config names it, so
the agent installs and starts without the ``kubernetes`` client where it runs Slurm.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from jinsuan.contract.leasewire import LOG_TAIL_MAX_BYTES, Lease

__all__ = [
    "EXECUTOR_KINDS",
    "Executor",
    "ExecutorConfigError",
    "ExecutorError",
    "RunPhase",
    "RunStatus",
    "StartError",
    "UnknownExecutor",
    "build_executor",
    "executor_names",
    "log_tail",
    "run_environment",
]

# name -> (config model, executor class), each "module:attribute".
EXECUTOR_KINDS: dict[str, tuple[str, str]] = {
    "process": (
        "agents.executors.process:ProcessConfig",
        "agents.executors.process:ProcessExecutor",
    ),
    "slurm": ("agents.executors.slurm:SlurmConfig", "agents.executors.slurm:SlurmExecutor"),
    "kubernetes": (
        "agents.executors.kubernetes:KubernetesConfig",
        "agents.executors.kubernetes:KubernetesExecutor",
    ),
}


class RunPhase(enum.StrEnum):
    PENDING = "pending"  # accepted by the backend, not yet running (queued in Slurm, pod pending)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (RunPhase.SUCCEEDED, RunPhase.FAILED)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """What the backend says about one run. ``reason`` says why a run failed when the exit code
    alone does not (timed out, cancelled, node failure, supervisor gone)."""

    state: RunPhase
    exit_code: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    log_tail: str = ""
    reason: str | None = None


class ExecutorError(Exception):
    """The backend could not be asked (command failed, API unreachable): try again later."""


class StartError(ExecutorError):
    """The run cannot start here at all (bad workdir, image refused, invalid request); retrying
    the same lease will not help, so the worker reports the run failed with this message."""


class UnknownExecutor(ValueError):
    pass


class ExecutorConfigError(ValueError):
    """The executor's options are wrong; ``problems`` holds one ``key: ...`` line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@runtime_checkable
class Executor(Protocol):
    name: str  # one of EXECUTOR_KINDS, sent as LeaseRequest.executor

    def start(self, lease: Lease) -> str: ...

    def poll(self, ref: str) -> RunStatus: ...

    def cancel(self, ref: str) -> None: ...

    def cleanup(self, ref: str) -> None: ...


def executor_names() -> list[str]:
    return sorted(EXECUTOR_KINDS)


def executor_settings(name: str, options: Mapping[str, Any]) -> BaseModel:
    """Validate ``options`` with the executor's config model, importing only that executor."""
    if name not in EXECUTOR_KINDS:
        raise UnknownExecutor(
            f"unknown executor {name!r}; expected one of {', '.join(executor_names())}"
        )
    model: type[BaseModel] = _resolve(EXECUTOR_KINDS[name][0])
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        raise ExecutorConfigError(
            [
                f"executor.{'.'.join(str(p) for p in err['loc']) or name}: {err['msg']}"
                for err in exc.errors()
            ]
        ) from None


def build_executor(name: str, options: Mapping[str, Any], state_dir: Path) -> Executor:
    """Validate ``options`` with the executor's config model and build it.

    ``state_dir`` is the agent's private directory; executors that keep files (run logs of the
    process executor) keep them under it unless their options say otherwise.
    """
    settings = executor_settings(name, options)
    return _resolve(EXECUTOR_KINDS[name][1])(settings, state_dir=Path(state_dir))


def run_environment(lease: Lease, devices: list[str] | None = None) -> dict[str, str]:
    """The environment a run starts with on any executor: the job's own variables, then the
    ``JINSUAN_*`` variables that tell the run who it is and, when the executor assigned them,
    the visible devices (these win over the job's). Never any of the agent's own."""
    env = {
        **lease.payload.env,
        "JINSUAN_RUN_ID": lease.run_id,
        "JINSUAN_JOB_ID": lease.job_id,
        "JINSUAN_TASKS": str(lease.tasks),
        "JINSUAN_ACCELERATORS_PER_TASK": str(lease.accelerators_per_task),
    }
    if devices is not None:
        visible = ",".join(devices)
        env |= {"CUDA_VISIBLE_DEVICES": visible, "ASCEND_RT_VISIBLE_DEVICES": visible}
    return env


def log_tail(path: Path, max_bytes: int = LOG_TAIL_MAX_BYTES) -> str:
    """The end of a log file as text of at most ``max_bytes`` UTF-8 bytes; '' if there is none.

    Bytes that are not UTF-8 become U+FFFD, which takes three bytes, so the text is trimmed again
    after decoding to stay within the wire's limit.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            raw = f.read(max_bytes)
    except (FileNotFoundError, IsADirectoryError):
        return ""
    return trim_tail(raw.decode("utf-8", errors="replace"), max_bytes)


def trim_tail(text: str, max_bytes: int = LOG_TAIL_MAX_BYTES) -> str:
    """The longest suffix of ``text`` that fits ``max_bytes`` UTF-8 bytes."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[-max_bytes:].decode("utf-8", errors="ignore")


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
