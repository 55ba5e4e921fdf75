"""The process executor, with real subprocesses: outcomes, limits, cancel, and agent restarts."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from executor_kit import make_lease, wait_ended, wait_for

from agents.executors import (
    Executor,
    ExecutorConfigError,
    ExecutorError,
    RunPhase,
    StartError,
    UnknownExecutor,
    build_executor,
    run_environment,
)
from agents.executors.process import ProcessConfig, ProcessExecutor, run_ref
from agents.executors.supervise import proc_start_ticks
from jinsuan.contract.leasewire import LOG_TAIL_MAX_BYTES


@pytest.fixture
def executor(tmp_path: Path) -> ProcessExecutor:
    return ProcessExecutor(ProcessConfig(kill_grace_s=2.0), state_dir=tmp_path)


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def test_a_run_succeeds_with_its_output_env_and_workdir(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    lease = make_lease(
        sh('echo "hello $GREETING from $(pwd) run $JINSUAN_RUN_ID"; echo oops >&2'),
        env={"GREETING": "bonjour"},
        workdir=str(workdir),
    )
    ref = executor.start(lease)
    status = wait_ended(executor, ref)
    assert status.state is RunPhase.SUCCEEDED
    assert status.exit_code == 0
    assert status.reason is None
    assert f"hello bonjour from {workdir} run {lease.run_id}" in status.log_tail
    assert "oops" in status.log_tail
    assert status.started_at is not None and status.ended_at is not None
    assert status.started_at.tzinfo is not None
    assert status.started_at <= status.ended_at


def test_a_job_cannot_pose_as_another_run(executor: ProcessExecutor) -> None:
    """The run's own JINSUAN_* variables win over a job's (one rule for every executor)."""
    lease = make_lease(sh('echo "run $JINSUAN_RUN_ID tasks $JINSUAN_TASKS"'), tasks=1,
                       env={"JINSUAN_RUN_ID": "run-forged", "JINSUAN_TASKS": "64"})
    assert run_environment(lease)["JINSUAN_RUN_ID"] == lease.run_id
    status = wait_ended(executor, executor.start(lease))
    assert f"run {lease.run_id} tasks 1" in status.log_tail
    assert "forged" not in status.log_tail


def test_a_failing_command_reports_its_exit_code(executor: ProcessExecutor) -> None:
    ref = executor.start(make_lease(sh("echo about to fail; exit 3")))
    status = wait_ended(executor, ref)
    assert status.state is RunPhase.FAILED
    assert status.exit_code == 3
    assert "about to fail" in status.log_tail


def test_a_missing_program_fails_with_127_and_says_why(executor: ProcessExecutor) -> None:
    ref = executor.start(make_lease(["/nonexistent/program", "x"]))
    status = wait_ended(executor, ref)
    assert status.state is RunPhase.FAILED
    assert status.exit_code == 127
    assert status.reason is not None and "/nonexistent/program" in status.reason


def test_a_workdir_that_does_not_exist_refuses_to_start(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    with pytest.raises(StartError, match="not a directory"):
        executor.start(make_lease(sh("true"), workdir=str(tmp_path / "absent")))


def test_max_runtime_terminates_the_run(executor: ProcessExecutor) -> None:
    ref = executor.start(make_lease(sh("echo started; exec sleep 60"), max_runtime_s=1))
    status = wait_ended(executor, ref, timeout=20)
    assert status.state is RunPhase.FAILED
    assert status.reason is not None and "timed out after 1 s" in status.reason
    assert status.exit_code == 128 + signal.SIGTERM


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    executor = ProcessExecutor(ProcessConfig(kill_grace_s=0.5), state_dir=tmp_path)
    script = "trap '' TERM; echo ready; while true; do sleep 0.1; done"
    ref = executor.start(make_lease(sh(script), max_runtime_s=1))
    status = wait_ended(executor, ref, timeout=20)
    assert status.state is RunPhase.FAILED
    assert status.exit_code == 128 + signal.SIGKILL
    assert "timed out" in (status.reason or "")


def test_cancel_stops_the_whole_process_group(executor: ProcessExecutor, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    ref = executor.start(make_lease(sh(f"sleep 60 & echo $! > {pids}; wait")))
    wait_for(lambda: pids.exists() and pids.read_text().strip(), bool)
    background = int(pids.read_text())
    assert executor.poll(ref).state is RunPhase.RUNNING
    executor.cancel(ref)
    status = wait_ended(executor, ref)
    assert status.state is RunPhase.FAILED
    assert status.reason == "cancelled"
    assert proc_start_ticks(background) is None  # the backgrounded sleep went with its run


def test_start_is_idempotent_per_run(executor: ProcessExecutor, tmp_path: Path) -> None:
    count = tmp_path / "count"
    lease = make_lease(sh(f"echo x >> {count}; sleep 0.3"))
    ref = executor.start(lease)
    assert executor.start(lease) == ref  # while it runs
    wait_ended(executor, ref)
    assert executor.start(lease) == ref  # and after it ended
    assert wait_ended(executor, ref).state is RunPhase.SUCCEEDED
    assert count.read_text() == "x\n"


def test_a_new_agent_reattaches_to_a_running_run(tmp_path: Path) -> None:
    release = tmp_path / "release"
    count = tmp_path / "count"
    lease = make_lease(sh(f"echo x >> {count}; while [ ! -e {release} ]; do sleep 0.05; done"))
    first = ProcessExecutor(state_dir=tmp_path)
    ref = first.start(lease)
    wait_for(lambda: first.poll(ref).state, lambda s: s is RunPhase.RUNNING)

    restarted = ProcessExecutor(state_dir=tmp_path)  # same state dir, no memory of the run
    assert restarted.start(lease) == ref
    assert restarted.poll(ref).state is RunPhase.RUNNING
    release.touch()
    status = wait_ended(restarted, ref)
    assert status.state is RunPhase.SUCCEEDED
    assert count.read_text() == "x\n"


def test_a_killed_supervisor_is_reported_failed_and_its_orphan_is_stopped(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    ref = executor.start(make_lease(sh("exec sleep 60")))
    supervisor_file = executor.runs_dir / ref / "supervisor.json"
    info = wait_for(lambda: json.loads(supervisor_file.read_text()), lambda d: "child_pid" in d)
    os.kill(info["pid"], signal.SIGKILL)
    status = wait_ended(executor, ref)
    assert status.state is RunPhase.FAILED
    assert status.reason is not None and f"pid {info['pid']}" in status.reason
    assert proc_start_ticks(info["child_pid"]) is not None  # the command outlived it
    executor.cancel(ref)
    wait_for(lambda: proc_start_ticks(info["child_pid"]), lambda t: t is None)


def test_the_log_tail_fits_the_wire_limit_and_keeps_the_end(executor: ProcessExecutor) -> None:
    script = (
        "import sys\n"
        "for i in range(20000): print(f'line {i} ' + 'é' * 10)\n"
        "sys.stdout.buffer.write(bytes([0xff, 0xfe]) * 40000)\n"
        "print('the last line')\n"
    )
    ref = executor.start(make_lease([sys.executable, "-c", script]))
    status = wait_ended(executor, ref)
    assert status.state is RunPhase.SUCCEEDED
    assert len(status.log_tail.encode()) <= LOG_TAIL_MAX_BYTES
    assert status.log_tail.endswith("the last line\n")


def test_cleanup_removes_an_ended_run_and_refuses_a_running_one(
    executor: ProcessExecutor,
) -> None:
    running = executor.start(make_lease(sh("exec sleep 60")))
    wait_for(lambda: executor.poll(running).state, lambda s: s is RunPhase.RUNNING)
    with pytest.raises(ExecutorError, match="still running"):
        executor.cleanup(running)
    executor.cancel(running)
    wait_ended(executor, running)
    executor.cleanup(running)
    assert not (executor.runs_dir / running).exists()


def test_run_ids_map_to_distinct_safe_directories() -> None:
    assert run_ref("run-1") == "run-1"
    odd = [run_ref("a/b"), run_ref("a_b"), run_ref("a:b"), run_ref(".."), run_ref("../x")]
    assert len(set(odd)) == len(odd)
    assert all("/" not in ref and not ref.startswith(".") for ref in odd)


def test_the_registry_builds_by_name_and_names_the_valid_ones(tmp_path: Path) -> None:
    built = build_executor("process", {"kill_grace_s": 1}, tmp_path)
    assert isinstance(built, ProcessExecutor) and isinstance(built, Executor)
    with pytest.raises(UnknownExecutor, match="kubernetes, process, slurm"):
        build_executor("docker", {}, tmp_path)
    with pytest.raises(ExecutorConfigError, match=r"executor\.kill_grace_s"):
        build_executor("process", {"kill_grace_s": -1}, tmp_path)
    with pytest.raises(ExecutorConfigError, match=r"executor\.bogus"):
        build_executor("process", {"bogus": 1}, tmp_path)


def test_a_job_sees_none_of_the_agents_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's environment may hold its secrets (and its site config's): a job sees only
    the variables named in pass_env, its own, and the run's JINSUAN_* ones."""
    monkeypatch.setenv("JINSUAN_AGENT_BMC_PASSWORD", "Hunter2-Secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    lease = make_lease(sh("env | sort"), env={"MY_TOKEN": "job-own"})
    executor = ProcessExecutor(state_dir=tmp_path / "a")
    plain = wait_ended(executor, executor.start(lease))
    assert "Hunter2-Secret" not in plain.log_tail
    assert "MY_TOKEN=job-own" in plain.log_tail and "PATH=" in plain.log_tail
    assert "LANG=" not in plain.log_tail
    opted = ProcessExecutor(ProcessConfig(pass_env=["PATH", "LANG"]), state_dir=tmp_path / "b")
    status = wait_ended(opted, opted.start(make_lease(sh("env | sort"))))
    assert "LANG=C.UTF-8" in status.log_tail and "Hunter2-Secret" not in status.log_tail


def test_a_run_sees_only_the_devices_its_lease_grants(tmp_path: Path) -> None:
    executor = ProcessExecutor(ProcessConfig(devices=["0", "1", "2"]), state_dir=tmp_path)
    show = sh('echo "cuda=$CUDA_VISIBLE_DEVICES ascend=$ASCEND_RT_VISIBLE_DEVICES"; sleep 30')
    two = executor.start(make_lease(show, accelerators_per_task=2))
    assert "cuda=0,1 ascend=0,1" in wait_for(lambda: executor.poll(two).log_tail,
                                  lambda tail: "cuda=" in tail)
    one = executor.start(make_lease(show, accelerators_per_task=1))
    assert "cuda=2 ascend=2" in wait_for(lambda: executor.poll(one).log_tail,
                                  lambda tail: "cuda=" in tail)  # none shared with a live run
    with pytest.raises(StartError, match="0 of this host's devices"):
        executor.start(make_lease(show, accelerators_per_task=1))
    executor.cancel(two)
    wait_ended(executor, two)
    again = executor.start(make_lease(show, accelerators_per_task=2))  # freed by the cancel
    assert "cuda=0,1" in wait_for(lambda: executor.poll(again).log_tail,
                                  lambda tail: "cuda=" in tail)
    for ref in (one, again):
        executor.cancel(ref)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs the agent to run as root")
def test_a_job_run_as_an_unprivileged_user_cannot_read_the_agents_key(tmp_path: Path) -> None:
    key = tmp_path / "state" / "agent.key"
    key.parent.mkdir()
    key.write_text("the agent's signing key")
    key.chmod(0o600)
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o755)
    executor = ProcessExecutor(ProcessConfig(run_as="nobody", runs_dir=runs),
                               state_dir=tmp_path / "state")
    status = wait_ended(executor, executor.start(make_lease(sh(f"id -u; cat {key}"))))
    assert "65534" in status.log_tail
    assert "the agent's signing key" not in status.log_tail
    assert "Permission denied" in status.log_tail
