"""The placement cycle against a real PostgreSQL: commits never overcommit a site, even when two
cycles decide on the same snapshot and commit at the same time — from two connection pools and
from two OS processes — and a lost lease sends the job back to the queue, counting a try."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from jinsuan.kernel.store import Database
from scheduler.config import SchedulerConfig
from scheduler.cycle import commit_decisions, expire_leases, run_cycle
from scheduler.jobs import submit_job
from scheduler.placement import place
from scheduler.seed import PoolSpec, report, seed_site
from scheduler.snapshot import load_snapshot
from scheduler.spec import JobSpec
from scheduler.states import JobState

ROOT = Path(__file__).resolve().parent.parent
CFG = SchedulerConfig()


def _spec(tasks=1, per_task=1, **constraints) -> JobSpec:
    return JobSpec(project="p", tasks=tasks, accelerators_per_task=per_task,
                   constraints=constraints, payload={"command": ["true"]})


def _sites(conn, db, now, count=4, size=8, executor="process"):
    return [seed_site(conn, db.partitions, name=f"site{i}", city="Taiyuan", now=now,
                      pools=[PoolSpec("H100", size, Decimal("10.00"))], executor=executor)[0]
            for i in range(count)]


def _assert_no_overcommit(conn) -> int:
    rows = conn.execute(
        "SELECT r.site_id, r.model, sum(r.accelerators),"
        " (SELECT count(*) FROM accelerators a WHERE a.site_id = r.site_id"
        "  AND a.model = r.model)"
        " FROM runs r WHERE r.state IN ('placed', 'leased', 'running')"
        " GROUP BY r.site_id, r.model").fetchall()
    for site_id, model, held, size in rows:
        assert held <= size, f"site {site_id} {model}: {held} held of {size}"
    twice = conn.execute("SELECT job_id FROM runs WHERE state IN ('placed', 'leased', 'running')"
                         " GROUP BY job_id HAVING count(*) > 1").fetchall()
    assert twice == []
    return sum(row[2] for row in rows)


def test_a_cycle_places_and_records_the_transition(db, conn):
    now = datetime.now(UTC)
    _sites(conn, db, now, count=1, executor="slurm")  # a gang needs an executor that runs one
    job_id = submit_job(conn, _spec(tasks=2, per_task=2), "t1", now)
    result = run_cycle(conn, CFG, now)
    assert result.placed == 1
    state, tries, run = conn.execute("SELECT state, tries, current_run_id FROM jobs"
                                     " WHERE id = %s", (job_id,)).fetchone()
    assert (state, tries) == ("placed", 1)
    assert conn.execute("SELECT accelerators, attempt FROM runs WHERE id = %s",
                        (run,)).fetchone() == (4, 1)
    moves = conn.execute("SELECT from_state, to_state FROM job_transitions WHERE job_id = %s"
                         " ORDER BY id", (job_id,)).fetchall()
    assert moves == [(None, "queued"), ("queued", "placed")]


def test_two_cycles_deciding_on_one_snapshot_never_overcommit(db, settings, conn):
    """Both cycles see all 32 accelerators free and decide to fill them, with different jobs;
    their commits run at the same time from two pools. Only 32 accelerators get placed."""
    now = datetime.now(UTC)
    _sites(conn, db, now)
    for i in range(64):
        submit_job(conn, _spec(per_task=1 + i % 2), f"t{i % 3}", now)
    other = Database.open(settings)
    try:
        with other.pool.connection() as conn2:
            snap1, snap2 = load_snapshot(conn, CFG, now), load_snapshot(conn2, CFG, now)
            # Give each cycle a disjoint half of the queue so the job-row check cannot save us:
            # only the capacity re-check under the site locks can.
            snap1.jobs = snap1.jobs[::2]
            snap2.jobs = snap2.jobs[1::2]
            d1, d2 = place(snap1, CFG), place(snap2, CFG)
            assert sum(p.accelerators for p in d1.placements) == 32
            assert sum(p.accelerators for p in d2.placements) == 32
            barrier = threading.Barrier(2)
            kept: dict[int, list] = {}

            def commit(i, c, snap, decisions):
                barrier.wait(timeout=10)
                kept[i] = commit_decisions(c, snap, decisions, CFG, now)

            threads = [threading.Thread(target=commit, args=(1, conn, snap1, d1)),
                       threading.Thread(target=commit, args=(2, conn2, snap2, d2))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
    finally:
        other.close()
    assert set(kept) == {1, 2}
    placed = _assert_no_overcommit(conn)
    assert placed == sum(p.accelerators for p in kept[1] + kept[2]) <= 32
    assert placed > 0


_CYCLE_PROCESS = """
import json, sys, time
from datetime import datetime
from pathlib import Path
import psycopg
from scheduler.config import SchedulerConfig
from scheduler.cycle import commit_decisions
from scheduler.placement import place
from scheduler.snapshot import load_snapshot
url, now, ready, go = sys.argv[1], datetime.fromisoformat(sys.argv[2]), Path(sys.argv[3]), \\
    Path(sys.argv[4])
