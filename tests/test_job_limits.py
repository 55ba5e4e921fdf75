"""What a job may ask for, told at submit: a payload within its caps (else 422 naming the field),
warnings for what no registered site offers (and `permanent` while it waits), a pinned site that
does not exist refused; and `GET /v1/usage` with no parameters: this month so far.

The world: taiyuan-1 and datong-1 with 8 × H100 each (NVIDIA, 312 FP16 TFLOPS, 80 GB, at 8.00
and 12.34 yuan an hour), and jinzhong-1 added here with 16 × 910B (Huawei, domestic, 256
TFLOPS, 64 GB, 6.00 yuan an hour).
"""

# ruff: noqa: F811 (the fixtures imported from tests.test_scheduler_api are parameters here)
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from jinsuan.contract.leasewire import LeaseReply
from jinsuan.contract.policytime import SHANGHAI, month_bounds
from jinsuan.contract.signing import new_private_key, public_key_b64
from jinsuan.kernel.errors import Invalid
from scheduler.feasibility import Obstacle
from scheduler.jobs import new_job_id
from scheduler.seed import PoolSpec, seed_site
from scheduler.spec import JobSpec
from scheduler.submits import Receipt, SubmitWriter, _Submit
from tests.test_scheduler_api import (  # noqa: F401
    JOB,
    SiteAgent,
    _cycle,
    client,
    platform,
    world,
)

KiB = 1024


def _jobs(conn) -> int:
    return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


@pytest.fixture
def province(world, conn, db):
    """The three sites' agents, and the keys."""
    cheap, dear, keys = world
    key = new_private_key()
    site_id, agent_id = seed_site(
        conn, db.partitions, name="jinzhong-1", city="Jinzhong", now=datetime.now(UTC),
        public_key=public_key_b64(key),
        pools=[PoolSpec("910B", 16, Decimal("6.00"), vendor="Huawei", domestic=True,
                        fp16_tflops=256.0, memory_gb=64.0)])
    return [cheap, dear, SiteAgent(site_id, agent_id, key)], keys


def _asking(client, agents) -> None:
    """Each agent asks for work, as a live one does every few seconds."""
    for agent in agents:
        assert agent.lease(client).status_code == 200


# ---- payload caps ------------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "field"), [
    ({"command": ["x"] * 1025}, "payload.command"),  # 1,025 arguments: one over 1,024
    # 21,846 × "算" (3 UTF-8 bytes each) = 65,538 bytes: over 64 KiB though 21,846 characters.
    ({"command": ["echo", "算" * 21_846]}, "payload.command"),
    ({"command": ["x"], "env": {f"V{i}": "" for i in range(257)}}, "payload.env"),
    # "A" + 65,536 × "x" = 65,537 bytes of names and values: one over 64 KiB.
    ({"command": ["x"], "env": {"A": "x" * (64 * KiB)}}, "payload.env"),
    ({"command": ["x"], "image": "i" * 513}, "payload.image"),
    ({"command": ["x"], "workdir": "/" + "w" * 4096}, "payload.workdir"),
])
def test_a_payload_over_a_cap_is_refused_naming_the_field(
        client, world, conn, payload, field) -> None:
    _, _, keys = world
    reply = client.post("/v1/jobs", json={**JOB, "payload": payload}, headers=keys["t1"])
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["field"] == field
    assert _jobs(conn) == 0


def test_a_payload_at_every_cap_is_taken(client, world, conn) -> None:
    _, _, keys = world
    # 1,024 arguments × 64 bytes = 65,536 bytes: at both command caps. 256 variables, each a
    # 4-byte name (V000..V255) and a 252-byte value: 256 × 256 = 65,536 bytes.
    payload = {"command": ["a" * 64] * 1024,
               "env": {f"V{i:03d}": "v" * 252 for i in range(256)},
               "image": "i" * 512, "workdir": "/" + "w" * 4095}
    reply = client.post("/v1/jobs", json={**JOB, "payload": payload}, headers=keys["t1"])
    assert reply.status_code == 201, reply.text
    stored = conn.execute("SELECT spec -> 'payload' FROM jobs").fetchone()[0]
    assert stored == payload


# ---- jobs no registered site can run ------------------------------------------------------------

def _warnings(client, keys, **spec) -> list[dict]:
    reply = client.post("/v1/jobs", json={**JOB, **spec}, headers=keys["t1"])
    assert reply.status_code == 201, reply.text
    assert reply.json()["state"] == "queued"
    return reply.json()["warnings"]


