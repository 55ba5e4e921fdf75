"""``jinsuan demo``: the whole platform on one machine, with five simulated Shanxi sites.

Everything here is the real thing except the sites' hardware: the platform's HTTP API and
background jobs on the embedded (or ``DATABASE_URL``) PostgreSQL, and one real agent per site
(config file, Ed25519 enrolment with a one-time token, spool, uploader) whose only probe is the
simulated site. The agents' config files are written to the data directory, where an operator
can read them as examples. With ``--history-days``, each site's simulated past is first sent
through the intake (``jinsuan.demo.history``) and rolled up, so the dashboards and the monthly
report have days to show.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jinsuan.contract.money import to_fen
from jinsuan.contract.policytime import SHANGHAI
from jinsuan.demo import vouchers as voucher_story
from jinsuan.demo.dispatcher import MIX, SimulatedDispatcher
from jinsuan.kernel.auth import Role, authenticate, create_key
from jinsuan.kernel.errors import NotFound
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.sites import create_enrolment_token, create_site, site_by_name
from jinsuan.kernel.store import Database

console = Console()


@dataclass(frozen=True, slots=True)
class DemoSite:
    name: str
    city: str
    enterprise: str
    fleet: dict[str, int]
    pue_design: float
    climate_offset_c: float
    edge: bool = False


SITES: tuple[DemoSite, ...] = (
    DemoSite("taiyuan-aicc", "太原", "晋能智算 Jinneng Compute",
             {"NVIDIA H800": 128, "Ascend910B3": 128}, 1.22, 0.0),
    DemoSite("datong-cloud", "大同", "云冈数据 Yungang Data",
             {"NVIDIA H20": 96, "NVIDIA L20": 64, "NVIDIA A800-SXM4-80GB": 32}, 1.15, -3.0),
    DemoSite("yangquan-dc", "阳泉", "阳泉云算 Yangquan Cloud",
             {"NVIDIA A800-SXM4-80GB": 64, "NVIDIA L40S": 64}, 1.30, -1.0),
    DemoSite("lvliang-dc", "吕梁", "晋能智算 Jinneng Compute",
             {"NVIDIA GeForce RTX 4090": 48, "NVIDIA L20": 16}, 1.45, 1.0),
    DemoSite("changzhi-edge", "长治", "上党边缘 Shangdang Edge",
             {"NVIDIA L20": 16, "NVIDIA GeForce RTX 4090": 8}, 1.50, 1.5, edge=True),
)


#: Yuan per accelerator-hour; each site charges its own multiple of these.
LIST_PRICES: dict[str, Decimal] = {
    "NVIDIA H800": Decimal("28.00"), "NVIDIA H20": Decimal("15.00"),
    "NVIDIA A800-SXM4-80GB": Decimal("18.00"), "NVIDIA L20": Decimal("6.50"),
    "NVIDIA L40S": Decimal("9.00"), "NVIDIA GeForce RTX 4090": Decimal("4.80"),
    "Ascend910B3": Decimal("16.00"),
}


def _register_for_jobs(client: httpx.Client, admin_key: str, site_id: int, site: DemoSite,
                       seed: int) -> None:
    """Tell the scheduler the site runs jobs with the process executor, at its prices."""
    factor = Decimal("0.90") + Decimal(seed) / Decimal(20)
    prices = {m: str(to_fen(LIST_PRICES[m] * factor)) for m in site.fleet}
    client.put(f"/v1/sites/{site_id}/scheduling", json={"executor": "process", "prices": prices},
               headers={"Authorization": f"Bearer {admin_key}"}).raise_for_status()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


#: History is coarser than live sampling: a week of a demo site is then a minute's work.
HISTORY_STEP = timedelta(minutes=15)


def _simulator_config(site: DemoSite, seed: int) -> dict[str, object]:
    """The simulated probe's settings: the same in the agent's TOML and in its history."""
    return {"seed": seed, "fleet": site.fleet, "pue_design": site.pue_design,
            "climate_offset_c": site.climate_offset_c, "edge": site.edge,
            "terminals_base": 150_000 if site.edge else 0}


def _send_history(db: Database, settings: Settings, client: httpx.Client,
                  sites: list[tuple[DemoSite, int, int]], days: float) -> None:
    """Each site's simulated past ``days``, through the intake, then the hourly rollups."""
    from agents.probes.simulated import SimulatedSite, SimulatedSiteConfig
    from collectors.rollup import run_rollups
    from jinsuan.demo.history import send_history

    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    console.print(f"sending {days:g} days of simulated history for {len(sites)} sites "
                  f"({HISTORY_STEP.total_seconds() / 60:g}-minute readings) …")
    began = time.monotonic()
    sent = 0
    with db.pool.connection() as conn:
        for site, seed, site_id in sites:
            simulator = SimulatedSite(SimulatedSiteConfig(**_simulator_config(site, seed)),
                                      name=site.name)
            sent += send_history(conn, client, site_id, simulator, start=start, end=end,
                                 step=HISTORY_STEP)
    rolled = run_rollups(db, settings)
    rollups = (f"{rolled.hours} site-hours rolled up" if rolled.ran
               else "the platform's rollup job is rolling it up")
    console.print(f"… {sent} reports stored, {rollups}, in {time.monotonic() - began:.0f} s"
                  " (history already stored is not sent again)")


