"""The Scheduling dashboard against real scheduler activity, every panel's figures by hand.

``tests/scheduling_story.py`` plays five hours of scheduling through the scheduler's own code
(a lost lease and its requeue, a failure retried at another site, successes with usage records
and an adjustment, cancels) and says, in tables, what happened when. Each panel's SQL is
expanded as Grafana would, run as Grafana's read-only role, and its figures checked against
arithmetic done here from those tables, not from the store; then again for one site and for one
tenant, which must narrow them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collectors.queue_rollup import roll_queue_hours
from dashboards import grafana
from jinsuan.kernel.store import Database
from tests.scheduling_story import (
    ADJUSTMENT,
    CITY,
    DT1_COUNTERS,
    ENDS,
    FIRST_PLACED,
    METERED,
    PLACEMENTS,
    PRICES,
    QUEUED_AT_END,
    REQUEUES,
    RUNNING_AT_END,
    SITES,
    TENANT,
    WAITS,
    Story,
    play,
)

ROOT = Path(__file__).resolve().parent.parent
READONLY_SQL = ROOT / "deploy" / "postgres" / "grafana-readonly.sql"
UID = "jinsuan-scheduling"
T0 = datetime(2025, 6, 10, tzinfo=UTC)
START, END = T0, T0 + timedelta(hours=5)
MICRO, FEN = Decimal("0.000001"), Decimal("0.01")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def hour(n: int) -> float:
    """The epoch seconds Grafana's ``$__timeGroupAlias`` gives the n-th hour bucket."""
    return at(60 * n).timestamp()


@pytest.fixture
def story(conn: psycopg.Connection, db: Database) -> Story:
    return play(Story(conn, db, T0))


@pytest.fixture
def as_grafana(conn: psycopg.Connection, story: Story) -> Iterator[psycopg.Connection]:
    """The story's store as Grafana's read-only role sees it; rolled back after."""
    with conn.transaction(force_rollback=True):
        conn.execute(READONLY_SQL.read_text(encoding="utf-8"))
        conn.execute("SET LOCAL ROLE jinsuan_grafana")
        yield conn


