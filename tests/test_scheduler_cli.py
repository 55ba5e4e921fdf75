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
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.platform import Platform
from scheduler.seed import PoolSpec, seed_site


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
    job_id = submitted.output.strip()
    assert job_id.startswith("job_")
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
