"""Every SQL panel and variable of every dashboard, timed at province scale, as Grafana runs them.

What it does: creates a fresh database, migrates it, and fills it **by SQL** (``generate_series``:
the simulated fleet would take hours to send a year) with a province: ``--sites`` sites of ten
enterprises in Shanxi's eleven cities, two sites per data centre, eight accelerators and two
meters a site; ``--days`` of hourly site rollups; per-device hourly rollups for ``--device-sites``
sites (the site-detail dashboard shows one site at a time, so the others only make the table
deeper); the daily rollups summed from those; one day of raw samples a minute apart for every
series and a report every 10 s per agent for that day; and ``--jobs-per-day`` jobs with their
runs, transitions and usage over the range.
Then the rollups run as the hourly rollup job runs them: the raw day per device
(``roll_hour_for_dashboards``) and the year's queue time (``roll_queue_hour``), each timed
per hour.

It then runs, as Grafana's read-only role (``deploy/postgres/grafana-readonly.sql``), every SQL
variable and every SQL panel of every dashboard over the last 90 and the last 365 days, at the
bucket width Grafana would choose for the panel (the range divided by the panel's width in
pixels, rounded as Grafana's ``roundInterval`` does), ``--repeat`` times each, and prints p50 and
p95 per panel with their ratio to the baseline: ``SELECT count(*) FROM rollup_site_hourly`` over
the same database in the same run. Last, it times the monthly report for the latest month.

    python bench/dashboards.py [--sites 100] [--days 365] [--device-sites 10] [--repeat 5]

PostgreSQL: $JINSUAN_BENCH_PG or 127.0.0.1:5432; the database is dropped afterwards
(``--keep`` keeps it and prints its URL).
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402  (imports follow the sys.path fix below)
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from collectors.queue_rollup import roll_queue_hours
from dashboards import grafana
from jinsuan.kernel.store.migrate import migrate
from jinsuan.kernel.store.partitions import Partitions

ADMIN = os.environ.get("JINSUAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
READONLY_SQL = _HERE.parent / "deploy" / "postgres" / "grafana-readonly.sql"
CITIES = ["太原", "大同", "阳泉", "长治", "晋城", "朔州", "晋中", "运城", "忻州", "临汾", "吕梁"]
ACCELERATOR_METRICS = {  # metric: (level, swing) of a value that drifts through the day
    "accelerator_power_watts": (450.0, 150.0),
    "accelerator_utilization_ratio": (0.6, 0.35),
    "accelerator_temperature_celsius": (60.0, 12.0),
    "accelerator_memory_used_bytes": (4.0e10, 2.0e10),
    "accelerator_memory_total_bytes": (8.0e10, 0.0),
    "accelerator_sm_clock_hertz": (1.6e9, 2.0e8),
    "accelerator_up": (1.0, 0.0),
    "accelerator_health_errors_total": (0.0, 0.0),
}
SCREEN_PX = 1900  # a dashboard 24 grid columns wide on a 1920-pixel screen


def grafana_interval_ms(range_ms: float) -> int:
    """Grafana's ``roundInterval``: the bucket it picks for ``range / max data points``."""
    steps = [(15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
             (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000),
             (45000, 30000), (90000, 60000), (210000, 120000), (450000, 300000),
             (750000, 600000), (1050000, 900000), (1500000, 1200000), (2700000, 1800000),
             (5400000, 3600000), (9000000, 7200000), (16200000, 10800000),
             (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
             (1814400000, 604800000), (3628800000, 2592000000)]
    for below, rounded in steps:
        if range_ms < below:
            return rounded
    return 31536000000


def interval_text(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise ValueError(f"no whole-second interval in {ms} ms")


def panel_interval(panel: dict[str, Any], span: timedelta) -> str:
    width_px = max(1, panel.get("gridPos", {}).get("w", 24) * SCREEN_PX // 24)
    return interval_text(max(1000, grafana_interval_ms(span.total_seconds() * 1000 / width_px)))


def fill(conn: psycopg.Connection, *, sites: int, days: int, device_sites: int,
         jobs_per_day: int, now: datetime) -> None:
    """The province, by SQL; the raw day ends at ``now``."""
    start = now - timedelta(days=days)
    raw_from = now - timedelta(days=1)
    conn.execute("INSERT INTO enterprises (name) SELECT '企业 ' || e FROM generate_series(1, 10) e")
    conn.execute(
        "INSERT INTO sites (enterprise_id, name, city, data_centre, executor)"
        " SELECT (SELECT id FROM enterprises ORDER BY id OFFSET (s - 1) %% 10 LIMIT 1),"
        "        'site-' || lpad(s::text, 3, '0'), (%s::text[])[1 + (s - 1) %% 11],"
        "        'dc-' || lpad(((s + 1) / 2)::text, 3, '0'), 'slurm'"
        " FROM generate_series(1, %s) s", (CITIES, sites))
    conn.execute(
        "INSERT INTO agents (id, site_id, public_key, hostname, last_seq, last_report_at)"
        " SELECT 'agent-' || id, id, 'pk', 'host-' || id, 8640, %s FROM sites", (now,))
    conn.execute(
        "INSERT INTO racks (site_id, id, first_seen, last_seen)"
        " SELECT s.id, 'rack-' || r, %s, %s FROM sites s, generate_series(1, 2) r", (start, now))
    conn.execute(
        "INSERT INTO accelerators (site_id, uuid, model, vendor, domestic, rack,"
        "  memory_total_bytes, fp16_tflops, first_seen, last_seen)"
        " SELECT s.id, 'GPU-' || s.id || '-' || a, CASE WHEN a <= 4 THEN 'H100' ELSE '910B' END,"
        "        CASE WHEN a <= 4 THEN 'nvidia' ELSE 'huawei' END, a > 4, 'rack-' || (1 + a %% 2),"
        "        80000000000, CASE WHEN a <= 4 THEN 989.4 ELSE 320 END, %s, %s"
        " FROM sites s, generate_series(1, 8) a", (start, now))
    conn.execute(
        "INSERT INTO meters (site_id, id, role, measures, first_seen, last_seen)"
        " SELECT s.id, m.id, m.role, m.measures, %s, %s FROM sites s,"
        " (VALUES ('facility-main', 'facility', 'building'), ('it-main', 'it', 'it')) m(id, role,"
        "  measures)", (start, now))
    conn.execute(
        "INSERT INTO series (site_id, metric, device)"
        " SELECT a.site_id, m, a.uuid FROM accelerators a, unnest(%s::text[]) m"
        " UNION ALL SELECT site_id, 'meter_power_watts', id FROM meters"
        " UNION ALL SELECT site_id, 'meter_energy_kwh_total', id FROM meters",
        (list(ACCELERATOR_METRICS),))
    conn.execute(
        "INSERT INTO rollup_site_hourly (site_id, hour, it_kwh, facility_kwh, pue, fp16_pflops,"
        "  accelerators, racks, utilization, coverage_it, coverage_facility,"
        "  coverage_accelerators)"
        " SELECT s.id, h, it, it * p, p, 5.2376, 8, 2, 0.6, 1, 1, 1"
        " FROM sites s, generate_series(%s::timestamptz, %s, '1 hour') h,"
        " LATERAL (SELECT 800 + 200 * sin(extract(epoch FROM h) / 7200 + s.id) AS it,"
        "                 1.25 + 0.05 * sin(s.id) AS p) f",
        (start, now - timedelta(hours=2)))
    levels = [(m, lvl, swing) for m, (lvl, swing) in ACCELERATOR_METRICS.items()]
    conn.execute("CREATE TEMP TABLE levels (metric text, level float8, swing float8)")
    with conn.cursor().copy("COPY levels FROM STDIN") as copy:
        for row in [*levels, ("meter_power_watts", 8.0e5, 1.0e5)]:
            copy.write_row(row)
    conn.execute(
        "INSERT INTO rollup_series_hourly (series_id, hour, n, total, low, high, last_ts, last)"
        " SELECT se.id, h, 60, 60 * v, v - l.swing / 10, v + l.swing / 10, h + interval '59 min',"
        "        v"
        " FROM series se JOIN levels l USING (metric),"
        " generate_series(%s::timestamptz, %s, '1 hour') h,"
        " LATERAL (SELECT l.level + l.swing * sin(extract(epoch FROM h) / 7200 + se.id) AS v) f"
        " WHERE se.site_id <= %s",
        (start, raw_from - timedelta(hours=1), device_sites))
    day = "date_bin('1 day', hour, timestamptz '2000-01-01 00:00+00')"
    conn.execute(
        "INSERT INTO rollup_series_daily (series_id, day, n, total, low, high, last_ts, last)"
        f" SELECT series_id, {day}, sum(n), sum(total), min(low), max(high), max(last_ts),"
        "        (array_agg(last ORDER BY last_ts DESC))[1]"
        " FROM rollup_series_hourly GROUP BY 1, 2")
    conn.execute(
        "INSERT INTO rollup_site_daily (site_id, day, hours, hours_present, it_kwh,"
        "  facility_kwh, hours_paired, it_kwh_paired, facility_kwh_paired, fp16_pflops,"
        "  accelerators, racks, coverage_it, coverage_facility, coverage_accelerators)"
        f" SELECT site_id, {day}, count(*),"
        "        bit_or(1 << extract(hour FROM hour AT TIME ZONE 'UTC')::integer), sum(it_kwh),"
        "        sum(facility_kwh), bit_or(1 << extract(hour FROM hour AT TIME ZONE 'UTC')::int),"
        "        sum(it_kwh), sum(facility_kwh), sum(fp16_pflops), sum(accelerators),"
        "        sum(racks), sum(coverage_it), sum(coverage_facility),"
        "        sum(coverage_accelerators)"
        " FROM rollup_site_hourly GROUP BY 1, 2")  # every filled hour has both energies
    Partitions(timescale=False).ensure(conn, [raw_from.date(), now.date()])
    conn.execute(
        "INSERT INTO samples (ts, series_id, value)"
        " SELECT t, se.id, CASE WHEN se.metric = 'meter_energy_kwh_total'"
        "   THEN extract(epoch FROM t - %s) / 3600 * 1000"
        "   ELSE l.level + l.swing * sin(extract(epoch FROM t) / 7200 + se.id) END"
        " FROM series se LEFT JOIN levels l USING (metric),"
        " generate_series(%s::timestamptz, %s, '1 minute') t",
        (start, raw_from, now))
    conn.execute(
        "INSERT INTO reports (agent_id, seq, created_at, received_at, samples, body_sha256,"
        "  signature)"
        " SELECT a.id, n, t, t + interval '1.5 s', 66, '\\x00', '' FROM agents a,"
        " LATERAL (SELECT row_number() OVER () AS n, t FROM"
        "  generate_series(%s::timestamptz, %s, '10 s') t) r",
        (raw_from, now))
    fill_jobs(conn, start=start, now=now, per_day=jobs_per_day, days=days)
    conn.execute("ANALYZE")


def fill_jobs(conn: psycopg.Connection, *, start: datetime, now: datetime, per_day: int,
              days: int) -> None:
    """Jobs a few minutes apart, each queued, placed, leased, running and ended."""
    total = per_day * days
    step = (now - start) / max(1, total)
    conn.execute(
        "CREATE TEMP TABLE bench_jobs AS SELECT n, %s::timestamptz + n * %s::interval AS sub,"
        " 1 + n %% 100 AS site, 'tenant-' || (n %% 7) AS tenant,"
        " (n %% 600) * interval '1 s' AS wait, (600 + n %% 7200) * interval '1 s' AS took,"
        " CASE WHEN n %% 20 = 0 THEN 'failed' ELSE 'succeeded' END AS outcome"
        " FROM generate_series(0, %s - 1) n", (start, step, total))
    conn.execute(
        "INSERT INTO jobs (id, tenant, project, spec, constraints, tasks, accelerators_per_task,"
        "  state, tries, current_run_id, submitted_at, state_changed_at, ended_at, end_reason)"
        " SELECT 'job-' || n, tenant, 'p', '{}', '{}', 1, 2,"
        "   CASE WHEN sub + wait + took < %s THEN outcome ELSE 'running' END, 1, 'run-' || n,"
        "   sub, sub + wait + took, CASE WHEN sub + wait + took < %s THEN sub + wait + took END,"
        "   CASE WHEN sub + wait + took < %s THEN outcome END"
        " FROM bench_jobs", (now, now, now))
    conn.execute(
        "INSERT INTO runs (id, job_id, attempt, site_id, model, accelerators, fencing_token,"
        "  state, agent_id, lease_expires_at, placed_at, leased_at, started_at, ended_at,"
        "  exit_code, end_reason, tenant, submitted_at)"
        " SELECT 'run-' || n, 'job-' || n, 1, site, 'H100', 2, n,"
        "   CASE WHEN sub + wait + took < %s THEN outcome ELSE 'running' END, 'agent-' || site,"
        "   sub + wait + took, sub + wait, sub + wait + interval '2 s',"
        "   sub + wait + interval '5 s',"
        "   CASE WHEN sub + wait + took < %s THEN sub + wait + took END, 0, NULL, tenant, sub"
        " FROM bench_jobs", (now, now))
    conn.execute(
        "INSERT INTO job_transitions (job_id, run_id, from_state, to_state, at)"
        " SELECT 'job-' || n, t.run, t.frm, t.too, t.at FROM bench_jobs,"
        " LATERAL (VALUES (NULL, NULL, 'queued', sub),"
        "   ('run-' || n, 'queued', 'placed', sub + wait),"
        "   ('run-' || n, 'placed', 'leased', sub + wait + interval '2 s'),"
        "   ('run-' || n, 'leased', 'running', sub + wait + interval '5 s'),"
        "   ('run-' || n, 'running', outcome, sub + wait + took)) t(run, frm, too, at)"
        " WHERE t.at < %s ORDER BY t.at", (now,))
    conn.execute(
        "INSERT INTO usage_records (run_id, job_id, tenant, project, site_id, model, accelerators,"
        "  started_at, ended_at, accelerator_hours, fp16_pflop_hours, energy_method,"
        "  yuan_per_accelerator_hour, cost_yuan)"
        " SELECT 'run-' || n, 'job-' || n, tenant, 'p', site, 'H100', 2, sub + wait,"
        "   sub + wait + took, 2 * extract(epoch FROM took) / 3600, 0, 'none', 8,"
        "   round(16 * extract(epoch FROM took) / 3600, 2)"
        " FROM bench_jobs WHERE sub + wait + took < %s", (now,))


def timed(conn: psycopg.Connection, sql: str, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        grafana.rows(conn, sql)
        out.append(time.perf_counter() - began)
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_panels(conn: psycopg.Connection, *, now: datetime, repeat: int,
               baseline_s: float) -> float:
    """Print each query's p50/p95 and ratio to the baseline; return the slowest p95."""
    slowest = 0.0
    for span_days in (90, 365):
        start = now - timedelta(days=span_days)
        print(f"\n— the last {span_days} days —")
        print(f"{'dashboard / panel':72} {'bucket':>6} {'p50 ms':>8} {'p95 ms':>8} {'× base':>7}")
        for uid, dashboard in sorted(grafana.load_all().items()):
            values = grafana.resolve_variables(conn, dashboard, start=start, end=now)
            for variable in grafana.variables(dashboard):
                if grafana.datasource_type(variable.get("datasource")) != grafana.POSTGRES:
                    continue
                sql = grafana.expand(variable["query"], values, start=start, end=now)
                got = timed(conn, sql, repeat)
                slowest = max(slowest, report(f"{uid} ${variable['name']}", "", got, baseline_s))
            for panel in grafana.all_panels(dashboard):
                for target in panel.get("targets", []):
                    if grafana.target_source(panel, target) != grafana.POSTGRES:
                        continue
                    bucket = panel_interval(panel, now - start)
                    sql = grafana.expand(target["rawSql"], values, start=start, end=now,
                                         interval=bucket)
                    got = timed(conn, sql, repeat)
                    slowest = max(slowest, report(f"{uid} {panel['title']}", bucket, got,
                                                  baseline_s))
    return slowest


def report(name: str, bucket: str, got: list[float], baseline_s: float) -> float:
    high = p95(got)
    print(f"{name[:72]:72} {bucket:>6} {statistics.median(got) * 1000:8.1f} {high * 1000:8.1f}"
          f" {high / baseline_s:7.1f}")
    return high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--device-sites", type=int, default=10)
    parser.add_argument("--jobs-per-day", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database; print its name")
    parser.add_argument("--reuse", metavar="NAME", help="time a database kept by --keep")
    args = parser.parse_args()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    if args.reuse:
        url = psycopg.conninfo.make_conninfo(ADMIN, dbname=args.reuse)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT max(ts) FROM samples").fetchone()
            assert row is not None and row[0] is not None, "no samples: not a bench database"
            now = row[0]
        measure(url, now, args.repeat)
        return
    name = f"jinsuan_bench_{uuid.uuid4().hex[:8]}"
    url = psycopg.conninfo.make_conninfo(ADMIN, dbname=name)
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, want_timescale=False)
            conn.execute(READONLY_SQL.read_text())
        with psycopg.connect(url) as conn:
            began = time.perf_counter()
            fill(conn, sites=args.sites, days=args.days, device_sites=args.device_sites,
                 jobs_per_day=args.jobs_per_day, now=now)
            conn.commit()
            print(f"filled {args.sites} sites × {args.days} days in"
                  f" {time.perf_counter() - began:.0f} s (by SQL)")
        catch_up(url, now)
        measure(url, now, args.repeat)
    finally:
        if args.keep:
            print(f"kept: --reuse {name}")
        else:
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_grafana(conn: psycopg.Connection) -> None:
    """Become Grafana's role with the settings its login would bring (ALTER ROLE ... SET)."""
    conn.execute("SET ROLE jinsuan_grafana")
    for (setting,) in conn.execute(
            "SELECT unnest(setconfig) FROM pg_db_role_setting"
            " WHERE setrole = 'jinsuan_grafana'::regrole AND setdatabase IN (0, (SELECT oid"
            " FROM pg_database WHERE datname = current_database()))").fetchall():
        name, value = setting.split("=", 1)
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def measure(url: str, now: datetime, repeat: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # as autovacuum leaves a table that has stopped growing
        as_grafana(conn)
        base = timed(conn, "SELECT count(*) FROM rollup_site_hourly", repeat * 2)
        baseline_s = p95(base)
        print(f"baseline: count(*) of rollup_site_hourly, p95 {baseline_s * 1000:.1f} ms")
        slowest = run_panels(conn, now=now, repeat=repeat, baseline_s=baseline_s)
        print(f"\nslowest panel p95: {slowest * 1000:.0f} ms"
              f" ({slowest / baseline_s:.1f}× the baseline)")
    time_report(url, now)


def catch_up(url: str, now: datetime) -> float:
    """The rollups the dashboards read: the raw day per device, and every hour's queue time."""
    with psycopg.connect(url, autocommit=True) as conn:
        hours = conn.execute(
            "SELECT s.id, h FROM sites s, generate_series(%s::timestamptz, %s, '1 hour') h",
            (now - timedelta(days=1), now - timedelta(hours=1))).fetchall()
        began = time.perf_counter()
        for site_id, hour in hours:
            conn.execute("SELECT roll_hour_for_dashboards(%s, %s)", (site_id, hour))
        per_hour = (time.perf_counter() - began) / len(hours)
        began = time.perf_counter()
        written = roll_queue_hours(conn, now)
        per_queue_hour = (time.perf_counter() - began) / max(1, written)
    print(f"roll_hour_for_dashboards: {per_hour * 1000:.1f} ms per site-hour"
          f" ({len(hours)} site-hours)")
    print(f"roll_queue_hour: {per_queue_hour * 1000:.1f} ms per hour ({written} hours)")
    return per_hour


def time_report(url: str, now: datetime) -> None:
    from dashboards.report import parse_month, write_report

    month = (now - timedelta(days=31)).strftime("%Y-%m")
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url) as conn:
        began = time.perf_counter()
        write_report(conn, parse_month(month), Path(tmp) / "report.pdf")
        print(f"jinsuan report --month {month}: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
