"""``jinsuan job`` against a real platform served by uvicorn on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from servers import serving
from typer.testing import CliRunner

from jinsuan.app import create_app
from jinsuan.cli.job import job_app
from jinsuan.contract.leasewire import LeaseRequest, RunEvent
from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.errors import Conflict
from jinsuan.kernel.platform import Platform
from scheduler.config import SchedulerConfig
from scheduler.cycle import run_cycle
from scheduler.jobs import submit_job
from scheduler.leases import handle_event, handle_lease
from scheduler.seed import PoolSpec, seed_site
from scheduler.spec import JobSpec


@pytest.fixture
def served(settings, db) -> Iterator[str]:
    with serving(create_app(Platform(settings=settings, db=db))) as url:
        yield url


def test_submit_from_yaml_show_why_not_list_and_cancel(served, conn, db, tmp_path):
    seed_site(conn, db.partitions, name="taiyuan-1", city="Taiyuan", now=datetime.now(UTC),
              pools=[PoolSpec("H100", 8, Decimal("10.00"))])
    env = {"JINSUAN_URL": served, "COLUMNS": "200",
           "JINSUAN_API_KEY": create_key(conn, Role.DISPATCHER, tenant="t1")}
    spec = tmp_path / "job.yaml"
    spec.write_text("project: llm\ntasks: 2\naccelerators_per_task: 8\n"
                    "constraints:\n  models: [H100]\n"
                    "payload:\n  command: [python, train.py]\n")
    runner = CliRunner()
    submitted = runner.invoke(job_app, ["submit", str(spec), "--priority", "5"], env=env)
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()  # the id alone on stdout; warnings go to stderr
    assert job_id.startswith("job_")
    assert "warning: too_small" in submitted.stderr
    shown = runner.invoke(job_app, ["show", job_id], env=env)
    assert shown.exit_code == 0, shown.output
    assert "why not placed yet" in shown.output and "too_small" in shown.output
    listed = runner.invoke(job_app, ["list"], env=env)
    assert job_id in listed.output and "queued" in listed.output
    cancelled = runner.invoke(job_app, ["cancel", job_id], env=env)
    assert cancelled.output.strip() == "cancelled"
    watched = runner.invoke(job_app, ["watch", job_id], env=env)
    assert watched.exit_code == 0 and "cancelled" in watched.output


def test_bad_specs_name_the_file_and_field(served, conn, tmp_path):
    env = {"JINSUAN_URL": served, "JINSUAN_API_KEY": create_key(conn, Role.DISPATCHER,
                                                                tenant="t1")}
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4)  # the message is wider than a terminal
    deep.mkdir()
    spec = deep / "job.yaml"
    spec.write_text("project: llm\naccelerators_per_task: 0\npayload: {command: [x]}\n")
    runner = CliRunner()
    result = runner.invoke(job_app, ["submit", str(spec)], env=env)
    assert result.exit_code == 2
    assert str(spec) in result.output and "accelerators_per_task" in result.output
    flags = runner.invoke(job_app, ["submit", "--project", "p", "-c", "true", "--env", "novalue"],
                          env=env)
    assert flags.exit_code == 2 and "KEY=VALUE" in flags.output
    other = runner.invoke(job_app, ["show", "job_nope"], env=env)
    assert other.exit_code == 2 and "404" in other.output


def test_show_prints_an_ended_runs_output_to_its_tenant_and_what_can_never_be(
        served, conn, db):
    """A job run through the scheduler's own functions (as tests/scheduling_story.py plays them)
    ends with a log tail in its run event; ``show`` prints it to the job's tenant."""
    now = datetime.now(UTC)
    cfg = SchedulerConfig()
    site_id, agent_id = seed_site(conn, db.partitions, name="taiyuan-1", city="Taiyuan", now=now,
                                  pools=[PoolSpec("H100", 8, Decimal("10.00"))])
    agent = SignedBy(agent_id, site_id)
    job_id = submit_job(conn, JobSpec(project="llm", payload={"command": ["python", "t.py"]}),
                        "t1", now)
    asking = LeaseRequest(agent_id=agent_id, sent_at=now, executor="process", free_slots=1)
    assert handle_lease(conn, agent, asking, cfg, now).new == []  # the agent asks for work
    assert run_cycle(conn, cfg, now).placed == 1
    (lease,) = handle_lease(conn, agent, asking, cfg, now).new
    tail = "epoch 3 loss 0.12\n[saved] checkpoint-3 [/tmp]\n"  # brackets are not markup
    ack = handle_event(conn, agent, lease.run_id, RunEvent(
        agent_id=agent_id, sent_at=now, fencing_token=lease.fencing_token, state="succeeded",
        at=now, exit_code=0, log_tail=tail), cfg, now)
    assert ack.status == "recorded"

    runner = CliRunner()
    own = {"JINSUAN_URL": served, "COLUMNS": "200",
           "JINSUAN_API_KEY": create_key(conn, Role.DISPATCHER, tenant="t1")}
    shown = runner.invoke(job_app, ["show", job_id], env=own)
    assert shown.exit_code == 0, shown.output
    assert f"output of attempt 1 at taiyuan-1 ({lease.run_id})" in shown.output
    assert tail in shown.output
    bureau = {**own, "JINSUAN_API_KEY": create_key(conn, Role.BUREAU)}
    overseen = runner.invoke(job_app, ["show", job_id], env=bureau)
    assert overseen.exit_code == 0, overseen.output
    assert "(withheld)" in overseen.output and "epoch 3" not in overseen.output

    # A job for a model nobody has: the permanent obstacle beside why not placed yet.
    never = runner.invoke(job_app, ["submit", "--project", "p", "-c", "true", "--model", "H800"],
                          env=own)
    assert never.exit_code == 0, never.output
    assert "warning: model: no registered site has an accelerator of model H800" in never.stderr
    waiting = runner.invoke(job_app, ["show", never.stdout.strip()], env=own)
    assert "no registered site can ever take it" in waiting.output
    assert "no registered site has an accelerator of model H800" in waiting.output
    assert "why not placed yet" in waiting.output


def test_show_prints_the_platforms_words_as_they_are(served, conn, db):
    """What the platform says is shown as it says it, never read as markup: the executor
    mismatch names the config key to fix in brackets (markup dropped it), and a closing tag in
    such text ended the command."""
    now = datetime.now(UTC)
    site_id, agent_id = seed_site(conn, db.partitions, name="taiyuan-1", city="Taiyuan",
                                  now=now, pools=[PoolSpec("H100", 8, Decimal("10.00"))],
                                  executor="slurm")
    reinstalled = LeaseRequest(agent_id=agent_id, sent_at=now, executor="process", free_slots=1)
    with pytest.raises(Conflict):
        handle_lease(conn, SignedBy(agent_id, site_id), reinstalled, SchedulerConfig(), now)
    job_id = submit_job(conn, JobSpec(project="llm", payload={"command": ["true"]},
                                      constraints={"site": "taiyuan-1"}), "t1", now)
    env = {"JINSUAN_URL": served, "COLUMNS": "400",
           "JINSUAN_API_KEY": create_key(conn, Role.DISPATCHER, tenant="t1")}
    shown = CliRunner().invoke(job_app, ["show", job_id], env=env)
    assert shown.exit_code == 0, shown.output
    assert "executor_mismatch" in shown.output
    assert "[executor]" in shown.output  # a table cell may wrap the reason, never inside a word