def _agent_toml(site: DemoSite, seed: int, platform_url: str, state_dir: Path,
                interval: float) -> str:
    probe = _simulator_config(site, seed)
    fleet = ", ".join(f'"{model}" = {count}' for model, count in site.fleet.items())
    return "\n".join([
        f"# The agent of the simulated site {site.name} ({site.city}), written by jinsuan demo.",
        "[site]",
        f'name = "{site.name}"',
        "",
        "[agent]",
        f'platform_url = "{platform_url}"',
        f'state_dir = "{state_dir}"',
        f"interval_s = {interval}",
        'metrics_listen = ""',
        "",
        "[[probes.simulated]]",
        f"seed = {probe['seed']}",
        f"fleet = {{ {fleet} }}",
        f"pue_design = {probe['pue_design']}",
        f"climate_offset_c = {probe['climate_offset_c']}",
        f"edge = {'true' if probe['edge'] else 'false'}",
        f"terminals_base = {probe['terminals_base']}",
        "",
        "[executor]  # run the jobs the platform places here as local processes",
        'kind = "process"',
        "max_runs = 32",
        "heartbeat_s = 2",
        "",
    ])


def _demo_key(conn: psycopg.Connection, demo_dir: Path, name: str, role: Role,
              tenant: str | None = None) -> str:
    """A key the demo needs, kept (0600) in the data directory so each run can reuse it."""
    path = demo_dir / "keys" / name
    if path.exists():
        key = path.read_text().strip()
        if authenticate(conn, key) is not None:
            return key
    key = create_key(conn, role, tenant=tenant, label=f"jinsuan demo: {name}")
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(key + "\n")
    return key


def _voucher_story(conn: psycopg.Connection, demo_dir: Path, bureau_key: str,
                   dispatcher_keys: dict[str, str]) -> tuple[int | None, str]:
    """The llm-lab's voucher: recommended with the demo's bureau key, approved with a second
    one (maker-checker), issued today."""
    checker_key = _demo_key(conn, demo_dir, "bureau-checker", Role.BUREAU)
    maker, checker, dispatcher = (authenticate(conn, k) for k in (
        bureau_key, checker_key, dispatcher_keys[voucher_story.TENANT]))
    assert maker and checker and dispatcher
    return voucher_story.ensure_voucher(conn, maker, checker, dispatcher,
                                        datetime.now(SHANGHAI).date())


def _ensure_site(conn: psycopg.Connection, site: DemoSite) -> int:
    try:
        return site_by_name(conn, site.name).id
    except NotFound:
        return create_site(conn, enterprise=site.enterprise, name=site.name, city=site.city).id


def _ensure_enrolled(conn: psycopg.Connection, site_id: int, state_dir: Path,
                     platform_url: str) -> None:
    """Enrol the site's agent unless this database already knows the agent in ``state_dir``."""
    from agents.identity import IdentityError, enrol, load_identity

    try:
        known = load_identity(state_dir).agent_id
    except IdentityError:
        known = None
    if known is not None:
        row = conn.execute("SELECT 1 FROM agents WHERE id = %s AND revoked_at IS NULL",
                           (known,)).fetchone()
        if row is not None:
            return
    token = create_enrolment_token(conn, site_id, created_by=None)
    enrol(state_dir, platform_url, token, force=known is not None)


