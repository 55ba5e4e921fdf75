"""The Slurm executor: its sbatch arguments and parsing on recorded command output, then real
jobs on a single-node Slurm cluster started by ``.ci/slurm.sh`` (skipped only where Slurm cannot
be installed)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from executor_kit import make_lease, wait_ended, wait_for
from slurm import start_cluster

from agents.executors import ExecutorError, RunPhase, StartError, build_executor
from agents.executors.slurm import (
    SlurmConfig,
    SlurmExecutor,
    batch_script,
    job_status,
    parse_sacct,
    parse_scontrol,
    sbatch_args,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")

# Recorded from Slurm 22.05 (Debian 12's slurm-wlm), trimmed.
SCONTROL_FAILED = (
    "JobId=1 JobName=jinsuan-test1 UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=FAILED "
    "Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=3:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-11-26T23:26:37 EligibleTime=2026-11-26T23:26:37 "
    "StartTime=2026-11-26T23:26:38 EndTime=2026-11-26T23:26:39 Deadline=N/A "
    "Partition=ci NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 "
    "Command=/tmp/sl/ok.sh WorkDir=/tmp/sl StdOut=/tmp/sl/ok.log TresPerNode=gres:gpu:2 \n"
)
SACCT_ROWS = (
    "41|CANCELLED by 0|0:15|2026-11-26T10:00:00|2026-11-26T10:05:00\n"
    "4|COMPLETED|0:0|2026-11-26T09:00:00|2026-11-26T09:01:00\n"
)


# -- arguments and script ------------------------------------------------------------------


def test_sbatch_args_name_output_tasks_time_and_site_options(tmp_path: Path) -> None:
    config = SlurmConfig(partition="gpu", account="acct", qos="normal", extra_args=["--exclusive"])
    lease = make_lease(["train"], tasks=1, max_runtime_s=61, workdir="/data/run")
    args = sbatch_args(lease, config, tmp_path)
    assert args == [
        f"--job-name=jinsuan-{lease.run_id}",
        f"--output={tmp_path}/jinsuan-%j.out",
        "--ntasks=1",
        "--export=NONE",
        "--time=2",
        "--chdir=/data/run",
        "--partition=gpu",
        "--account=acct",
        "--qos=normal",
        "--exclusive",
    ]


@pytest.mark.parametrize(
    ("model", "tasks", "per_task", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 1, 2, ["--gres=gpu:2"]),
        (None, 1, 4, ["--gres=gpu:4"]),  # no model: the site's default vendor
        ("NVIDIA A100 SXM4 80GB", 4, 1, ["--gpus-per-task=1"]),
        ("Ascend910B3", 1, 8, ["--gres=npu:8"]),
        ("Ascend910B3", 2, 8, ["--ntasks-per-node=1", "--gres=npu:8"]),
        ("NVIDIA H100 80GB HBM3", 2, 0, []),
    ],
)
def test_accelerators_become_gres_by_vendor(
    tmp_path: Path, model: str | None, tasks: int, per_task: int, expected: list[str]
) -> None:
    lease = make_lease(["x"], tasks=tasks, accelerators_per_task=per_task, accelerator_model=model)
    args = sbatch_args(lease, SlurmConfig(), tmp_path)
    accelerator_args = [a for a in args if a.startswith(("--gres", "--gpus", "--ntasks-per"))]
    assert accelerator_args == expected


def test_a_model_of_no_known_vendor_cannot_start(tmp_path: Path) -> None:
    lease = make_lease(["x"], accelerators_per_task=1, accelerator_model="FooChip 9000")
    with pytest.raises(StartError, match="FooChip 9000"):
        sbatch_args(lease, SlurmConfig(), tmp_path)
    cambricon = make_lease(["x"], accelerators_per_task=1, accelerator_model="Cambricon MLU370-X8")
    with pytest.raises(StartError, match=r"executor\.gres_by_vendor\.cambricon"):
        sbatch_args(cambricon, SlurmConfig(), tmp_path)


def test_the_batch_script_quotes_env_and_runs_a_gang_under_srun() -> None:
    tricky = "it's $HOME; `rm -rf /`"
    lease = make_lease(["python", "train.py", "--name", "a b"], env={"NOTE": tricky}, tasks=2)
    script = batch_script(lease)
    assert script.startswith("#!/bin/bash\n")
    assert script.rstrip().endswith("srun python train.py --name 'a b'")
    done = subprocess.run(
        ["bash", "-c", script.replace("srun python", "printf '%s\\n' \"$NOTE\"; : python")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == tricky + "\n"
    single = batch_script(make_lease(["true"]))
    assert single.rstrip().endswith("exec true")
    with pytest.raises(StartError, match="BAD-NAME"):
        batch_script(make_lease(["true"], env={"BAD-NAME": "1"}))


# -- parsing -------------------------------------------------------------------------------


def test_scontrol_fields_and_a_failed_job(tmp_path: Path) -> None:
    fields = parse_scontrol(SCONTROL_FAILED)
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "3:0"
    status = job_status(fields, tmp_path / "absent.out", SHANGHAI)
    assert status.state is RunPhase.FAILED
    assert status.exit_code == 3
    assert status.started_at == datetime(2026, 11, 26, 15, 26, 38, tzinfo=UTC)
    assert status.ended_at == datetime(2026, 11, 26, 15, 26, 39, tzinfo=UTC)
    assert status.reason == "Slurm job state FAILED"
    with pytest.raises(ExecutorError, match="no JobState"):
        parse_scontrol("slurm_load_jobs error: something\n")


@pytest.mark.parametrize(
    ("state", "exit_code", "phase", "code", "reason"),
    [
        ("COMPLETED", "0:0", RunPhase.SUCCEEDED, 0, None),
        ("CANCELLED", "0:15", RunPhase.FAILED, 143, "Slurm job state CANCELLED"),
        ("TIMEOUT", "0:0", RunPhase.FAILED, None, "Slurm job state TIMEOUT"),
        ("OUT_OF_MEMORY", "0:125", RunPhase.FAILED, 253, "Slurm job state OUT_OF_MEMORY"),
        ("NODE_FAIL", "0:0", RunPhase.FAILED, None, "Slurm job state NODE_FAIL"),
        ("FAILED", "1:0", RunPhase.FAILED, 1, "Slurm job state FAILED"),
    ],
)
def test_end_states(
    tmp_path: Path, state: str, exit_code: str, phase: RunPhase, code: int | None, reason
) -> None:
    fields = {
        "JobState": state,
        "ExitCode": exit_code,
        "StartTime": "2026-11-26T10:00:00",
        "EndTime": "2026-11-26T10:00:05",
    }
    status = job_status(fields, tmp_path / "absent.out", SHANGHAI)
    assert (status.state, status.exit_code, status.reason) == (phase, code, reason)


def test_waiting_and_running_states(tmp_path: Path) -> None:
    log = tmp_path / "job.out"
    log.write_text("step 1\n")
    pending = {"JobState": "PENDING", "ExitCode": "0:0", "StartTime": "2026-11-27T00:00:00"}
    status = job_status(pending, log, SHANGHAI)
    assert status.state is RunPhase.PENDING and status.started_at is None  # an estimate only
    running = {
        "JobState": "RUNNING",
        "ExitCode": "0:0",
        "StartTime": "2026-11-26T10:00:00",
        "EndTime": "2026-11-26T11:00:00",
    }
    status = job_status(running, log, SHANGHAI)
    assert status.state is RunPhase.RUNNING
    assert status.started_at == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    assert status.ended_at is None and status.log_tail == "step 1\n"
    with pytest.raises(ExecutorError, match="WEIRD"):
        job_status({"JobState": "WEIRD"}, log, SHANGHAI)


def test_sacct_picks_the_allocation_row() -> None:
    assert parse_sacct(SACCT_ROWS, "41") == {
        "JobState": "CANCELLED",
        "ExitCode": "0:15",
        "StartTime": "2026-11-26T10:00:00",
        "EndTime": "2026-11-26T10:05:00",
    }
    assert parse_sacct(SACCT_ROWS, "4")["JobState"] == "COMPLETED"
    assert parse_sacct(SACCT_ROWS, "5") is None


# -- the executor with recorded command output ---------------------------------------------


class ScriptedSlurm:
    """A runner that answers only the commands a test expects, in order, and fails otherwise."""

    def __init__(self, answers: list[tuple[list[str], int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, args: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess:
        self.calls.append((list(args), stdin))
        assert self.answers, f"unexpected command {list(args)}"
        prefix, rc, out, err = self.answers.pop(0)
        assert list(args[: len(prefix)]) == prefix, f"expected {prefix}, got {list(args)}"
        return subprocess.CompletedProcess(list(args), rc, out, err)


def scripted(tmp_path: Path, answers) -> tuple[SlurmExecutor, ScriptedSlurm]:
    runner = ScriptedSlurm(answers)
    config = SlurmConfig(timezone="Asia/Shanghai")
    return SlurmExecutor(config, state_dir=tmp_path, runner=runner), runner


def test_start_finds_a_job_it_submitted_before_instead_of_submitting_again(
    tmp_path: Path,
) -> None:
    executor, runner = scripted(tmp_path, [(["squeue"], 0, "77\n", "")])
    lease = make_lease(["true"])
    assert executor.start(lease) == "77"
    assert f"--name=jinsuan-{lease.run_id}" in runner.calls[0][0]


def test_start_submits_with_the_script_on_stdin(tmp_path: Path) -> None:
    executor, runner = scripted(
        tmp_path, [(["squeue"], 0, "", ""), (["sbatch", "--parsable"], 0, "123;cluster\n", "")]
    )
    assert executor.start(make_lease(["echo", "hi"])) == "123"
    args, stdin = runner.calls[1]
    assert "--ntasks=1" in args and any(a.startswith("--job-name=jinsuan-") for a in args)
    assert stdin is not None and stdin.rstrip().endswith("exec echo hi")


def test_sbatch_refusal_is_final_and_an_unreachable_controller_is_not(tmp_path: Path) -> None:
    refused = "sbatch: error: Batch job submission failed: Invalid generic resource (gres) spec"
    executor, _ = scripted(tmp_path, [(["squeue"], 0, "", ""), (["sbatch"], 1, "", refused)])
    with pytest.raises(StartError, match="Invalid generic resource"):
        executor.start(make_lease(["true"]))
    down = "sbatch: error: Batch job submission failed: Unable to contact slurm controller"
    executor, _ = scripted(tmp_path, [(["squeue"], 0, "", ""), (["sbatch"], 1, "", down)])
    with pytest.raises(ExecutorError) as caught:
        executor.start(make_lease(["true"]))
    assert not isinstance(caught.value, StartError)


def test_poll_falls_back_to_sacct_once_the_controller_forgot_the_job(tmp_path: Path) -> None:
    invalid = "slurm_load_jobs error: Invalid job id specified\n"
    executor, runner = scripted(
        tmp_path, [(["scontrol"], 1, "", invalid), (["sacct"], 0, SACCT_ROWS, "")]
    )
    status = executor.poll("41")
    assert status.state is RunPhase.FAILED and status.reason == "Slurm job state CANCELLED"
    assert "--jobs=41" in runner.calls[1][0]
    executor, _ = scripted(tmp_path, [(["scontrol"], 1, "", invalid), (["sacct"], 0, "", "")])
    assert "no longer knows job 5" in (executor.poll("5").reason or "")
    executor, _ = scripted(tmp_path, [(["scontrol"], 1, "", "Unable to contact slurm")])
    with pytest.raises(ExecutorError, match="Unable to contact"):
        executor.poll("5")


def test_cancel_of_an_ended_job_is_fine(tmp_path: Path) -> None:
    gone = "scancel: error: Kill job error on job id 9: Job/step already completing or completed"
    executor, _ = scripted(tmp_path, [(["scancel", "9"], 1, "", gone)])
    executor.cancel("9")
    executor, _ = scripted(tmp_path, [(["scancel", "9"], 1, "", "Access/permission denied")])
    with pytest.raises(ExecutorError, match="permission"):
        executor.cancel("9")


# -- a real single-node cluster ------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    start_cluster()


@pytest.fixture
def slurm(slurm_cluster: None, tmp_path: Path) -> SlurmExecutor:
    built = build_executor("slurm", {"log_dir": str(tmp_path / "logs")}, tmp_path)
    assert isinstance(built, SlurmExecutor)
    return built


def test_a_job_completes_with_its_exit_code_times_and_log(
    slurm: SlurmExecutor, tmp_path: Path
) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    lease = make_lease(
        ["/bin/sh", "-c", 'echo "hello $WHO in $(pwd) as $JINSUAN_RUN_ID"'],
        env={"WHO": "slurm"},
        workdir=str(workdir),
    )
    ref = slurm.start(lease)
    assert slurm.start(lease) == ref  # found by its job name, not submitted twice
    status = wait_ended(slurm, ref, timeout=60)
    assert status.state is RunPhase.SUCCEEDED, status
    assert status.exit_code == 0
    assert f"hello slurm in {workdir} as {lease.run_id}" in status.log_tail
    assert status.started_at is not None and status.ended_at is not None
    assert status.started_at <= status.ended_at <= datetime.now(UTC)
    slurm.cleanup(ref)
    assert not slurm.log_path(ref).exists()


def test_a_failing_job_reports_its_exit_code(slurm: SlurmExecutor) -> None:
    ref = slurm.start(make_lease(["/bin/sh", "-c", "echo bad input >&2; exit 3"]))
    status = wait_ended(slurm, ref, timeout=60)
    assert status.state is RunPhase.FAILED
    assert status.exit_code == 3
    assert "bad input" in status.log_tail


def test_a_job_gets_none_of_the_agents_environment(
    slurm: SlurmExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sbatch would pass the submitting agent's whole environment (its secrets with it); the
    job gets the run's own environment only, in its batch script and in srun's tasks."""
    monkeypatch.setenv("JINSUAN_AGENT_BMC_PASSWORD", "Hunter2-Secret")
    show = ["/bin/sh", "-c", 'echo "who=$WHO secret=$JINSUAN_AGENT_BMC_PASSWORD"']
    single = slurm.start(make_lease(show, env={"WHO": "job"}))
    gang = slurm.start(make_lease(show, env={"WHO": "gang"}, tasks=2))
    for ref, who in ((single, "job"), (gang, "gang")):
        status = wait_ended(slurm, ref, timeout=60)
        assert status.state is RunPhase.SUCCEEDED, status
        assert f"who={who} secret=\n" in status.log_tail + "\n"
        assert "Hunter2-Secret" not in status.log_tail


