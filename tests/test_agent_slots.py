"""Placement sends a site no more runs than its agents take (their free slots), on a real
PostgreSQL and as a pure function.

An agent runs at most ``max_runs`` runs and says in each lease request how many more it takes.
A run placed beyond that would sit placed until its lease lapsed and be placed again. The store
tests play the lease protocol's handlers on the fixed clock of tests/test_site_health.py (times
are seconds after its ``T0``), except the lease desk's, which runs on the real clock as in
tests/test_scheduler_longpoll.py.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
from test_scheduler_placement import CFG, T0, job, pool, site, snap
from test_site_health import Agent, at, cycle, site_of, spec, why_not

from jinsuan.contract.leasewire import ExecutorKind, HeldRun, LeaseReply, LeaseRequest
from jinsuan.kernel.agentauth import SignedBy
from scheduler.cycle import run_cycle
from scheduler.jobs import submit_job
from scheduler.leasedesk import LeaseDesk, Woken
from scheduler.leases import handle_lease
from scheduler.placement import explain, place
from scheduler.seed import PoolSpec, seed_site
from scheduler.snapshot import InventoryCache


def ask(conn: psycopg.Connection, agent: Agent, t: float, free_slots: int,
        *, arrived: float | None = None) -> LeaseReply:
    """The agent's lease request, saying it takes ``free_slots`` more runs, answered at ``t``
    (having arrived at ``arrived``, when the platform got to it late); it holds what it is
    handed and renews what it holds."""
    request = LeaseRequest(
        agent_id=agent.signed.agent_id, sent_at=at(t), executor=agent.executor,
        free_slots=free_slots,
        held=[HeldRun(run_id=r, fencing_token=f) for r, f in agent.held.items()])
    reply = handle_lease(conn, agent.signed, request, CFG, at(t),
                         received_at=at(t if arrived is None else arrived))
    agent.held.update((lease.run_id, lease.fencing_token) for lease in reply.new)
    return reply


def recorded_slots(conn: psycopg.Connection, agent_id: str) -> int | None:
    return conn.execute("SELECT free_slots FROM agent_leases WHERE agent_id = %s",
                        (agent_id,)).fetchone()[0]


def no_slots(free: int, placed: int) -> tuple[str, str]:
    return "no_slots", (f"its agents take no more runs now ({free} free slots, {placed} runs"
                        " placed awaiting lease)")


# ---- the store ---------------------------------------------------------------------------------

def test_a_site_gets_no_more_runs_than_its_agent_takes_then_more_as_it_takes_more(db, conn):
    """ty has 8 free H100 but its agent takes 2 more runs: of 5 queued jobs a cycle places 2
    there, and the rest wait, saying why. Leasing both brings the agent's slots to 0; a later
    request taking 3 more lets the next cycle place 3. The cycles reuse one inventory, as the
    platform's do: the slots are read afresh each time all the same."""
    ty = Agent(conn, db, "ty", "8.00")  # seeded at T0: reporting, and asked (slots unknown)
    inventory = InventoryCache(max_age_s=3600)
    assert ask(conn, ty, 1, free_slots=2).new == []
    assert recorded_slots(conn, ty.signed.agent_id) == 2
    jobs = [submit_job(conn, spec(), "t1", at(1)) for _ in range(5)]
    assert run_cycle(conn, CFG, at(2), inventory).placed == 2
    assert Counter(site_of(conn, j) for j in jobs) == {("placed", ty.site_id): 2,
                                                      ("queued", None): 3}
    waiting = [j for j in jobs if site_of(conn, j)[0] == "queued"]
    assert why_not(conn, waiting[0], 2)["ty"] == no_slots(2, 2)
    assert run_cycle(conn, CFG, at(3), inventory).placed == 0  # placed, not leased: they count

    assert len(ask(conn, ty, 5, free_slots=2).new) == 2
    assert recorded_slots(conn, ty.signed.agent_id) == 0
    assert run_cycle(conn, CFG, at(6), inventory).placed == 0
    assert why_not(conn, waiting[0], 6)["ty"] == no_slots(0, 0)

    more = [submit_job(conn, spec(), "t1", at(9)) for _ in range(2)]  # 5 wait now
    reply = ask(conn, ty, 10, free_slots=3)
    assert (len(reply.renewed), reply.new) == (2, [])
    assert run_cycle(conn, CFG, at(11), inventory).placed == 3
    assert Counter(site_of(conn, j)[0] for j in waiting + more) == {"placed": 3, "queued": 2}