def _job_counts(conn: psycopg.Connection) -> tuple[dict[str, int], dict[int, int]]:
    """Jobs by state, and runs holding accelerators by site."""
    by_state = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
    running = dict(conn.execute(
        "SELECT site_id, count(*) FROM runs WHERE state IN ('placed', 'leased', 'running')"
        " GROUP BY site_id").fetchall())
    return by_state, running


def _table(platform: Platform, started: float, interval: float) -> Table:
    from collectors.state import site_states

    with platform.db.pool.connection() as conn:
        states = site_states(conn)
        jobs, running = _job_counts(conn)
    job_line = " · ".join(f"{state} {jobs.get(state, 0)}" for state in
                          ("queued", "running", "succeeded", "failed", "cancelled"))
    table = Table(title=f"jinsuan 晋算 — {len(states)} sites, agents every {interval:g} s, "
                        f"up {int(time.monotonic() - started)} s",
                  caption=f"jobs: {job_line}", title_justify="left", caption_justify="left")
    table.add_column("site", no_wrap=True)
    for column in ("accel.", "FP16 PFlops", "racks", "IT kW", "facility kW", "PUE 1 h",
                   "covered", "jobs here", "last report"):
        table.add_column(column, justify="right", no_wrap=True)
    total_acc = total_pf = total_it = total_fac = 0.0
    now = datetime.now(UTC)
    for s in states:
        total_acc += s.accelerators_connected
        total_pf += s.fp16_pflops_connected
        total_it += s.it_kw or 0
        total_fac += s.facility_kw or 0
        coverage = min(s.coverage_it, s.coverage_facility)
        age = "never" if s.last_report_at is None else (
            f"{(now - s.last_report_at).total_seconds():.0f} s ago")
        estimated = f"\n[dim]{s.fp16_estimated} estimated[/dim]" if s.fp16_estimated else ""
        table.add_row(
            f"{s.site}\n[dim]{s.city} · {s.enterprise}[/dim]",
            f"{s.accelerators_connected}/{s.accelerators_inventory}",
            f"{s.fp16_pflops_connected:.2f}{estimated}", str(s.racks),
            "—" if s.it_kw is None else f"{s.it_kw:,.1f}",
            "—" if s.facility_kw is None else f"{s.facility_kw:,.1f}",
            "—" if s.pue is None else f"{s.pue:.3f}",
            f"{coverage:.0%}" if coverage >= 0.95 else f"[yellow]{coverage:.0%}[/yellow]",
            str(running.get(s.site_id, 0)), age,
        )
    table.add_section()
    table.add_row("all sites", f"{total_acc:.0f}", f"{total_pf:.2f}", "",
                  f"{total_it:,.1f}", f"{total_fac:,.1f}", "", "",
                  str(sum(running.values())), "")
    return table


def run_demo(*, port: int, interval: float, refresh: float, jobs_every: float,
             stop: threading.Event | None = None, history_days: float = 0) -> None:
    """Run the demo until ``stop`` is set or a KeyboardInterrupt arrives, start-up included,
    then stop what it started in reverse order: dispatcher, agents, platform, database.

    A KeyboardInterrupt is Ctrl-C, and under ``jinsuan.serve.stopped_by_signals`` (as ``jinsuan
    demo`` runs it) also SIGTERM and SIGHUP.
    """
    settings = Settings()
    host = settings.host
    if not _port_free(host, port):
        chosen = _free_port(host)
        console.print(f"port {port} is taken; using {chosen}")
        port = chosen
    where = ("DATABASE_URL" if settings.database_url
             else f"the embedded PostgreSQL in {settings.data_dir}")
    console.print(f"starting the platform on {where} …")
    with ExitStack() as stack:
        try:
            platform = _start(stack, settings, host, port, interval=interval,
                              jobs_every=jobs_every, history_days=history_days)
            _show(platform, interval=interval, refresh=refresh, stop=stop or threading.Event())
        except KeyboardInterrupt:
            pass  # a stop asked for: the stack stops everything, in order, as it closes
        console.print("\nstopping: agents, then the platform, then the database … "
                      "(job processes already started keep running; the next demo's "
                      "agents re-attach to them and report how they ended)")


