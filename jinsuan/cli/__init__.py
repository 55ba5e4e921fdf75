"""The ``jinsuan`` command line: platform, keys, sites, agents, jobs, the demo and the report.

Sub-commands import their dependencies lazily, so ``jinsuan agent ...`` works on an agent-only
install that lacks the server extra.
"""

from __future__ import annotations

import typer

from jinsuan.cli.admin import agents_app, keys_app, sites_app
from jinsuan.cli.agent import agent_app
from jinsuan.cli.evidence import evidence_app
from jinsuan.cli.federation import federation_app
from jinsuan.cli.job import job_app
from jinsuan.cli.ledger import ledger_app
from jinsuan.cli.report import report
from jinsuan.cli.rewards import rewards_app
from jinsuan.cli.server import demo, migrate, serve
from jinsuan.cli.voucher import voucher_app

app = typer.Typer(
    name="jinsuan",
    help="晋算 jinsuan: Shanxi's integrated compute scheduling and monitoring platform.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command()(serve)
app.command()(demo)
app.command()(migrate)
app.command()(report)
app.add_typer(keys_app, name="keys")
app.add_typer(sites_app, name="sites")
app.add_typer(agents_app, name="agents")
app.add_typer(agent_app, name="agent")
app.add_typer(evidence_app, name="evidence")
app.add_typer(job_app, name="job")
app.add_typer(ledger_app, name="ledger")
app.add_typer(rewards_app, name="rewards")
app.add_typer(voucher_app, name="voucher")
app.add_typer(federation_app, name="federation")


def main() -> None:
    app()