def test_the_runs_a_full_site_cannot_take_go_to_a_site_that_takes_them(db, conn):
    """ty is cheaper but its agent takes 2 more runs; dt's agent never said how many it takes
    (its row predates the slots), so dt is not capped: of 5 jobs ty gets 2, dt 3."""
    ty, dt = Agent(conn, db, "ty", "8.00"), Agent(conn, db, "dt", "12.00")
    ask(conn, ty, 1, free_slots=2)
    assert recorded_slots(conn, dt.signed.agent_id) is None
    jobs = [submit_job(conn, spec(), "t1", at(1)) for _ in range(5)]
    assert cycle(conn, 2, ty, dt).placed == 5
    assert Counter(site_of(conn, j)[1] for j in jobs) == {ty.site_id: 2, dt.site_id: 3}


def test_an_older_request_answered_after_a_newer_one_leaves_the_newer_ones_slots(db, conn):
    """ty's agent says at 5 s it takes 1 more run; a request it sent before, saying 4, arrived
    at 3 s but is answered only at 6 s. The slots stay the newer request's."""
    ty = Agent(conn, db, "ty", "8.00")
    ask(conn, ty, 5, free_slots=1)
    ask(conn, ty, 6, free_slots=4, arrived=3)
    assert conn.execute("SELECT last_lease_at, free_slots FROM agent_leases WHERE agent_id = %s",
                        (ty.signed.agent_id,)).fetchone() == (at(5), 1)
    jobs = [submit_job(conn, spec(), "t1", at(6)) for _ in range(3)]
    assert cycle(conn, 7, ty).placed == 1
    assert Counter(site_of(conn, j)[0] for j in jobs) == {"placed": 1, "queued": 2}


def test_woken_requests_answered_by_the_lease_desk_use_up_their_agents_slots(db, conn):
    """Two sites' agents asked, taking 3 and 2 more runs, found nothing and wait (long poll).
    A cycle places 3 and 2 of the 6 jobs pinned to each; the desk answers both woken requests
    in one transaction, leasing those runs, and each agent's slots come down to 0: the next
    cycle places nothing more at either site."""
    now = datetime.now(UTC)
    agents = []
    for name, slots in (("site-a", 3), ("site-b", 2)):
        site_id, agent_id = seed_site(conn, db.partitions, name=name, city="Taiyuan", now=now,
                                      pools=[PoolSpec("H100", 8, Decimal("9.00"))])
        agent = SignedBy(agent_id, site_id)
        request = LeaseRequest(agent_id=agent_id, sent_at=now, executor=ExecutorKind.PROCESS,
                               free_slots=slots, held=[], wait_s=5)
        assert handle_lease(conn, agent, request, CFG, now).new == []
        agents.append((agent, slots))
        for _ in range(6):
            submit_job(conn, spec(site=name), "t1", now)
    assert run_cycle(conn, CFG, now).placed == 5
    desk = LeaseDesk(db.pool, CFG)
    held = [db.pool.getconn() for _ in range(db.pool.max_size - 1)]  # `conn` holds the last

    async def woken_both() -> list[list]:
        first = asyncio.ensure_future(desk.lease(Woken(agents[0][0], ExecutorKind.PROCESS,
                                                       agents[0][1], now)))
        await asyncio.sleep(0)  # the task runs up to its wait: the request is on the queue
        while not desk._queue.empty():  # the desk took it and waits for a connection
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(desk.lease(Woken(agents[1][0], ExecutorKind.PROCESS,
                                                        agents[1][1], now)))
        while desk._queue.qsize() < 1:
            await asyncio.sleep(0.01)
        for connection in held:
            db.pool.putconn(connection)
        return await asyncio.gather(first, second)

    try:
        answers = asyncio.run(woken_both())
    finally:
        desk.stop()
    assert [len(leases) for leases in answers] == [3, 2]
    assert [recorded_slots(conn, agent.agent_id) for agent, _ in agents] == [0, 0]
    assert run_cycle(conn, CFG, now + timedelta(seconds=1)).placed == 0
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0] == 7


