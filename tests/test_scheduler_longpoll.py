"""Long-polled lease requests, grouped submits and the API-key cache, against a platform served
by uvicorn on loopback and a real PostgreSQL.

A held lease request can only come back with a run if a placement woke it: it looked for work
once, found none, and then waits for its site's wake-up or for ``wait_s`` to pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import psycopg
import pytest
from servers import serving

from jinsuan.app import create_app
from jinsuan.contract.leasewire import (
    AGENT_HEADER,
    LEASES_PATH,
    MAX_LEASE_WAIT_S,
    SIGNATURE_HEADER,
    ExecutorKind,
    LeaseReply,
    LeaseRequest,
)
from jinsuan.contract.signing import new_private_key, public_key_b64, sign
from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.auth import KeyCache, Principal, Role, create_key, revoke_key
from jinsuan.kernel.platform import Platform
from scheduler.cycle import run_cycle
from scheduler.leasedesk import Woken
from scheduler.seed import PoolSpec, seed_site
from scheduler.service import CYCLE_LOCK, service_for
from scheduler.spec import JobSpec
from scheduler.submits import Receipt

JOB = {"project": "llm", "tasks": 1, "accelerators_per_task": 1,
       "payload": {"command": ["python", "train.py"]}}


@pytest.fixture
def platform(settings, db) -> Platform:
    return Platform(settings=settings, db=db)


@pytest.fixture
def served(platform) -> Iterator[str]:
    with serving(create_app(platform)) as url:
        yield url


@pytest.fixture
def site(conn, db):
    key = new_private_key()
    site_id, agent_id = seed_site(conn, db.partitions, name="taiyuan-1", city="Taiyuan",
                                  now=datetime.now(UTC), public_key=public_key_b64(key),
                                  pools=[PoolSpec("H100", 8, Decimal("9.00"))])
    return site_id, agent_id, key


def _lease(url: str, site, wait_s: float) -> httpx.Response:
    _, agent_id, key = site
    body = LeaseRequest.model_construct(  # unchecked, so a test can send a wait beyond the cap
        agent_id=agent_id, sent_at=datetime.now(UTC), executor=ExecutorKind.PROCESS, held=[],
        free_slots=4, wait_s=wait_s).model_dump_json().encode()
    return httpx.post(url + LEASES_PATH, content=body, timeout=MAX_LEASE_WAIT_S + 30,
                      headers={AGENT_HEADER: agent_id, SIGNATURE_HEADER: sign(key, body),
                               "Content-Type": "application/json"})


def _wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_held_lease_request_is_answered_with_the_run_a_later_cycle_places(
        served, platform, site, conn):
    service = service_for(platform)
    submitted = httpx.post(served + "/v1/jobs", json=JOB, headers={
        "Authorization": f"Bearer {create_key(conn, Role.DISPATCHER, tenant='t1')}"})
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_lease, served, site, MAX_LEASE_WAIT_S)
        # The request has looked for work, found none and waits on its site.
        _wait_until(lambda: service.wakeups._waiters.get(site[0]), "the request to be held")
        assert not held.done()
        with platform.db.pool.connection() as other:  # a cycle, as another process would run it
            assert run_cycle(other, service.cfg).placed == 1
        reply = held.result(timeout=MAX_LEASE_WAIT_S + 30)

    assert reply.status_code == 200, reply.text
    assert [lease.job_id for lease in LeaseReply.model_validate_json(reply.content).new] == [
        job_id]
    state = conn.execute("SELECT state FROM jobs WHERE id = %s", (job_id,)).fetchone()[0]
    assert state == "leased"


def test_a_held_lease_request_ends_empty_when_nothing_is_placed(served, site):
    reply = _lease(served, site, 0.3)
    assert reply.status_code == 200, reply.text
    assert LeaseReply.model_validate_json(reply.content).new == []


def test_a_wait_beyond_the_cap_is_refused_and_says_where(served, site):
    reply = _lease(served, site, MAX_LEASE_WAIT_S + 1)
    assert reply.status_code == 422
    assert reply.json()["error"]["field"] == "wait_s"


def test_concurrent_submits_each_get_their_own_committed_job(served, conn):
    headers = {"Authorization": f"Bearer {create_key(conn, Role.DISPATCHER, tenant='t1')}"}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(
            lambda i: httpx.post(served + "/v1/jobs", json={**JOB, "name": f"j{i}"},
                                 headers=headers), range(40)))
    assert [r.status_code for r in replies] == [201] * 40
    ids = {r.json()["id"] for r in replies}
    stored = dict(conn.execute(
        "SELECT j.id, j.name FROM jobs j JOIN job_transitions t ON t.job_id = j.id"
        " AND t.to_state = 'queued' WHERE j.id = ANY(%s)", (list(ids),)).fetchall())
    assert set(stored) == ids
    assert sorted(stored.values()) == sorted(f"j{i}" for i in range(40))


def test_a_failing_job_in_a_group_fails_alone(platform, db, conn):
    """The writer writes a group in one statement; a row the store refuses must not take the
    others down with it. The pool is held so that the two last submits queue up as one group."""
    writer = service_for(platform).submits
    good = JobSpec.model_validate(JOB)
    bad = good.model_copy(update={"retries": -1})  # skips validation; the store refuses it
    now = datetime.now(UTC)
    held = [db.pool.getconn() for _ in range(db.pool.max_size - 1)]  # `conn` holds the last

    async def submit_all():
        first = asyncio.ensure_future(writer.submit(good, "t1", now))
        await asyncio.sleep(0)  # the task runs up to its wait: the job is on the queue
        while not writer._queue.empty():  # the writer took it and waits for a connection
            await asyncio.sleep(0.01)
        group = [asyncio.ensure_future(writer.submit(spec, "t1", now)) for spec in (bad, good)]
        while writer._queue.qsize() < 2:
            await asyncio.sleep(0.01)
        for connection in held:
            db.pool.putconn(connection)
        return await asyncio.gather(first, *group, return_exceptions=True)

    try:
        first, refused, second = asyncio.run(submit_all())
    finally:
        writer.stop()
    assert isinstance(first, Receipt) and isinstance(second, Receipt)
    assert isinstance(refused, psycopg.errors.CheckViolation)
    stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    assert stored == {first.job_id, second.job_id}


def test_a_cached_key_is_trusted_for_its_ttl_then_asked_again(conn):
    now = [0.0]
    cache = KeyCache(ttl_s=5.0, clock=lambda: now[0])
    key = create_key(conn, Role.DISPATCHER, tenant="t1")
    principal = cache.authenticate(conn, key)
    assert isinstance(principal, Principal) and principal.tenant == "t1"

    assert revoke_key(conn, key.split("_")[1])
    now[0] = 4.9
    assert cache.authenticate(conn, key) == principal  # within the documented bound
    now[0] = 5.0
    assert cache.authenticate(conn, key) is None  # asked again: revoked
    assert cache.get(key) is None


def test_the_key_cache_keeps_no_failures_and_at_most_its_size(conn):
    cache = KeyCache(max_entries=2)
    assert cache.authenticate(conn, "jsk_nope_nope") is None
    assert cache.get("jsk_nope_nope") is None
    keys = [create_key(conn, Role.DISPATCHER, tenant=f"t{i}") for i in range(3)]
    for key in keys:
        assert cache.authenticate(conn, key) is not None
    assert cache.get(keys[0]) is None  # the oldest went first
    assert cache.get(keys[2]) is not None


def test_woken_requests_at_many_sites_are_leased_together_each_its_own_runs(
        platform, db, conn):
    """The lease desk answers every woken request waiting in one transaction: each agent gets
    the runs placed at its own site, at most its free slots, and none at a site registered
    with another executor than the agent announced."""
    sites = []
    for i in range(4):
        key = new_private_key()
        sites.append(seed_site(conn, db.partitions, name=f"site-{i}", city="Taiyuan",
                               now=datetime.now(UTC), public_key=public_key_b64(key),
                               pools=[PoolSpec("H100", 8, Decimal("9.00"))]))
    service = service_for(platform)
    now = datetime.now(UTC)
    for i in range(len(sites)):
        spec = JobSpec.model_validate({**JOB, "constraints": {"site": f"site-{i}"}})
        for _ in range(3):
            asyncio.run(service.submits.submit(spec, "t1", now))
    service.submits.stop()
    assert run_cycle(conn, service.cfg).placed == 12
    # Its operator re-registered the last site meanwhile: its agent's requests are refused.
    conn.execute("UPDATE sites SET executor = 'slurm' WHERE id = %s", (sites[3][0],))
    desk = service.desk
    held = [db.pool.getconn() for _ in range(db.pool.max_size - 1)]  # `conn` holds the last

    async def woken_all():
        requests = [Woken(SignedBy(agent_id, site_id), ExecutorKind.PROCESS, slots, now)
                    for (site_id, agent_id), slots in zip(sites, (3, 2, 5, 3), strict=True)]
        first = asyncio.ensure_future(desk.lease(requests[0]))
        await asyncio.sleep(0)  # the task runs up to its wait: the request is on the queue
        while not desk._queue.empty():  # the desk took it and waits for a connection
            await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(desk.lease(r)) for r in requests[1:]]
        while desk._queue.qsize() < len(rest):
            await asyncio.sleep(0.01)
        for connection in held:
            db.pool.putconn(connection)
        return await asyncio.gather(first, *rest)

    try:
        answers = asyncio.run(woken_all())
    finally:
        desk.stop()
    assert [len(leases) for leases in answers] == [3, 2, 3, 0]
    for (site_id, agent_id), leases in zip(sites, answers, strict=True):
        leased = conn.execute("SELECT r.id FROM runs r WHERE r.site_id = %s"
                              " AND r.state = 'leased' AND r.agent_id = %s",
                              (site_id, agent_id)).fetchall()
        assert sorted(lease.run_id for lease in leases) == sorted(row[0] for row in leased)
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'leased'").fetchone()[0] == 8


def test_processes_take_turns_at_the_cycle_and_a_held_turn_keeps_the_trigger(
        platform, site, conn, database_url):
    """While another process holds the cycle lock, this process's loop places nothing; it keeps
    its trigger and places the job as soon as the lock is free, without a new submit."""
    service = service_for(platform)
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (CYCLE_LOCK,))
        service.start()
        try:
            receipt = asyncio.run(service.submits.submit(JobSpec.model_validate(JOB), "t1",
                                                         datetime.now(UTC)))
            state = "SELECT state FROM jobs WHERE id = %s"
            deadline = time.monotonic() + 1.0  # ten of the loop's tries at the gap
            while time.monotonic() < deadline:
                assert conn.execute(state, (receipt.job_id,)).fetchone()[0] == "queued"
                time.sleep(0.05)
            other.execute("SELECT pg_advisory_unlock(%s)", (CYCLE_LOCK,))
            _wait_until(lambda: conn.execute(state, (receipt.job_id,)).fetchone()[0]
                        == "placed", "the job to be placed once the lock is free", timeout=5)
        finally:
            service.shutdown()