def rows(conn: psycopg.Connection, title: str, *, start: datetime = START,
         end: datetime = END, interval: str = "1h",
         chosen: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    return grafana.panel_rows(conn, UID, title, start=start, end=end, interval=interval,
                              chosen=chosen)


def only_site(story: Story, name: str) -> dict[str, list[str]]:
    return {"site": [str(story.site_id(name))]}


def chosen_sites(sites: tuple[str, ...] | None) -> set[str]:
    return set(SITES if sites is None else sites)


def counts(sites: set[str], site: str | None) -> bool:
    """A job tied to no site counts only when every site is selected."""
    return site in sites if site is not None else sites == set(SITES)


# --- the dashboard as Grafana lists it ---------------------------------------------------------

def test_variables_chain_city_enterprise_data_centre_site_and_list_tenants(
        as_grafana: psycopg.Connection, story: Story) -> None:
    dashboard = grafana.load(UID)
    assert [v["name"] for v in grafana.variables(dashboard)] == [
        "city", "enterprise", "data_centre", "site", "tenant"]
    every = grafana.resolve_variables(as_grafana, dashboard, start=START, end=END)
    assert every["city"] == ["Datong", "Taiyuan"]
    assert sorted(every["data_centre"]) == ["Taiyuan DC 1", "dt-1"]
    assert sorted(every["site"]) == sorted(str(story.site_id(n)) for n in SITES)
    assert every["tenant"] == ["t1", "t2"]
    taiyuan = grafana.resolve_variables(as_grafana, dashboard, {"city": ["Taiyuan"]},
                                        start=START, end=END)
    jinneng = as_grafana.execute("SELECT id FROM enterprises WHERE name = 'Jinneng'").fetchone()
    assert taiyuan["enterprise"] == [str(jinneng[0])]
    assert taiyuan["data_centre"] == ["Taiyuan DC 1"]
    assert sorted(taiyuan["site"]) == sorted(str(story.site_id(n)) for n in ("ty-1", "ty-2"))


# --- queue and wait ----------------------------------------------------------------------------

def expected_depth(sites: tuple[str, ...] | None = None,
                   tenants: tuple[str, ...] = ("t1", "t2")) -> dict[tuple[float, str], float]:
    """Mean jobs waiting per hour bucket and tenant: waiting minutes in the hour / 60."""
    picked = chosen_sites(sites)
    waits = [w for w in WAITS if w[1] in tenants and counts(picked, w[4])]
    shown = {tenant for _, tenant, *_ in waits}
    out = {}
    for n in range(5):
        lo, hi = 60 * n, 60 * (n + 1)
        for tenant in shown:
            minutes = sum(max(0, min(until, hi) - max(since, lo))
                          for _, t, since, until, _ in waits if t == tenant)
            out[(hour(n), tenant)] = minutes / 60
    return out


def as_series(got: list[dict[str, Any]], column: str = "value") -> dict[tuple[float, str], Any]:
    return {(float(r["time"]), r["metric"]): r[column] for r in got}


def test_queue_depth_is_the_mean_number_waiting_per_bucket(
        as_grafana: psycopg.Connection, story: Story) -> None:
    got = as_series(rows(as_grafana, "Queue depth by tenant"))
    want = expected_depth()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert float(got[key]) == pytest.approx(value), key
    # Hour 1: C waited all of it after its failure, A 50 minutes after its lost lease.
    assert float(got[(hour(1), "t1")]) == pytest.approx(110 / 60)
    # One day bucket, of which the range holds five hours: every waiting minute over 300.
    daily = as_series(rows(as_grafana, "Queue depth by tenant", interval="1d"))
    assert {k: float(v) for k, v in daily.items()} == {
        (hour(0), tenant): pytest.approx(sum(until - since for _, t, since, until, _ in WAITS
                                             if t == tenant) / 300)
        for tenant in ("t1", "t2")}


def test_queue_depth_follows_the_site_and_tenant_selection(
        as_grafana: psycopg.Connection, story: Story) -> None:
    for site in SITES:
        got = as_series(rows(as_grafana, "Queue depth by tenant", chosen=only_site(story, site)))
        want = expected_depth((site,))
        assert {k: pytest.approx(v) for k, v in want.items()} == \
            {k: float(v) for k, v in got.items()}, site
    # ty-1: A waiting after its lost lease there (hour 1: 50 min, hour 2: 10), F pinned to it.
    got = as_series(rows(as_grafana, "Queue depth by tenant", chosen=only_site(story, "ty-1")))
    assert float(got[(hour(1), "t1")]) == pytest.approx(50 / 60)
    assert float(got[(hour(4), "t2")]) == pytest.approx(1.0)
    t2 = as_series(rows(as_grafana, "Queue depth by tenant", chosen={"tenant": ["t2"]}))
    assert {k: pytest.approx(v) for k, v in expected_depth(tenants=("t2",)).items()} == \
        {k: float(v) for k, v in t2.items()}
    assert {metric for _, metric in t2} == {"t2"}


def test_queue_depth_on_a_range_that_starts_mid_bucket(
        as_grafana: psycopg.Connection, story: Story) -> None:
    """From 01:30 to 02:30 in hour buckets: the halves of hours 1 and 2 inside the range."""
    got = as_series(rows(as_grafana, "Queue depth by tenant", start=at(90), end=at(150)))
    # t1: A and C wait 01:30-02:10 (30 min of 30 in hour 1; 10 of 30 in hour 2).
    # t2: E waits 01:50-02:10 (10 of 30; 10 of 30). D had gone before the range.
    assert {k: float(v) for k, v in got.items()} == {
        (hour(1), "t1"): pytest.approx(2.0), (hour(2), "t1"): pytest.approx(2 * 10 / 30),
        (hour(1), "t2"): pytest.approx(10 / 30), (hour(2), "t2"): pytest.approx(10 / 30)}


def test_queue_depth_over_days_reads_the_hourly_series_and_agrees(
        conn: psycopg.Connection, story: Story) -> None:
    """Over more than a day, the closed whole hours come from ``rollup_queue_hourly`` and the
    part-hours at the ends and the hours not yet rolled up from the transitions: the figures
    are those worked out by hand from the story, and the same with no hour rolled up."""
    start, end = at(30) - timedelta(days=1), at(150)  # both ends mid-hour
    with conn.transaction(force_rollback=True):
        conn.execute(READONLY_SQL.read_text(encoding="utf-8"))
        assert roll_queue_hours(conn, at(120)) >= 2  # hours 0 and 1 of the story, closed
        conn.execute("SET LOCAL ROLE jinsuan_grafana")
        got = as_series(rows(conn, "Queue depth by tenant", start=start, end=end))
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT count(*) FROM rollup_queue_hourly").fetchone()[0] > 0
        conn.execute("DELETE FROM rollup_queue_hourly; DELETE FROM rollup_queue_state")
        conn.execute("SET LOCAL ROLE jinsuan_grafana")
        from_transitions = as_series(rows(conn, "Queue depth by tenant", start=start, end=end))
    lo_min = (start - T0).total_seconds() / 60
    want = {}
    bucket = 60 * (lo_min // 60)  # the hour bucket the range starts in, in minutes from T0
    while bucket * 60 < (end - T0).total_seconds():
        lo, hi = max(bucket, lo_min), min(bucket + 60, 150)
        for tenant in ("t1", "t2"):
            minutes = sum(max(0, min(until, hi) - max(since, lo))
                          for _, t, since, until, _ in WAITS if t == tenant)
            want[((T0 + timedelta(minutes=bucket)).timestamp(), tenant)] = minutes / (hi - lo)
        bucket += 60
    assert {k: float(v) for k, v in got.items()} == {k: pytest.approx(v) for k, v in want.items()}
    assert from_transitions.keys() == got.keys()
    assert all(float(from_transitions[k]) == pytest.approx(float(v)) for k, v in got.items())


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def expected_waits(sites: tuple[str, ...] | None = None
                   ) -> dict[tuple[float, str], tuple[float, float]]:
    picked = chosen_sites(sites)
    grouped: dict[tuple[float, str], list[float]] = {}
    for job, (submitted, placed, site) in FIRST_PLACED.items():
        if site in picked:
            key = (hour(int(placed // 60)), TENANT[job])
            grouped.setdefault(key, []).append((placed - submitted) * 60.0)
    return {k: (percentile(v, 0.5), percentile(v, 0.95)) for k, v in grouped.items()}


def test_wait_time_is_submission_to_first_placement(
        as_grafana: psycopg.Connection, story: Story) -> None:
    for sites in (None, ("dt-1",), ("ty-1", "ty-2")):
        chosen = None if sites is None else {"site": [str(story.site_id(n)) for n in sites]}
        got = rows(as_grafana, "Wait time by tenant", chosen=chosen)
        want = expected_waits(sites)
        assert {(float(r["time"]), r["metric"]): (pytest.approx(r["p50"]),
                                                  pytest.approx(r["p95"])) for r in got} \
            == want, sites
    # Hour 3 for t1: G waited 15 min, H 5: the median is 10 min, p95 near G's.
    assert expected_waits()[(hour(3), "t1")] == (600.0, 300 + 0.95 * 600)
    (overall,) = rows(as_grafana, "Wait to first placement over the range")
    everything = [(placed - submitted) * 60.0 for submitted, placed, _ in FIRST_PLACED.values()]
    assert (overall["p50"], overall["p95"]) == (
        pytest.approx(percentile(everything, 0.5)), pytest.approx(percentile(everything, 0.95)))
    (t2,) = rows(as_grafana, "Wait to first placement over the range", chosen={"tenant": ["t2"]})
    t2_waits = [(p - s) * 60.0 for j, (s, p, _) in FIRST_PLACED.items() if TENANT[j] == "t2"]
    assert t2["p50"] == pytest.approx(percentile(t2_waits, 0.5)) == 900.0
    (datong,) = rows(as_grafana, "Wait to first placement over the range",
                     chosen=only_site(story, "dt-1"))
    assert datong["p50"] == pytest.approx(450.0)  # B 10 min, C 5, G 15, H 5


def test_jobs_queued_and_running_at_the_end_of_the_range(
        as_grafana: psycopg.Connection, story: Story) -> None:
    assert rows(as_grafana, "Jobs queued and running") == [
        {"queued": len(QUEUED_AT_END), "running": len(RUNNING_AT_END)}]  # F and G
    assert rows(as_grafana, "Jobs queued and running", chosen=only_site(story, "dt-1")) == [
        {"queued": 0, "running": 1}]
    assert rows(as_grafana, "Jobs queued and running", chosen={"tenant": ["t2"]}) == [
        {"queued": 1, "running": 0}]
    # At 01:15: C and A waiting (t1), D waiting (t2, no site); B running at dt-1.
    assert rows(as_grafana, "Jobs queued and running", end=at(75)) == [
        {"queued": 3, "running": 1}]
    assert rows(as_grafana, "Jobs queued and running", end=at(75),
                chosen=only_site(story, "dt-1")) == [{"queued": 1, "running": 1}]


# --- placements, outcomes, requeues -------------------------------------------------------------

def expected_placements(key: dict[str, str], sites: tuple[str, ...] | None = None,
                        tenants: tuple[str, ...] = ("t1", "t2")) -> dict[tuple[float, str], int]:
    out: dict[tuple[float, str], int] = {}
    for run, (minute, site) in PLACEMENTS.items():
        if site in chosen_sites(sites) and TENANT[run[0]] in tenants:
            bucket = (hour(int(minute // 60)), key[site])
            out[bucket] = out.get(bucket, 0) + 1
    return out


def test_placements_by_site_and_by_city(as_grafana: psycopg.Connection, story: Story) -> None:
    by_name = {s: s for s in SITES}
    assert as_series(rows(as_grafana, "Placements by site")) == expected_placements(by_name)
    assert as_series(rows(as_grafana, "Placements by city")) == expected_placements(CITY)
    assert as_series(rows(as_grafana, "Placements by city"))[(hour(0), "Datong")] == 2
    ty2 = as_series(rows(as_grafana, "Placements by site", chosen=only_site(story, "ty-2")))
    assert ty2 == {(hour(2), "ty-2"): 3} == expected_placements(by_name, ("ty-2",))
    t2 = as_series(rows(as_grafana, "Placements by city", chosen={"tenant": ["t2"]}))
    assert t2 == expected_placements(CITY, tenants=("t2",))
    assert t2 == {(hour(0), "Datong"): 1, (hour(2), "Taiyuan"): 1}


def expected_outcomes(sites: tuple[str, ...] | None = None) -> dict[float, dict[str, int]]:
    out: dict[float, dict[str, int]] = {}
    for minute, state, site in ENDS.values():
        if counts(chosen_sites(sites), site):
            bucket = out.setdefault(hour(int(minute // 60)),
                                    {"succeeded": 0, "failed": 0, "cancelled": 0})
            bucket[state] += 1
    return out


def test_job_outcomes_by_end_state(as_grafana: psycopg.Connection, story: Story) -> None:
    def outcomes(**kw: Any) -> dict[float, dict[str, int]]:
        return {float(r.pop("time")): r for r in rows(as_grafana, "Job outcomes", **kw)}

    assert outcomes() == expected_outcomes() == {
        hour(1): {"succeeded": 1, "failed": 0, "cancelled": 1},
        hour(2): {"succeeded": 2, "failed": 0, "cancelled": 1},
        hour(3): {"succeeded": 0, "failed": 1, "cancelled": 0}}
    # D, cancelled in the queue and never at a site, drops out once a site is picked.
    for site in SITES:
        assert outcomes(chosen=only_site(story, site)) == expected_outcomes((site,)), site
    assert outcomes(chosen={"tenant": ["t2"]}) == {
        hour(1): {"succeeded": 1, "failed": 0, "cancelled": 1},
        hour(2): {"succeeded": 0, "failed": 0, "cancelled": 1}}


def test_requeues_count_lost_leases_and_retried_failures_per_site(
        as_grafana: psycopg.Connection, story: Story) -> None:
    got = {(float(r["time"]), r["metric"]): (r["lease expired"], r["run failed"])
           for r in rows(as_grafana, "Requeues after site failures")}
    want = {(hour(int(minute // 60)), site): (int(how == "lost"), int(how == "failed"))
            for minute, site, how in REQUEUES.values()}
    # C1 failed at dt-1 at 00:55 (C had a retry); A1's lease at ty-1 was found expired at 01:10.
    # H1 failed at 03:50 with no retry left: the job ended, nothing was re-queued.
    assert got == want == {(hour(0), "dt-1"): (0, 1), (hour(1), "ty-1"): (1, 0)}
    ty1 = rows(as_grafana, "Requeues after site failures", chosen=only_site(story, "ty-1"))
    assert [(r["metric"], r["lease expired"]) for r in ty1] == [("ty-1", 1)]
    assert rows(as_grafana, "Requeues after site failures", chosen={"tenant": ["t2"]}) == []


# --- usage ---------------------------------------------------------------------------------------

def metered(accelerators: int, start: int, end: int, price: Decimal) -> dict[str, Decimal]:
    """One usage record by hand: accelerator-hours to 10⁻⁶, PFlop-hours at 312 TFLOPS, yuan."""
    hours = (Decimal(accelerators * (end - start)) / 60).quantize(MICRO, ROUND_HALF_UP)
    return {"accelerator-hours": hours,
            "FP16 PFlop-hours": (hours * Decimal(312) / 1000).quantize(MICRO, ROUND_HALF_UP),
            "cost yuan": (hours * price).quantize(FEN, ROUND_HALF_UP)}


def expected_usage(sites: tuple[str, ...] | None = None, until: int = 300
                   ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for run, (tenant, job, site, accelerators, start, end) in METERED.items():
        if site not in chosen_sites(sites) or end > until:
            continue
        row = out.setdefault(tenant, {"jobs": set(), "accelerator-hours": Decimal(0),
                                      "FP16 PFlop-hours": Decimal(0), "energy kWh": None,
                                      "cost yuan": Decimal(0)})
        row["jobs"].add(job)
        for name, value in metered(accelerators, start, end, PRICES[site]).items():
            row[name] += value
        if run == "B1":
            # dt-1's counters rose between its two readings, both within B1's span, on each of
            # the pool's 8 devices; B1's 2 accelerators take 2/8 of it. C1 and H1 saw no rise.
            (_, first), (_, last) = DT1_COUNTERS
            pool_kwh = Decimal(8) * (Decimal(last) - Decimal(first)) / 3_600_000
            row["energy kWh"] = pool_kwh * accelerators / 8 + ADJUSTMENT["energy kWh"]
            row["cost yuan"] += ADJUSTMENT["cost yuan"]
    return {t: {**r, "jobs": len(r["jobs"])} for t, r in out.items()}


def usage(conn: psycopg.Connection, **kw: Any) -> dict[str, dict[str, Any]]:
    return {r.pop("tenant"): r for r in rows(conn, "Usage by tenant", **kw)}


def test_usage_by_tenant_sums_records_and_adjustments_in_decimal(
        as_grafana: psycopg.Connection, story: Story) -> None:
    got = usage(as_grafana)
    assert got == expected_usage()
    assert all(isinstance(v, Decimal) for r in got.values() for k, v in r.items()
               if k != "jobs" and v is not None)
    assert got["t2"]["cost yuan"] == Decimal("28.93")  # 2.3 h × 12.00 − 1.00 + 0.23 h × 10.00
    assert got["t1"]["cost yuan"] == Decimal("43.27")  # 16.00 + 2.00 + 9.67 + 2.80 + 12.80
    assert got["t2"]["energy kWh"] == Decimal("0.9")
    assert got["t1"]["energy kWh"] is None  # no counters at ty-*; none in C1's or H1's span
    assert usage(as_grafana, chosen=only_site(story, "ty-2")) == expected_usage(("ty-2",))
    assert set(usage(as_grafana, chosen={"tenant": ["t2"]})) == {"t2"}
    # Until 02:00 only A1 (lost), B1 (with its adjustment) and C1 had ended.
    assert usage(as_grafana, end=at(120)) == expected_usage(until=120)


@pytest.mark.parametrize("days", [3, 40])
def test_outcomes_and_placements_over_long_ranges_read_the_rollups_with_the_same_figures(
        as_grafana: psycopg.Connection, story: Story, days: int) -> None:
    """Over 3 days (whole hours) and 40 days (whole days) the outcome and placement panels read
    the rollups the triggers keep; with 1-day buckets their sums are those of the story's jobs
    and runs: 3 succeeded, 1 failed, 2 cancelled (D, in the queue, counted with every site
    chosen) and 8 placements (A twice, C twice, B, E, G, H)."""
    start, end = T0 - timedelta(days=days // 2), T0 + timedelta(days=days - days // 2)
    tenants, sites = ["t1", "t2"], [story.site_id(s) for s in SITES]
    outcomes = dict(as_grafana.execute(
        "SELECT state, sum(jobs) FROM outcome_points(%s, %s, 86400, %s, %s) GROUP BY 1",
        (start, end, tenants, [*sites, 0])).fetchall())
    assert outcomes == {"succeeded": 3, "failed": 1, "cancelled": 2}
    at_sites = dict(as_grafana.execute(
        "SELECT state, sum(jobs) FROM outcome_points(%s, %s, 86400, %s, %s) GROUP BY 1",
        (start, end, tenants, sites)).fetchall())
    assert at_sites == {"succeeded": 3, "failed": 1, "cancelled": 1}  # D never reached one
    placed = as_grafana.execute(
        "SELECT sum(placements) FROM placement_points(%s, %s, 86400, %s, %s)",
        (start, end, tenants, sites)).fetchone()[0]
    assert placed == len(PLACEMENTS) == 8