cfg = SchedulerConfig()
with psycopg.connect(url, autocommit=True) as conn:
    snap = load_snapshot(conn, cfg, now)
    decisions = place(snap, cfg)
    ready.touch()
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    kept = commit_decisions(conn, snap, decisions, cfg, now)
print(json.dumps({"decided": sum(p.accelerators for p in decisions.placements),
                  "kept": sum(p.accelerators for p in kept)}))
"""


def test_two_platform_processes_never_overcommit(db, conn, database_url, tmp_path):
    now = datetime.now(UTC)
    _sites(conn, db, now)
    for i in range(64):
        submit_job(conn, _spec(per_task=1 + i % 4), f"t{i % 5}", now)
    go = tmp_path / "go"
    procs, readies = [], []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        readies.append(ready)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _CYCLE_PROCESS, database_url, now.isoformat(), str(ready),
             str(go)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline, "the cycle processes did not get ready"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert all(r["decided"] == 32 for r in results)  # each alone would fill every site
    placed = _assert_no_overcommit(conn)
    assert placed == sum(r["kept"] for r in results) == 32


def test_an_expired_lease_requeues_the_job_counting_a_try(db, conn):
    now = datetime.now(UTC)
    first, second = _sites(conn, db, now, count=2)
    conn.execute("UPDATE sites SET executor = NULL WHERE id = %s", (second,))
    job_id = submit_job(conn, _spec(per_task=4), "t1", now)
    assert run_cycle(conn, CFG, now).placed == 1
    assert conn.execute("SELECT site_id FROM runs").fetchone()[0] == first
    # Nobody leases it; the first site falls silent, the second gets an executor.
    conn.execute("UPDATE sites SET executor = 'process' WHERE id = %s", (second,))
    later = now + timedelta(seconds=CFG.lease_ttl_s + 1)
    report(conn, db.partitions, second, later)
    result = run_cycle(conn, CFG, later)
    assert (result.expired, result.placed) == (1, 1)
    runs = conn.execute("SELECT site_id, state, attempt FROM runs WHERE job_id = %s"
                        " ORDER BY attempt", (job_id,)).fetchall()
    assert runs == [(first, "lost", 1), (second, "placed", 2)]
    state, tries = conn.execute("SELECT state, tries FROM jobs WHERE id = %s",
                                (job_id,)).fetchone()
    assert (JobState(state), tries) == (JobState.PLACED, 2)
    assert expire_leases(conn, later, CFG) == 0  # nothing expires twice


def test_lost_leases_stop_after_the_allowance(db, conn):
    now = datetime.now(UTC)
    site_id = _sites(conn, db, now, count=1)[0]
    cfg = SchedulerConfig(lost_lease_allowance=1)
    job_id = submit_job(conn, _spec(), "t1", now)  # retries = 0: 1 + 0 + 1 tries allowed
    for step in range(3):
        at = now + timedelta(seconds=step * (cfg.lease_ttl_s + 1))
        report(conn, db.partitions, site_id, at)
        run_cycle(conn, cfg, at)
    state, tries, reason = conn.execute("SELECT state, tries, end_reason FROM jobs"
                                        " WHERE id = %s", (job_id,)).fetchone()
    assert (state, tries) == ("failed", 2)
    assert "no tries left" in reason


def test_a_job_placed_by_one_cycle_is_not_placed_again(db, conn):
    """Replaying a committed decision (another process's stale snapshot) places nothing."""
    now = datetime.now(UTC)
    _sites(conn, db, now, count=2)
    submit_job(conn, _spec(), "t1", now)
    snap = load_snapshot(conn, CFG, now)
    decisions = place(snap, CFG)
    assert len(commit_decisions(conn, snap, decisions, CFG, now)) == 1
    assert load_snapshot(conn, CFG, now).jobs == []
    assert commit_decisions(conn, snap, decisions, CFG, now) == []
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