def test_a_model_nobody_has_is_warned_and_shown_permanent(client, province) -> None:
    agents, keys = province
    reply = client.post("/v1/jobs", json={**JOB, "constraints": {"models": ["H800"]}},
                        headers=keys["t1"])
    assert reply.status_code == 201
    obstacle = {"constraint": "model",
                "reason": "no registered site has an accelerator of model H800"}
    assert reply.json()["warnings"] == [obstacle]
    _asking(client, agents)
    shown = client.get(f"/v1/jobs/{reply.json()['id']}", headers=keys["t1"]).json()
    assert shown["permanent"] == [obstacle]
    assert {w["constraint"] for w in shown["why_not"]} == {"model"}  # the same, per site
    overseer = client.get(f"/v1/jobs/{reply.json()['id']}", headers=keys["bureau"]).json()
    assert overseer["permanent"] == [obstacle]


def test_a_gang_bigger_than_every_pool_is_warned(client, province) -> None:
    _, keys = province
    # 4 tasks × 8 = 32 accelerators at one site; the largest pool is jinzhong-1's 16 × 910B.
    assert _warnings(client, keys, tasks=4, accelerators_per_task=8) == [{
        "constraint": "too_small",
        "reason": "no registered site has 32 accelerators of one model (a gang starts at one"
                  " site); the largest pool has 16"}]
    # 16 fits jinzhong-1, 8 fits any site: no warning.
    assert _warnings(client, keys, tasks=2, accelerators_per_task=8) == []
    assert _warnings(client, keys, tasks=1, accelerators_per_task=8) == []


def test_constraints_each_met_somewhere_but_never_together(client, province) -> None:
    _, keys = province
    # H100 pools exist and a 16-pool exists, but no H100 pool has 16.
    assert _warnings(client, keys, tasks=2, accelerators_per_task=8,
                     constraints={"models": ["H100"]}) == [{
        "constraint": "too_small",
        "reason": "no registered site meeting the job's models H100 has 16 accelerators of one"
                  " model (a gang starts at one site); the largest pool has 8"}]
    # Domestic accelerators exist (910B, 256 TFLOPS) and 300 TFLOPS exists (H100, 312), but
    # no domestic one reaches 300.
    assert _warnings(client, keys, constraints={"domestic_only": True,
                                                "min_fp16_tflops": 300}) == [{
        "constraint": "fp16",
        "reason": "no registered site meeting the job's domestic_only has an accelerator with"
                  " ≥ 300 FP16 TFLOPS; the fastest has 256"}]
    # datong-1 is registered, but has no 910B.
    assert _warnings(client, keys, constraints={"site": "datong-1", "models": ["910B"]}) == [{
        "constraint": "model",
        "reason": "no registered site meeting the job's site datong-1 has an accelerator of"
                  " model 910B"}]


def test_domestic_and_fp16_nobody_offers_are_warned(client, world) -> None:
    _, _, keys = world  # only H100s: not domestic, 312 TFLOPS
    assert _warnings(client, keys, constraints={"domestic_only": True,
                                                "min_fp16_tflops": 1000}) == [
        {"constraint": "domestic", "reason": "no registered site has a domestic accelerator"},
        {"constraint": "fp16", "reason": "no registered site has an accelerator with ≥ 1000"
                                         " FP16 TFLOPS; the fastest has 312"}]


def test_a_price_nobody_asks_is_a_warning_but_not_permanent(client, province) -> None:
    agents, keys = province
    reply = client.post("/v1/jobs", json={**JOB, "constraints": {"max_price": "5.00"}},
                        headers=keys["t1"])
    # The cheapest is jinzhong-1's 6.00: over 5.00. An operator may lower a price any day.
    assert reply.json()["warnings"] == [{
        "constraint": "over_price",
        "reason": "no registered site has a price of at most 5.00 yuan per accelerator-hour"}]
    _asking(client, agents)
    shown = client.get(f"/v1/jobs/{reply.json()['id']}", headers=keys["t1"]).json()
    assert shown["permanent"] == []
    assert {w["constraint"] for w in shown["why_not"]} == {"over_price"}


def test_a_pinned_site_that_does_not_exist_is_refused(client, province, conn, db) -> None:
    _, keys = province
    reply = client.post("/v1/jobs", json={**JOB, "constraints": {"site": "taiyuan-9"}},
                        headers=keys["t1"])
    assert reply.status_code == 422
    assert reply.json()["error"] == {"code": "invalid", "field": "constraints.site",
                                     "reason": "no site named 'taiyuan-9' is registered"}
    assert _jobs(conn) == 0
    assert _warnings(client, keys, constraints={"site": "taiyuan-1"}) == []
    # Registered a moment later, the site is taken at once: the writer's cached registry is
    # read again for a site it does not hold, never refused from an old copy.
    seed_site(conn, db.partitions, name="taiyuan-9", city="Taiyuan", now=datetime.now(UTC),
              pools=[PoolSpec("H100", 8, Decimal("9.00"))])
    assert _warnings(client, keys, constraints={"site": "taiyuan-9"}) == []


