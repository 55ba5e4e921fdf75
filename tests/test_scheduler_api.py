"""The scheduler's REST API and the lease protocol, end to end through the app with signed
agent requests and a real PostgreSQL: roles, why-not, a killed site's job finishing elsewhere
and counted once, stale fencing tokens refused, retries elsewhere, cancels, usage records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from jinsuan.app import create_app
from jinsuan.contract.leasewire import (
    AGENT_HEADER,
    LEASES_PATH,
    SIGNATURE_HEADER,
    HeldRun,
    LeaseReply,
    LeaseRequest,
    RunEvent,
    run_events_path,
)
from jinsuan.contract.signing import new_private_key, public_key_b64, sign
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.platform import Platform
from scheduler.cycle import run_cycle
from scheduler.seed import PoolSpec, ask_for_work, seed_site
from scheduler.service import service_for
from scheduler.usage import compute_usage, record_adjustment


class SiteAgent:
    def __init__(self, site_id: int, agent_id: str, key: Ed25519PrivateKey) -> None:
        self.site_id, self.id, self.key = site_id, agent_id, key

    def _post(self, client: TestClient, path: str, body: bytes):
        headers = {AGENT_HEADER: self.id, SIGNATURE_HEADER: sign(self.key, body),
                   "Content-Type": "application/json"}
        return client.post(path, content=body, headers=headers)

    def lease(self, client, held=(), free_slots=4, sent_at=None):
        req = LeaseRequest(agent_id=self.id, sent_at=sent_at or datetime.now(UTC),
                           executor="process", free_slots=free_slots,
                           held=[HeldRun(run_id=r, fencing_token=t) for r, t in held])
        return self._post(client, LEASES_PATH, req.model_dump_json().encode())

    def event(self, client, run_id, token, state, **fields):
        now = datetime.now(UTC)
        ev = RunEvent(agent_id=self.id, sent_at=now, fencing_token=token, state=state,
                      at=fields.pop("at", now), **fields)
        return self._post(client, run_events_path(run_id), ev.model_dump_json().encode())


@pytest.fixture
def platform(settings, db) -> Platform:
    return Platform(settings=settings, db=db)


@pytest.fixture
def client(platform) -> Iterator[TestClient]:
    with TestClient(create_app(platform)) as test_client:
        yield test_client


def _agent(conn, db, name, city, price, now) -> SiteAgent:
    key = new_private_key()
    site_id, agent_id = seed_site(conn, db.partitions, name=name, city=city, now=now,
                                  public_key=public_key_b64(key),
                                  pools=[PoolSpec("H100", 8, Decimal(price))])
    return SiteAgent(site_id, agent_id, key)


@pytest.fixture
def world(conn, db):
    now = datetime.now(UTC)
    cheap = _agent(conn, db, "taiyuan-1", "Taiyuan", "8.00", now)
    dear = _agent(conn, db, "datong-1", "Datong", "12.34", now)
    keys = {
        "t1": create_key(conn, Role.DISPATCHER, tenant="t1"),
        "t2": create_key(conn, Role.DISPATCHER, tenant="t2"),
        "bureau": create_key(conn, Role.BUREAU),
        "admin": create_key(conn, Role.ADMIN),
    }
    return cheap, dear, {k: {"Authorization": f"Bearer {v}"} for k, v in keys.items()}


JOB = {"project": "llm", "tasks": 1, "accelerators_per_task": 4,
       "payload": {"command": ["python", "train.py"]}}


def _submit(client, headers, **extra) -> str:
    reply = client.post("/v1/jobs", json={**JOB, **extra}, headers=headers)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def _cycle(platform, at=None):
    with platform.db.pool.connection() as conn:
        return run_cycle(conn, service_for(platform).cfg, at)


def test_dispatchers_see_only_their_tenant_and_why_not_explains(client, world):
    cheap, dear, keys = world
    job_id = _submit(client, keys["t1"], constraints={"site": "datong-1", "max_price": "10.00"})
    assert client.post("/v1/jobs", json={**JOB, "tenant": "t2"},
                       headers=keys["t1"]).status_code == 403
    assert client.get(f"/v1/jobs/{job_id}", headers=keys["t2"]).status_code == 404
    assert client.get("/v1/jobs", headers=keys["t2"]).json() == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=keys["bureau"]).json()] == [job_id]
    cheap.lease(client)  # both agents ask for work
    dear.lease(client)
    shown = client.get(f"/v1/jobs/{job_id}", headers=keys["t1"]).json()
    assert shown["state"] == "queued"
    # Taiyuan is not the pinned site; Datong's 12.34 yuan is over the job's 10.00.
    assert {(w["site"], w["constraint"]) for w in shown["why_not"]} == {
        ("taiyuan-1", "pinned"), ("datong-1", "over_price")}
    assert shown["permanent"] == []  # a price can change: not a permanent obstacle
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=keys["t2"]).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=keys["bureau"]).status_code == 403
    assert client.post(f"/v1/jobs/{job_id}/cancel",
                       headers=keys["t1"]).json()["state"] == "cancelled"
    assert client.post(f"/v1/jobs/{job_id}/cancel",
                       headers=keys["t1"]).json()["state"] == "cancelled"  # idempotent


def test_a_killed_sites_job_finishes_elsewhere_once_and_stale_tokens_are_refused(
        client, platform, world, conn):
    cheap, dear, keys = world
    job_id = _submit(client, keys["t1"])
    assert _cycle(platform).placed == 1
    first = LeaseReply.model_validate(cheap.lease(client).json())
    assert [lease.job_id for lease in first.new] == [job_id]
    lease = first.new[0]
    assert (lease.tasks, lease.accelerators_per_task, lease.accelerator_model) == (1, 4, "H100")
    assert dear.lease(client).json()["new"] == []  # placed at the cheaper site only
    assert cheap.event(client, lease.run_id, lease.fencing_token, "running",
                       executor_ref="pid 42").json() == {"status": "recorded"}
    renewed = LeaseReply.model_validate(
        cheap.lease(client, held=[(lease.run_id, lease.fencing_token)]).json())
    assert renewed.renewed == [lease.run_id]

    # The cheap site dies: no reports, no renewals. After the TTL its lease is gone.
    conn.execute("UPDATE agents SET last_report_at = now() - interval '1 hour'"
                 " WHERE id = %s", (cheap.id,))
    later = datetime.now(UTC) + timedelta(seconds=service_for(platform).cfg.lease_ttl_s + 1)
    ask_for_work(conn, dear.site_id, later)  # the live site's agent goes on asking for work
    result = _cycle(platform, later)
    assert (result.expired, result.placed) == (1, 1)
    second = LeaseReply.model_validate(dear.lease(client).json())
    assert [x.job_id for x in second.new] == [job_id]
    new = second.new[0]
    assert new.fencing_token > lease.fencing_token

    # The dead site comes back late: its report and its heartbeat are refused.
    late = cheap.event(client, lease.run_id, lease.fencing_token, "succeeded", exit_code=0)
    assert late.status_code == 409 and late.json()["error"]["code"] == "stale_lease"
    wrong = dear.event(client, new.run_id, lease.fencing_token, "running")
    assert wrong.status_code == 409
    back = LeaseReply.model_validate(
        cheap.lease(client, held=[(lease.run_id, lease.fencing_token)]).json())
    assert back.lost == [lease.run_id] and back.new == []

    done = dear.event(client, new.run_id, new.fencing_token, "succeeded", exit_code=0,
                      log_tail="ok\n")
    assert done.json() == {"status": "recorded"}
    again = dear.event(client, new.run_id, new.fencing_token, "succeeded", exit_code=0)
    assert again.json() == {"status": "duplicate"}
    flip = dear.event(client, new.run_id, new.fencing_token, "failed", exit_code=1)
    assert flip.status_code == 409  # a job ends once
    shown = client.get(f"/v1/jobs/{job_id}", headers=keys["t1"]).json()
    assert (shown["state"], shown["tries"]) == ("succeeded", 2)
    assert [(r["site"], r["state"]) for r in shown["runs"]] == [("taiyuan-1", "lost"),
                                                               ("datong-1", "succeeded")]
    assert [t["to_state"] for t in shown["transitions"]] == [
        "queued", "placed", "leased", "running", "queued", "placed", "leased", "succeeded"]
    # Both runs held accelerators, so both are metered: the dead site's to its last heartbeat.
    usage = conn.execute("SELECT run_id, site_id, bounded_by FROM usage_records"
                         " WHERE job_id = %s ORDER BY id", (job_id,)).fetchall()
    assert [(run, site) for run, site, _ in usage] == [(lease.run_id, cheap.site_id),
                                                     (new.run_id, dear.site_id)]
    assert usage[0][2].startswith("lease expired") and usage[1][2] == ""


def test_a_failed_run_is_retried_at_another_site(client, platform, world):
    cheap, dear, keys = world
    job_id = _submit(client, keys["t1"], retries=1)
    _cycle(platform)
    lease = LeaseReply.model_validate(cheap.lease(client).json()).new[0]
    failed = cheap.event(client, lease.run_id, lease.fencing_token, "failed", exit_code=3)
    assert failed.json() == {"status": "recorded"}
    assert client.get(f"/v1/jobs/{job_id}", headers=keys["t1"]).json()["state"] == "queued"
    _cycle(platform)
    retry = LeaseReply.model_validate(dear.lease(client).json()).new
    assert [x.job_id for x in retry] == [job_id]
    dear.event(client, retry[0].run_id, retry[0].fencing_token, "failed", exit_code=3)
    shown = client.get(f"/v1/jobs/{job_id}", headers=keys["t1"]).json()
    assert (shown["state"], shown["tries"]) == ("failed", 2)
    assert shown["ended_at"] is not None


def test_a_cancelled_run_is_in_the_next_heartbeats_cancel_list(client, platform, world):
    cheap, _, keys = world
    job_id = _submit(client, keys["t1"])
    _cycle(platform)
    lease = LeaseReply.model_validate(cheap.lease(client).json()).new[0]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=keys["t1"])
    reply = LeaseReply.model_validate(
        cheap.lease(client, held=[(lease.run_id, lease.fencing_token)]).json())
    assert reply.cancel == [lease.run_id] and reply.renewed == []
    late = cheap.event(client, lease.run_id, lease.fencing_token, "succeeded", exit_code=0)
    assert late.status_code == 409


def test_agent_requests_must_be_signed_fresh_and_by_the_named_agent(client, world):
    cheap, dear, _ = world
    stale = cheap.lease(client, sent_at=datetime.now(UTC) - timedelta(minutes=6))
    assert stale.status_code == 401 and "sent_at" in stale.text
    body = LeaseRequest(agent_id=cheap.id, sent_at=datetime.now(UTC), executor="process",
                        free_slots=1).model_dump_json().encode()
    forged = client.post(LEASES_PATH, content=body, headers={
        AGENT_HEADER: cheap.id, SIGNATURE_HEADER: sign(dear.key, body)})
    assert forged.status_code == 401
    other = client.post(LEASES_PATH, content=body, headers={
        AGENT_HEADER: dear.id, SIGNATURE_HEADER: sign(dear.key, body)})
    assert other.status_code == 401 and "agent_id" in other.text
    wrong_executor = LeaseRequest(agent_id=cheap.id, sent_at=datetime.now(UTC),
                                  executor="slurm", free_slots=1).model_dump_json().encode()
    refused = client.post(LEASES_PATH, content=wrong_executor, headers={
        AGENT_HEADER: cheap.id, SIGNATURE_HEADER: sign(cheap.key, wrong_executor)})
    assert refused.status_code == 409


def test_site_scheduling_is_set_by_its_operator_or_an_admin(client, world, conn):
    cheap, _, keys = world
    body = {"executor": "slurm", "prices": {"H100": "9.50", "910B": "6.00"}}
    assert client.put(f"/v1/sites/{cheap.site_id}/scheduling", json=body,
                      headers=keys["t1"]).status_code == 403
    ent = conn.execute("SELECT enterprise_id FROM sites WHERE id = %s",
                       (cheap.site_id,)).fetchone()[0]
    other_ent = conn.execute("INSERT INTO enterprises (name) VALUES ('other') RETURNING id"
                             ).fetchone()[0]
    mine = {"Authorization": "Bearer " + create_key(conn, Role.OPERATOR, enterprise_id=ent)}
    theirs = {"Authorization": "Bearer " + create_key(conn, Role.OPERATOR,
                                                      enterprise_id=other_ent)}
    # Another enterprise's operator is told the site does not exist, in the words used for a
    # site that does not: neither its prices nor whether it exists leak.
    stranger = client.put(f"/v1/sites/{cheap.site_id}/scheduling", json=body, headers=theirs)
    missing = client.put("/v1/sites/999999/scheduling", json=body, headers=theirs)
    assert (stranger.status_code, missing.status_code) == (404, 404)
    assert stranger.json()["error"]["reason"] == f"no site with id {cheap.site_id}"
    assert "taiyuan" not in stranger.text
    assert client.get(f"/v1/sites/{cheap.site_id}/scheduling",
                      headers=theirs).status_code == 404
    assert client.put(f"/v1/sites/{cheap.site_id}/scheduling", json=body,
                      headers=mine).status_code == 200
    shown = client.get(f"/v1/sites/{cheap.site_id}/scheduling", headers=keys["t1"]).json()
    assert (shown["executor"], shown["prices"]) == ("slurm", {"910B": "6.00", "H100": "9.50"})
    assert shown["capabilities"] == ["accelerator_isolation", "gang"]  # Slurm's
    assert shown["agent_executor"] == "process"  # what its agent last announced: not Slurm
    bad = client.put(f"/v1/sites/{cheap.site_id}/scheduling",
                     json={"prices": {"H100": "1.234"}}, headers=keys["admin"])
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "prices.H100"


# ---- usage -------------------------------------------------------------------------------------

def test_usage_arithmetic_is_decimal_to_the_fen_half_up():
    start = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    usage = compute_usage(1, start, start + timedelta(minutes=30),
                          mean_fp16_tflops=Decimal("989.4"), price=Decimal("0.05"),
                          pool_joules=Decimal("7200000"), pool_size=8)
    assert usage.accelerator_hours == Decimal("0.500000")
    assert usage.cost_yuan == Decimal("0.03")  # 0.025 rounds half up, not to even
    assert usage.fp16_pflop_hours == Decimal("0.494700")
    assert usage.energy_kwh == Decimal("0.250000")  # 2 kWh pool × 1/8
    tick = compute_usage(1, start, start + timedelta(microseconds=1800),
                         mean_fp16_tflops=Decimal(0), price=Decimal("12.34"),
                         pool_joules=None, pool_size=8)
    assert tick.accelerator_hours == Decimal("0.000001")  # exactly 0.0000005 h: half up
    assert tick.energy_kwh is None and tick.cost_yuan == Decimal("0.00")


def test_usage_record_from_counters_and_corrections_are_new_records(
        client, platform, world, conn, db):
    _, dear, keys = world
    job_id = _submit(client, keys["t1"], constraints={"site": "datong-1"})
    _cycle(platform)
    lease = LeaseReply.model_validate(dear.lease(client).json()).new[0]
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(minutes=40), now - timedelta(minutes=10)
    db.partitions.ensure(conn, [(start - timedelta(minutes=1)).date(), end.date()])
    conn.execute(
        "INSERT INTO series (site_id, metric, device) SELECT site_id,"
        " 'accelerator_energy_joules_total', uuid FROM accelerators WHERE site_id = %s",
        (dear.site_id,))
    for at, joules in ((start - timedelta(minutes=1), 1e6), (end - timedelta(minutes=1), 2.8e6)):
        conn.execute("INSERT INTO samples (ts, series_id, value) SELECT %s, id, %s FROM series"
                     " WHERE site_id = %s AND metric = 'accelerator_energy_joules_total'",
                     (at, joules, dear.site_id))
    # The lease was granted before the run started (the platform bills no earlier).
    conn.execute("UPDATE runs SET leased_at = %s WHERE id = %s",
                 (start - timedelta(minutes=2), lease.run_id))
    reply = dear.event(client, lease.run_id, lease.fencing_token, "succeeded", exit_code=0,
                       started_at=start, ended_at=end)
    assert reply.json() == {"status": "recorded"}
    row = conn.execute(
        "SELECT id, accelerator_hours, fp16_pflop_hours, energy_kwh, cost_yuan, energy_method"
        " FROM usage_records WHERE job_id = %s", (job_id,)).fetchone()
    record_id, hours, pflops, kwh, cost, method = row
    assert hours == Decimal("2.000000")  # 4 accelerators × 0.5 h
    assert pflops == Decimal("0.624000")  # 2 accelerator-hours × 312 TFLOPS
    assert kwh == Decimal("2.000000")  # 8 × 1.8 MJ = 4 kWh for the pool, × 4/8
    assert cost == Decimal("24.68")  # 2 h × 12.34
    assert "4/8" in method
    with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
        conn.execute("UPDATE usage_records SET cost_yuan = 0 WHERE id = %s", (record_id,))
    fix = record_adjustment(conn, record_id, reason="meter recalibrated",
                            energy_kwh=Decimal("-0.100000"), cost_yuan=Decimal("-1.00"))
    net = conn.execute("SELECT sum(cost_yuan), sum(energy_kwh), count(*) FROM usage_records"
                       " WHERE run_id = %s", (lease.run_id,)).fetchone()
    assert net == (Decimal("23.68"), Decimal("1.900000"), 2)
    assert fix != record_id


def test_usage_api_totals_and_who_sees_what(client, platform, world, conn):
    cheap, dear, keys = world
    ended = {}
    for tenant, site in (("t1", "taiyuan-1"), ("t2", "datong-1")):
        job_id = _submit(client, keys[tenant], constraints={"site": site})
        _cycle(platform)
        agent = cheap if site == "taiyuan-1" else dear
        lease = LeaseReply.model_validate(agent.lease(client).json()).new[0]
        end = datetime.now(UTC).replace(microsecond=0)
        conn.execute("UPDATE runs SET leased_at = %s WHERE id = %s",  # leased before it ran
                     (end - timedelta(minutes=20), lease.run_id))
        reply = agent.event(client, lease.run_id, lease.fencing_token, "succeeded", exit_code=0,
                            started_at=end - timedelta(minutes=15), ended_at=end)
        assert reply.json() == {"status": "recorded"}
        ended[tenant] = job_id
    original = conn.execute("SELECT id FROM usage_records WHERE job_id = %s",
                            (ended["t2"],)).fetchone()[0]
    record_adjustment(conn, original, reason="price corrected", cost_yuan=Decimal("-0.50"))
    window = {"from": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
              "to": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()}

    everything = client.get("/v1/usage", params=window, headers=keys["bureau"]).json()
    # 4 accelerators × 0.25 h at each site: 8.00 and 12.34 yuan an hour, then -0.50.
    assert everything["totals"]["records"] == 3
    assert Decimal(everything["totals"]["accelerator_hours"]) == Decimal("2")
    assert Decimal(everything["totals"]["cost_yuan"]) == Decimal("8.00") + Decimal("12.34") \
        - Decimal("0.50")
    own = client.get("/v1/usage", params=window, headers=keys["t1"]).json()
    assert {r["job_id"] for r in own["records"]} == {ended["t1"]}
    assert Decimal(own["totals"]["cost_yuan"]) == Decimal("8.00")
    asked_for_other = client.get("/v1/usage", params={**window, "tenant": "t2"},
                                 headers=keys["t1"]).json()
    assert asked_for_other["records"] == []  # a dispatcher's filter cannot widen its view
    by_site = client.get("/v1/usage", params={**window, "site": "datong-1"},
                         headers=keys["admin"]).json()
    assert {r["site"] for r in by_site["records"]} == {"datong-1"}
    backwards = client.get("/v1/usage", params={"from": window["to"], "to": window["from"]},
                           headers=keys["bureau"])
    assert backwards.status_code == 422 and backwards.json()["error"]["field"] == "to"
    naive = client.get("/v1/usage", params={"from": "2026-01-01T00:00:00", "to": window["to"]},
                       headers=keys["bureau"])
    assert naive.status_code == 422
    assert naive.json()["error"]["field"] == "from"
    assert "has no time zone" in naive.json()["error"]["reason"]


def test_a_jobs_secrets_and_output_are_its_tenants_alone(client, platform, world):
    cheap, _, keys = world
    job_id = _submit(client, keys["t1"], payload={"command": ["train"],
                                                  "env": {"HF_TOKEN": "hf_s3cret"}})
    _cycle(platform)
    lease = LeaseReply.model_validate(cheap.lease(client).json()).new[0]
    cheap.event(client, lease.run_id, lease.fencing_token, "succeeded", exit_code=0,
                log_tail="token hf_s3cret loaded\n")
    own = client.get(f"/v1/jobs/{job_id}", headers=keys["t1"]).json()
    assert own["spec"]["payload"]["env"] == {"HF_TOKEN": "hf_s3cret"}
    assert own["runs"][0]["log_tail"] == "token hf_s3cret loaded\n"
    for overseer in ("bureau", "admin"):
        seen = client.get(f"/v1/jobs/{job_id}", headers=keys[overseer])
        assert seen.status_code == 200
        assert "hf_s3cret" not in seen.text
        assert seen.json()["spec"]["payload"]["env"] == {"HF_TOKEN": "(withheld)"}
        assert seen.json()["runs"][0]["state"] == "succeeded"


def test_an_agent_running_another_executor_is_refused_and_the_job_says_why(
        client, platform, world):
    """taiyuan-1 is registered with Slurm while its agent runs the process executor: the agent's
    request is refused with 409 and recorded on the site, the job pinned there says why in its
    why-not, and the site gets it once its registration names what the agent runs."""
    cheap, _, keys = world
    slurm = {"executor": "slurm", "prices": {"H100": "8.00"}}
    assert client.put(f"/v1/sites/{cheap.site_id}/scheduling", json=slurm,
                      headers=keys["admin"]).status_code == 200
    refused = cheap.lease(client)
    assert refused.status_code == 409 and refused.json()["error"]["field"] == "executor"
    site = client.get(f"/v1/sites/{cheap.site_id}/scheduling", headers=keys["admin"]).json()
    assert (site["executor"], site["agent_executor"]) == ("slurm", "process")
    assert site["last_lease_at"] is not None
    job_id = _submit(client, keys["t1"], constraints={"site": "taiyuan-1"})
    assert _cycle(platform).placed == 0
    shown = client.get(f"/v1/jobs/{job_id}", headers=keys["t1"]).json()
    [why] = [w for w in shown["why_not"] if w["site"] == "taiyuan-1"]
    assert why["constraint"] == "executor_mismatch"
    assert "agent runs the process executor" in why["reason"]
    assert "registered with slurm" in why["reason"]
    process = {"executor": "process", "prices": {"H100": "8.00"}}
    assert client.put(f"/v1/sites/{cheap.site_id}/scheduling", json=process,
                      headers=keys["admin"]).status_code == 200
    assert _cycle(platform).placed == 1
    reply = LeaseReply.model_validate(cheap.lease(client).json())
    assert [lease.job_id for lease in reply.new] == [job_id]
