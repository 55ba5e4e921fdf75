"""``jinsuan agent``: enrol, check and run a site agent. Needs only the agent install."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from jinsuan.cli.client import console

if TYPE_CHECKING:
    from agents.config import AgentConfig

agent_app = typer.Typer(help="The site agent: enrol it, check its sources, run it.",
                        no_args_is_help=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The agent's TOML file.",
                                            exists=False, dir_okay=False)]


def _load(path: Path):  # -> agents.config.AgentConfig
    from agents.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        console.print(Text.assemble(("config error", "red"), f"\n{exc}"))
        raise typer.Exit(code=2) from None


@agent_app.command("enrol")
def enrol(
    config: ConfigOption,
    token: Annotated[str, typer.Option(help="The one-time token from `jinsuan sites token`.")],
    platform: Annotated[str | None, typer.Option(
        help="The platform's URL; defaults to agent.platform_url in the config.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing enrolment and key.")] = False,
) -> None:
    """Generate this agent's Ed25519 key and register it with the platform."""
    from agents.identity import IdentityError
    from agents.identity import enrol as enrol_agent

    loaded = _load(config)
    try:
        identity = enrol_agent(loaded.agent.state_dir, platform or loaded.agent.platform_url,
                               token, force=force)
    except IdentityError as exc:
        console.print(Text.assemble(("error:", "red"), f" {exc}"))
        raise typer.Exit(code=1) from None
    e = identity.enrolment
    console.print(Text.assemble("enrolled as ", (e.agent_id, "bold"), f" for site"
                                f" {e.site_name!r} (id {e.site_id}) at {e.platform_url}"))


@agent_app.command("check")
def check(config: ConfigOption) -> None:
    """Read every configured source once and show what was read; sends nothing."""
    from agents.daemon import check_sources

    loaded = _load(config)
    results = check_sources(loaded)
    table = Table(title=f"sources in {config}", show_lines=True)
    for column in ("source", "reads from", "status", "time", "what it read", "problems"):
        table.add_column(column, overflow="fold")
    for r in results:
        status = (Text("disabled", "dim") if not r.enabled
                  else Text("ok", "green") if r.ok else Text("failed", "red"))
        read = []
        if r.accelerators:
            models = sorted({a.model for a in r.accelerators})
            read.append(f"{len(r.accelerators)} accelerators ({', '.join(models)})")
        if r.meters:
            read.append(", ".join(f"meter {m.id} ({m.role.value}, {m.measures})"
                                  for m in r.meters))
        if r.racks:
            read.append(f"{len(r.racks)} racks")
        read += [f"{p.device} {p.metric} = {p.value:g}" for p in r.points[:6]]
        if len(r.points) > 6:
            read.append(f"… {len(r.points) - 6} more values")
        table.add_row(Text.assemble(f"{r.probe}\n", (r.key, "dim")), r.source, status,
                      f"{r.duration_s * 1000:.0f} ms", "\n".join(read), "\n".join(r.errors))
    console.print(table)
    _print_spool(loaded)
    if any(r.enabled and not r.ok for r in results):
        raise typer.Exit(code=1)


def _print_spool(config: AgentConfig) -> None:
    """The spool's backlog and any renumbering after a seq conflict with the platform."""
    from agents.daemon import SPOOL_FILE
    from agents.spool import read_summary

    summary = read_summary(config.agent.state_dir / SPOOL_FILE)
    if summary is None:
        console.print("spool: none yet (the agent has not run)")
        return
    console.print(f"spool: {summary.pending} batch(es) pending ({summary.pending_bytes} bytes),"
                  f" {summary.rejected} rejected by the platform")
    for at, old, new, batches in summary.renumberings:
        when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
        console.print(Text.assemble(("seq conflict", "yellow"), f" at {when}: the platform"
                                    f" already held seq {old} with another body; {batches}"
                                    f" batch(es) renumbered from {new}"))


@agent_app.command("run")
def run(
    config: ConfigOption,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Sample, spool and upload until SIGTERM or Ctrl-C."""
    from agents.daemon import StartupError, run_agent
    from agents.identity import IdentityError

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_agent(_load(config))
    except (IdentityError, StartupError) as exc:
        console.print(Text.assemble(("cannot start:", "red"), f" {exc}"))
        raise typer.Exit(code=1) from None