def test_a_refused_job_in_a_group_fails_alone(platform, province, conn) -> None:
    """The writer reads the registry once for a group of three: the middle one, pinned to no
    site, is refused; the others are written and answered with their warnings."""
    loop = asyncio.new_event_loop()
    try:
        specs = [JobSpec.model_validate({**JOB, **extra}) for extra in (
            {}, {"constraints": {"site": "nowhere"}}, {"constraints": {"models": ["H800"]}})]
        futures = [loop.create_future() for _ in specs]
        writer = SubmitWriter(platform.db.pool, on_written=lambda: None)
        now = datetime.now(UTC)
        writer._write([(_Submit(spec, "t1", now, new_job_id(), False), future)
                       for spec, future in zip(specs, futures, strict=True)])
        answers = loop.run_until_complete(asyncio.gather(*futures, return_exceptions=True))
    finally:
        loop.close()
    first, refused, warned = answers
    assert isinstance(first, Receipt) and first.warnings == []
    assert isinstance(refused, Invalid) and refused.field == "constraints.site"
    assert isinstance(warned, Receipt) and warned.warnings == [Obstacle(
        constraint="model", reason="no registered site has an accelerator of model H800")]
    stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    assert stored == {first.job_id, warned.job_id}


# ---- usage: this month by default ---------------------------------------------------------------

def test_usage_with_no_parameters_is_this_month_so_far(
        client, platform, world, conn) -> None:
    cheap, _, keys = world
    now = datetime.now(UTC)
    local = now.astimezone(SHANGHAI)
    month_start = month_bounds(local.year, local.month)[0]
    # Two 4-accelerator runs of 1 h at taiyuan-1 (8.00 yuan an hour): one ends as this
    # Asia/Shanghai month begins, the other one second before, in the month before.
    jobs = {}
    for label, end in (("this", month_start), ("last", month_start - timedelta(seconds=1))):
        job_id = client.post("/v1/jobs", json={**JOB, "constraints": {"site": "taiyuan-1"}},
                             headers=keys["t1"]).json()["id"]
        _asking(client, [cheap])
        _cycle(platform)
        lease = LeaseReply.model_validate(cheap.lease(client).json()).new[0]
        conn.execute("UPDATE runs SET leased_at = %s WHERE id = %s",
                     (end - timedelta(hours=2), lease.run_id))
        reply = cheap.event(client, lease.run_id, lease.fencing_token, "succeeded",
                            exit_code=0, started_at=end - timedelta(hours=1), ended_at=end)
        assert reply.json() == {"status": "recorded"}
        jobs[label] = job_id

    bare = client.get("/v1/usage", headers=keys["t1"])
    assert bare.status_code == 200, bare.text
    assert [r["job_id"] for r in bare.json()["records"]] == [jobs["this"]]
    totals = bare.json()["totals"]
    assert Decimal(totals["accelerator_hours"]) == Decimal("4")  # 4 accelerators × 1 h
    assert Decimal(totals["cost_yuan"]) == Decimal("32.00")  # 4 accelerator-hours × 8.00

    # Days are Asia/Shanghai midnights: [first of last month, first of this month) holds the
    # other run.
    before = (month_start - timedelta(days=1)).astimezone(SHANGHAI)
    last_month = {"from": f"{before.year}-{before.month:02d}-01",
                  "to": local.date().replace(day=1).isoformat()}
    previous = client.get("/v1/usage", params=last_month, headers=keys["t1"]).json()
    assert [r["job_id"] for r in previous["records"]] == [jobs["last"]]
    # Only `from`: up to now.
    since = client.get("/v1/usage", params={"from": last_month["from"]},
                       headers=keys["t1"]).json()
    assert [r["job_id"] for r in since["records"]] == [jobs["last"], jobs["this"]]
    naive = client.get("/v1/usage", params={"to": "2026-03-01T08:00:00"}, headers=keys["t1"])
    assert naive.status_code == 422 and naive.json()["error"]["field"] == "to"
    garbled = client.get("/v1/usage", params={"from": "last tuesday"}, headers=keys["t1"])
    assert garbled.status_code == 422 and garbled.json()["error"]["field"] == "from"
