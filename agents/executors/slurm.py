"""The Slurm executor: each run is one batch job, submitted with ``sbatch`` from the agent's host.

The agent runs where Slurm's client commands work (a login or controller node). For a lease it
writes a batch script (the run's environment, then its command) and submits it on stdin with
``sbatch --parsable`` and these options as arguments:

* ``--job-name=jinsuan-<run_id>``: also how ``start`` finds a job it submitted before an agent
  crash, so a run is never submitted twice.
* ``--ntasks`` from the lease's tasks (a gang: Slurm starts all of them or none); with more than
  one task the command runs under ``srun``, once per task.
* accelerators: ``--gres=<name>:<n>`` for a single task; for several tasks, ``--gpus-per-task``
  where the gres is ``gpu``, otherwise one task per node with ``--gres=<name>:<n>`` (Slurm's
  per-task form exists for GPUs only). The name is by vendor (``gres_by_vendor``).
* ``--time`` from the max runtime, rounded up to whole minutes (Slurm keeps limits in minutes).
* ``--output`` to ``<log_dir>/jinsuan-%j.out`` (stdout and stderr). ``log_dir`` must be on a
  file system the compute nodes and the agent's host share; its tail is the run's log tail.

Following a job: ``scontrol show job --oneliner`` while the controller still holds the job (it
has the exit code, which ``squeue`` cannot show), then ``sacct`` (``--parsable2 --noheader``,
State, ExitCode, Start, End) once the controller has purged it after ``MinJobAge``; sacct needs
slurmdbd. Slurm prints times in the controller's local time without an offset; ``timezone``
names that zone when it is not the agent's.

Every command goes through an injected runner, so parsing is tested on recorded output and the
executor itself on a real single-node cluster.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from agents.executors import (
    ExecutorError,
    RunPhase,
    RunStatus,
    StartError,
    log_tail,
    run_environment,
)
from agents.executors.accelerators import resource_name
from jinsuan.contract.leasewire import Lease

Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]

PENDING_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
RUNNING_STATES = frozenset(
    {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"}
)
FAILED_STATES = frozenset(
    {
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)
SUCCEEDED_STATE = "COMPLETED"
_NO_TIME = frozenset({"", "Unknown", "None", "N/A"})
# sbatch messages that mean "try again later", not "this job can never be submitted".
_TRANSIENT = ("temporarily", "Unable to contact", "timed out", "Try again", "try again")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SlurmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sbatch: str = "sbatch"
    squeue: str = "squeue"
    scontrol: str = "scontrol"
    sacct: str = "sacct"
    scancel: str = "scancel"
    log_dir: Path | None = Field(
        default=None,
        description="Job output files, on a file system shared with the compute nodes; "
        "<state_dir>/slurm-logs if unset.",
    )
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    extra_args: list[str] = Field(default_factory=list, description="More sbatch options.")
    gres_by_vendor: dict[str, str] = Field(
        default_factory=lambda: {"nvidia": "gpu", "huawei": "npu"}
    )
    default_vendor: str = Field(
        default="nvidia", description="Vendor of leases that name no accelerator model."
    )
    timezone: str | None = Field(
        default=None, description="IANA zone of Slurm's clock; the agent's local zone if unset."
    )
    command_timeout_s: float = Field(default=30.0, gt=0)


class SlurmExecutor:
    name = "slurm"

    def __init__(
        self, config: SlurmConfig | None = None, *, state_dir: Path, runner: Runner | None = None
    ) -> None:
        self.config = config or SlurmConfig()
        self.log_dir = Path(self.config.log_dir or Path(state_dir) / "slurm-logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._run = runner or self._subprocess
        self._zone = ZoneInfo(self.config.timezone) if self.config.timezone else None

    # -- the protocol ---------------------------------------------------------------------

    def start(self, lease: Lease) -> str:
        name = job_name(lease.run_id)
        found = self._check(
            [self.config.squeue, "--noheader", "--states=all", f"--name={name}", "--format=%i"]
        )
        existing = sorted(int(line) for line in found.split() if line.isdigit())
        if existing:
            return str(existing[0])
        args = [self.config.sbatch, "--parsable", *sbatch_args(lease, self.config, self.log_dir)]
        result = self._run(args, batch_script(lease))
        if result.returncode != 0:
            message = result.stderr.strip() or result.stdout.strip()
            if "submission failed" in message and not any(m in message for m in _TRANSIENT):
                raise StartError(f"sbatch refused the job: {message}")
            raise ExecutorError(f"sbatch failed (exit {result.returncode}): {message}")
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise ExecutorError(
                f"sbatch --parsable printed {result.stdout.strip()!r}, not a job id"
            )
        return job_id

    def poll(self, ref: str) -> RunStatus:
        job_id = _job_id(ref)
        shown = self._run([self.config.scontrol, "show", "job", "--oneliner", job_id], None)
        if shown.returncode == 0:
            fields = parse_scontrol(shown.stdout)
        elif "Invalid job id" in shown.stderr:
            fields = self._sacct(job_id)
        else:
            raise ExecutorError(f"scontrol show job {job_id} failed: {shown.stderr.strip()}")
        if fields is None:
            return RunStatus(
                state=RunPhase.FAILED,
                log_tail=log_tail(self.log_path(job_id)),
                reason=f"Slurm no longer knows job {job_id} (purged, and no accounting record)",
            )
        return job_status(fields, self.log_path(job_id), self._zone)

    def cancel(self, ref: str) -> None:
        job_id = _job_id(ref)
        result = self._run([self.config.scancel, job_id], None)
        if result.returncode != 0 and not _already_gone(result.stderr):
            raise ExecutorError(f"scancel {job_id} failed: {result.stderr.strip()}")

    def cleanup(self, ref: str) -> None:
        self.log_path(_job_id(ref)).unlink(missing_ok=True)

    def log_path(self, job_id: str) -> Path:
        return self.log_dir / f"jinsuan-{job_id}.out"

    # -- helpers ---------------------------------------------------------------------------

    def _sacct(self, job_id: str) -> dict[str, str] | None:
        out = self._check(
            [
                self.config.sacct,
                "--parsable2",
                "--noheader",
                "--allocations",
                f"--jobs={job_id}",
                "--format=JobID,State,ExitCode,Start,End",
            ]
        )
        return parse_sacct(out, job_id)

    def _check(self, args: Sequence[str]) -> str:
        result = self._run(args, None)
        if result.returncode != 0:
            raise ExecutorError(
                f"{args[0]} failed (exit {result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

    def _subprocess(self, args: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                list(args),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.config.command_timeout_s,
                check=False,
            )
        except FileNotFoundError:
            raise ExecutorError(f"Slurm command {args[0]!r} not found") from None
        except subprocess.TimeoutExpired:
            raise ExecutorError(
                f"{args[0]} did not answer within {self.config.command_timeout_s} s"
            ) from None


def job_name(run_id: str) -> str:
    return f"jinsuan-{run_id}"


def sbatch_args(lease: Lease, config: SlurmConfig, log_dir: Path) -> list[str]:
    """The ``sbatch`` options for ``lease``, given as arguments (no quoting to get wrong)."""
    options = [
        f"--job-name={job_name(lease.run_id)}",
        f"--output={log_dir}/jinsuan-%j.out",
        f"--ntasks={lease.tasks}",
        # Nothing of the agent's own environment (its settings, its secrets) reaches the job:
        # the batch script exports the run's environment itself (batch_script).
        "--export=NONE",
    ]
    if lease.accelerators_per_task:
        gres = resource_name(lease, config.gres_by_vendor, config.default_vendor, "gres_by_vendor")
        count = lease.accelerators_per_task
        if lease.tasks == 1:
            options.append(f"--gres={gres}:{count}")
        elif gres == "gpu":
            options.append(f"--gpus-per-task={count}")
        else:
            options += ["--ntasks-per-node=1", f"--gres={gres}:{count}"]
    if lease.max_runtime_s:
        options.append(f"--time={math.ceil(lease.max_runtime_s / 60)}")
    if lease.payload.workdir:
        options.append(f"--chdir={lease.payload.workdir}")
    for flag, value in (
        ("--partition", config.partition),
        ("--account", config.account),
        ("--qos", config.qos),
    ):
        if value:
            options.append(f"{flag}={value}")
    return options + config.extra_args


def batch_script(lease: Lease) -> str:
    """The batch script: the run's environment, then its command (under ``srun`` for a gang)."""
    env = run_environment(lease)
    bad = sorted(name for name in env if not _ENV_NAME.match(name))
    if bad:
        raise StartError(f"environment variable names not usable in a shell: {', '.join(bad)}")
    command = shlex.join(lease.payload.command)
    return "\n".join(
        [
            "#!/bin/bash",
            *(f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())),
            # sbatch --export=NONE would make srun pass nothing either: the tasks get the
            # script's environment (the run's own), still none of the agent's.
            "export SLURM_EXPORT_ENV=ALL",
            f"srun {command}" if lease.tasks > 1 else f"exec {command}",
            "",
        ]
    )


