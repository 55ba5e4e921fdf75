"""The scheduler's figures on /metrics (open) and the queue by tenant on /metrics/sites (the
``metrics`` role), scraped through the app after driving the scheduler's own functions on a
fixed clock. The counters are the process's, so each test asserts what they moved by."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from collectors_kit import bearer, make_app
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from jinsuan.contract.leasewire import HeldRun, LeaseReply, LeaseRequest
from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.errors import Conflict
from scheduler.config import SchedulerConfig
from scheduler.cycle import commit_decisions, run_cycle
from scheduler.jobs import submit_job
from scheduler.leases import handle_lease
from scheduler.placement import place
from scheduler.seed import PoolSpec, seed_site
from scheduler.snapshot import load_snapshot
from scheduler.spec import JobSpec

CFG = SchedulerConfig(lease_ttl_s=1200)  # leases last 20 minutes unrenewed
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def client(settings, db) -> Iterator[TestClient]:
    app, _ = make_app(settings, db)
    with TestClient(app) as test_client:
        yield test_client


def _scrape(client: TestClient, path: str = "/metrics",
            headers: dict[str, str] | None = None) -> Scrape:
    reply = client.get(path, headers=headers)
    assert reply.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def _moved(before: Scrape, after: Scrape) -> dict[str, float]:
    """What each scheduler series moved by between two scrapes, keyed ``name{label=value}``."""
    return {
        name + "".join(f"{{{k}={v}}}" for k, v in labels): value - before.get((name, labels), 0)
        for (name, labels), value in after.items()
        if name.startswith("jinsuan_scheduler_") and not name.endswith("_created")
        and "_bucket" not in name and value != before.get((name, labels), 0)
    }


def _queue(client: TestClient, key: str) -> dict[str, float]:
    return {dict(labels)["tenant"]: value
            for (name, labels), value in _scrape(client, "/metrics/sites", bearer(key)).items()
            if name == "jinsuan_scheduler_queued_jobs"}


def _spec(accelerators: int) -> JobSpec:
    return JobSpec(project="p", accelerators_per_task=accelerators,
                   payload={"command": ["true"]})


def _site(conn, db) -> SignedBy:
    site_id, agent_id = seed_site(conn, db.partitions, name="ty-1", city="Taiyuan", now=T0,
                                  pools=[PoolSpec("H100", 8, Decimal("8.00"))])
    return SignedBy(agent_id, site_id)


def _ask(conn, agent: SignedBy, at: datetime, *, executor: str = "process",
         held: dict[str, int] | None = None) -> LeaseReply:
    request = LeaseRequest(agent_id=agent.agent_id, sent_at=at, executor=executor, free_slots=4,
                           held=[HeldRun(run_id=r, fencing_token=t)
                                 for r, t in (held or {}).items()])
    return handle_lease(conn, agent, request, CFG, at)


def test_placements_leases_refusals_and_failovers(client, conn, db):
    metrics_key = create_key(conn, Role.METRICS)
    agent = _site(conn, db)
    start = _scrape(client)
    submit_job(conn, _spec(4), "t1", T0)
    submit_job(conn, _spec(4), "t1", T0)
    assert _queue(client, metrics_key) == {"t1": 2}

    run_cycle(conn, CFG, T0)  # 4 + 4 of the site's 8 accelerators: both placed
    placed = _scrape(client)
    moved = _moved(start, placed)
    assert moved.pop("jinsuan_scheduler_cycle_duration_seconds_sum") > 0
    assert moved == {
        "jinsuan_scheduler_cycle_duration_seconds_count": 1,
        "jinsuan_scheduler_placements_total": 2,
    }
    assert _queue(client, metrics_key) == {}  # no tenant with a queued job, no series

    submit_job(conn, _spec(4), "t2", T0 + timedelta(minutes=1))
    run_cycle(conn, CFG, T0 + timedelta(minutes=1))  # the site is full: nothing placed
    with pytest.raises(Conflict):  # the agent runs slurm, the site is registered with process
        _ask(conn, agent, T0 + timedelta(minutes=1), executor="slurm")
    reply = _ask(conn, agent, T0 + timedelta(minutes=1))  # hands out the two placed runs
    assert len(reply.new) == 2
    leased = _scrape(client)
    moved = _moved(placed, leased)
    assert moved.pop("jinsuan_scheduler_cycle_duration_seconds_sum") > 0
    assert moved == {
        "jinsuan_scheduler_cycle_duration_seconds_count": 1,
        "jinsuan_scheduler_leases_total": 2,
        "jinsuan_scheduler_lease_requests_total{result=ok}": 1,
        "jinsuan_scheduler_lease_requests_total{result=executor_mismatch}": 1,
    }
    assert _queue(client, metrics_key) == {"t2": 1}

    # The agent renews one run at minute 11 and never the other: leased at minute 1, that one
    # lapses at 1 + 20 = 21; the renewed one at 11 + 20 = 31.
    kept, dropped = reply.new
    _ask(conn, agent, T0 + timedelta(minutes=11), held={kept.run_id: kept.fencing_token})
    # The cycle at minute 25 finds the lapsed lease: one failover, its job queued again. The
    # site sent no telemetry for 25 minutes, so nothing is placed there.
    run_cycle(conn, CFG, T0 + timedelta(minutes=25))
    assert _queue(client, metrics_key) == {"t1": 1, "t2": 1}
    # At minute 35 the agent's request names the run whose lease lapsed at 31, before any
    # cycle swept it: the request finds it lost, the second failover.
    late = _ask(conn, agent, T0 + timedelta(minutes=35), held={kept.run_id: kept.fencing_token})
    assert late.lost == [kept.run_id]
    assert conn.execute("SELECT state FROM runs WHERE id = %s",
                        (dropped.run_id,)).fetchone() == ("lost",)
    failed_over = _scrape(client)
    moved = _moved(leased, failed_over)
    assert moved.pop("jinsuan_scheduler_cycle_duration_seconds_sum") > 0
    assert moved == {
        "jinsuan_scheduler_cycle_duration_seconds_count": 1,
        "jinsuan_scheduler_failovers_total": 2,
        "jinsuan_scheduler_lease_requests_total{result=ok}": 2,
    }
    assert _queue(client, metrics_key) == {"t1": 2, "t2": 1}

    # The open /metrics names no tenant; the queue needs the metrics role.
    assert not [name for name, labels in failed_over if dict(labels).get("tenant")]
    assert client.get("/metrics/sites").status_code == 401


def test_placements_refused_at_commit(client, conn, db):
    """Two cycles decide on one snapshot; the second to commit finds both jobs taken."""
    _site(conn, db)
    for _ in range(2):
        submit_job(conn, _spec(4), "t1", T0)
    stale = load_snapshot(conn, CFG, T0)
    decisions = place(stale, CFG)
    assert len(decisions.placements) == 2
    before = _scrape(client)
    run_cycle(conn, CFG, T0)
    assert commit_decisions(conn, stale, decisions, CFG, T0) == []

    moved = _moved(before, _scrape(client))
    assert moved.pop("jinsuan_scheduler_cycle_duration_seconds_sum") > 0
    assert moved == {
        "jinsuan_scheduler_cycle_duration_seconds_count": 1,
        "jinsuan_scheduler_placements_total": 2,  # the cycle's commit
        "jinsuan_scheduler_placements_refused_at_commit_total": 2,  # the stale commit's
    }