def _start(stack: ExitStack, settings: Settings, host: str, port: int, *, interval: float,
           jobs_every: float, history_days: float) -> Platform:
    """Start the platform, its sites' agents and the dispatcher, each stopped by ``stack``."""
    from agents.config import load_config
    from agents.daemon import running_agent
    from jinsuan.serve import make_server, serving, signals_held

    demo_dir = settings.data_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    with signals_held():  # the embedded database starts whole, and is stopped with the stack
        db = Database.open(settings)
        stack.callback(db.close)
    platform = Platform(settings, db)
    stack.enter_context(serving(make_server(platform, host, port)))
    base = f"http://{host}:{port}"

    client = stack.enter_context(httpx.Client(base_url=base, timeout=30))
    with db.pool.connection() as conn:
        bureau_key = _demo_key(conn, demo_dir, "bureau", Role.BUREAU)
        admin_key = _demo_key(conn, demo_dir, "admin", Role.ADMIN)
        dispatcher_keys = {kind.tenant: _demo_key(conn, demo_dir, f"dispatcher-{kind.tenant}",
                                                  Role.DISPATCHER, tenant=kind.tenant)
                           for kind in MIX}
        configs = []
        ensured = []
        for seed, site in enumerate(SITES, start=1):
            site_id = _ensure_site(conn, site)
            ensured.append((site, seed, site_id))
            _register_for_jobs(client, admin_key, site_id, site, seed)
            state_dir = demo_dir / "agents" / site.name
            config_path = demo_dir / "agents" / f"{site.name}.toml"
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(_agent_toml(site, seed, base, state_dir, interval))
            _ensure_enrolled(conn, site_id, state_dir, base)
            configs.append(load_config(config_path))
        voucher, voucher_line = _voucher_story(conn, demo_dir, bureau_key, dispatcher_keys)
    if history_days > 0:
        _send_history(db, settings, client, ensured, history_days)
    for config in configs:
        stack.enter_context(running_agent(config))
    dispatcher = SimulatedDispatcher(
        base, dispatcher_keys, every_s=jobs_every,
        vouchers={voucher_story.TENANT: voucher} if voucher else None)
    dispatcher.start()
    stack.callback(dispatcher.stop)

    console.print(Text.assemble(
        ("API         ", "bold"), base, "\n",
        ("API docs    ", "bold"), f"{base}/docs", "\n",
        ("jobs        ", "bold"), f"a simulated dispatcher submits one every {jobs_every:g} s; "
        f"try jinsuan job list --url {base} --key $(cat {demo_dir}/keys/dispatcher-llm-lab)\n",
        ("voucher     ", "bold"), f"{voucher_line}; {voucher_story.TENANT}'s jobs draw on it"
        f" as they end: jinsuan voucher show {voucher} --url {base} --key $(cat"
        f" {demo_dir}/keys/dispatcher-llm-lab)\n" if voucher else voucher_line + "\n",
        ("metrics     ", "bold"), f"{base}/metrics", "\n",
        ("bureau key  ", "bold"), bureau_key, "\n",
        ("data        ", "bold"), str(settings.data_dir), "  (kept for the next run)\n",
        ("try         ", "bold"),
        f"curl -H 'Authorization: Bearer {bureau_key}' {base}/v1/sites\n",
        "Ctrl-C stops everything.",
    ))
    return platform


def _show(platform: Platform, *, interval: float, refresh: float,
          stop: threading.Event) -> None:
    """The sites' table, refreshed every ``refresh`` seconds until ``stop`` is set (or a stop
    signal comes: ``jinsuan.serve.check_stop``)."""
    from jinsuan.serve import check_stop

    started = time.monotonic()
    with Live(_table(platform, started, interval), console=console, refresh_per_second=1,
              transient=False) as live:
        while not stop.wait(refresh):
            check_stop()
            live.update(Group(_table(platform, started, interval)))