# ---- the pure function -------------------------------------------------------------------------

def test_each_site_takes_at_most_its_slots_and_the_rest_wait_saying_why():
    cheap, dear = site(1, pool(price="8.00"), slots=1), site(2, pool(price="12.00"), slots=2)
    jobs = [job() for _ in range(5)]
    decisions = place(snap(jobs, [cheap, dear]), CFG)
    assert Counter(p.site_id for p in decisions.placements) == {1: 1, 2: 2}
    assert (cheap.slots, cheap.awaiting_lease, dear.slots, dear.awaiting_lease) == (0, 1, 0, 2)
    placed = {p.job_id for p in decisions.placements}
    waiting = [j for j in jobs if j.id not in placed]
    verdicts = explain(waiting[0], snap(waiting, [cheap, dear]), CFG)
    assert [(v.constraint, v.reason) for v in verdicts] == [no_slots(1, 1), no_slots(2, 2)]


def test_a_gang_is_one_run_however_many_accelerators():
    """Two slots at a site of 16: a gang of 2 × 4 and one single job fit; the next does not."""
    s = site(1, pool(healthy=16), slots=2)
    gang = job(tasks=2, per_task=4, at=T0 - timedelta(minutes=2))
    first, second = job(at=T0 - timedelta(minutes=1)), job()
    decisions = place(snap([gang, first, second], [s]), CFG)
    assert [p.job_id for p in decisions.placements] == [gang.id, first.id]
    assert (s.pools["H100"].free, s.slots) == (7, 0)


def test_a_site_whose_slots_are_unknown_is_not_capped():
    jobs = [job() for _ in range(8)]
    s = site(1, pool(healthy=8))
    assert s.slots is None
    assert len(place(snap(jobs, [s]), CFG).placements) == 8
    assert s.slots is None


def test_a_site_with_capacity_but_no_slots_says_so_rather_than_fits():
    """Slots already taken by runs placed and not yet leased: the site is out, and why."""
    one = job()
    s = site(1, pool(healthy=8, reserved=2), slots=0, awaiting_lease=2)
    assert place(snap([one], [s]), CFG).placements == []
    assert [(v.constraint, v.reason) for v in explain(one, snap([one], [s]), CFG)] == [
        no_slots(2, 2)]
    busy = site(1, pool(healthy=8, reserved=8), slots=0)  # out of both: capacity is named
    assert explain(one, snap([one], [busy]), CFG)[0].constraint == "no_capacity"


def test_slots_never_exceeded_and_no_job_waits_while_a_site_could_take_it():
    """Random provinces: no site gets more runs than its slots, and a job left waiting has no
    site with both a slot and room for it (capacity and slots only shrink within a cycle)."""
    rng = random.Random(12)
    for _ in range(200):
        sites = []
        for sid in range(1, rng.randint(1, 6) + 1):
            healthy = rng.randint(1, 8)
            sites.append(site(sid, pool(healthy=healthy, reserved=rng.randint(0, healthy),
                                        price=f"{rng.randint(5, 15)}.00"),
                              slots=rng.choice([None, 0, 1, 2, 3, 5])))
        slots = {s.id: s.slots for s in sites}
        jobs = [job(tenant=rng.choice(("t1", "t2")), per_task=rng.randint(1, 3),
                    tasks=rng.choice((1, 1, 2))) for _ in range(rng.randint(1, 25))]
        decisions = place(snap(jobs, sites), CFG)
        runs = Counter(p.site_id for p in decisions.placements)
        for sid, cap in slots.items():
            assert cap is None or runs[sid] <= cap, (sid, cap, runs)
        placed = {p.job_id for p in decisions.placements}
        for waiting in (j for j in jobs if j.id not in placed):
            assert not any(s.takes_runs and s.pools["H100"].free >= waiting.need
                           for s in sites), (waiting, sites)