def parse_scontrol(text: str) -> dict[str, str]:
    """The fields this executor reads from one ``scontrol show job --oneliner`` line."""
    fields: dict[str, str] = {}
    for key in ("JobState", "ExitCode", "StartTime", "EndTime", "Reason"):
        match = re.search(rf"(?:^|\s){key}=(\S*)", text)
        if match:
            fields[key] = match.group(1)
    if "JobState" not in fields:
        raise ExecutorError(f"scontrol printed no JobState: {text.strip()[:200]!r}")
    return fields


def parse_sacct(text: str, job_id: str) -> dict[str, str] | None:
    """The allocation's row of ``sacct --parsable2 --noheader`` (JobID|State|ExitCode|Start|End)
    as scontrol-named fields; None if sacct has no row for ``job_id``."""
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) != 5:
            continue
        if cells[0] == job_id:
            return {
                "JobState": cells[1].split()[0] if cells[1] else "",  # "CANCELLED by 0"
                "ExitCode": cells[2],
                "StartTime": cells[3],
                "EndTime": cells[4],
            }
    return None


def job_status(fields: dict[str, str], log: Path, zone: ZoneInfo | None) -> RunStatus:
    state = fields["JobState"].rstrip("+")
    tail = log_tail(log)
    if state in PENDING_STATES:
        return RunStatus(state=RunPhase.PENDING, log_tail=tail)
    started = _slurm_time(fields.get("StartTime", ""), zone)
    if state in RUNNING_STATES:
        return RunStatus(state=RunPhase.RUNNING, started_at=started, log_tail=tail)
    if state != SUCCEEDED_STATE and state not in FAILED_STATES:
        raise ExecutorError(f"unknown Slurm job state {state!r}")
    code, signal = _exit_code(fields.get("ExitCode", ""))
    if signal:
        exit_code: int | None = 128 + signal
    elif code or state == SUCCEEDED_STATE:
        exit_code = code
    else:
        exit_code = None  # 0:0 on a cancelled or timed-out job means no exit status, not success
    return RunStatus(
        state=RunPhase.SUCCEEDED if state == SUCCEEDED_STATE else RunPhase.FAILED,
        exit_code=exit_code,
        started_at=started,
        ended_at=_slurm_time(fields.get("EndTime", ""), zone),
        log_tail=tail,
        reason=None if state == SUCCEEDED_STATE else f"Slurm job state {state}",
    )


def _exit_code(text: str) -> tuple[int, int]:
    code, _, signal = text.partition(":")
    try:
        return int(code), int(signal or 0)
    except ValueError:
        raise ExecutorError(f"Slurm exit code {text!r} is not <code>:<signal>") from None


def _slurm_time(text: str, zone: ZoneInfo | None) -> datetime | None:
    if text in _NO_TIME:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ExecutorError(f"Slurm time {text!r} is not YYYY-MM-DDTHH:MM:SS") from None
    value = value.replace(tzinfo=zone) if zone else value.astimezone()  # naive = local time
    return value.astimezone(UTC)


def _job_id(ref: str) -> str:
    if not ref.isdigit():
        raise ValueError(f"not a Slurm job id: {ref!r}")
    return ref


def _already_gone(stderr: str) -> bool:
    return "already completing or completed" in stderr or "Invalid job id" in stderr