def test_accelerators_are_allocated_as_gres(slurm: SlurmExecutor) -> None:
    one = slurm.start(
        make_lease(["/bin/sh", "-c", "echo devices=$CUDA_VISIBLE_DEVICES"], accelerators_per_task=2)
    )
    gang = slurm.start(
        make_lease(
            ["/bin/sh", "-c", "echo task=$SLURM_PROCID gpus=$CUDA_VISIBLE_DEVICES"],
            tasks=2,
            accelerators_per_task=1,
        )
    )
    status = wait_ended(slurm, one, timeout=60)
    assert status.state is RunPhase.SUCCEEDED, status
    assert "devices=0,1" in status.log_tail
    status = wait_ended(slurm, gang, timeout=60)
    assert status.state is RunPhase.SUCCEEDED, status
    assert "task=0 gpus=" in status.log_tail and "task=1 gpus=" in status.log_tail


def test_scancel_ends_the_job_cancelled(slurm: SlurmExecutor, tmp_path: Path) -> None:
    ref = slurm.start(make_lease(["/bin/sh", "-c", "echo started; exec sleep 300"]))
    wait_for(lambda: slurm.poll(ref), lambda s: s.state is RunPhase.RUNNING, timeout=60)
    slurm.cancel(ref)
    status = wait_ended(slurm, ref, timeout=60)
    assert status.state is RunPhase.FAILED
    assert status.reason == "Slurm job state CANCELLED"
    slurm.cancel(ref)  # again, on an ended job: no error


@pytest.mark.slow
def test_max_runtime_ends_the_job_timed_out(slurm: SlurmExecutor) -> None:
    ref = slurm.start(
        make_lease(["/bin/sh", "-c", "echo started; exec sleep 600"], max_runtime_s=1)
    )
    status = wait_ended(slurm, ref, timeout=180)  # Slurm limits are whole minutes
    assert status.state is RunPhase.FAILED
    assert status.reason == "Slurm job state TIMEOUT"
    assert "started" in status.log_tail
