"""Compute vouchers worked by hand: apply, review with two bureau keys, issue within the cap
and the pool, draw from usage records the scheduler metered for real runs, settle, expire,
revoke, claw back; the rules that refuse, each naming its entry; and the ledger behind it all.

Jobs run through the scheduler's own code (placement cycle, lease, run events, usage records)
on the sites ``scheduler.seed`` creates, as tests/scheduling_story.py does.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from jinsuan.contract.creditcode import check_character
from jinsuan.contract.leasewire import HeldRun, LeaseRequest, RunEvent
from jinsuan.kernel import ledger
from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.auth import Principal, Role, create_key
from jinsuan.kernel.errors import Conflict, Forbidden, Invalid
from rewards.vouchers import drawing, issuing, parties, settling
from rewards.vouchers.issuing import Contract
from scheduler.config import SchedulerConfig
from scheduler.cycle import run_cycle
from scheduler.jobs import submit_job
from scheduler.leases import handle_event, handle_lease
from scheduler.seed import PoolSpec, report, seed_site
from scheduler.spec import JobSpec
from scheduler.usage import record_adjustment

CFG = SchedulerConfig(lease_ttl_s=86_400)  # one lease covers a whole run: no heartbeats needed
ISSUE_DAY = date(2026, 3, 1)
RUN_AT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 in Beijing
PAPERS = [{"name": "算力服务合同.pdf", "sha256": "cd" * 32}]


def code(n: int, region: str = "140100") -> str:
    """A valid unified social credit code, its check character computed by the standard."""
    body = f"91{region}MA{n:07d}"
    return body + check_character(body)


class World:
    """Two providers in Taiyuan (Taihang Compute: ty-1, 8 × H100 at 8.00 yuan/h; Fenhe Cloud:
    fh-1, same price), one out of province (Yanshan: bj-1); applicant 清源智能 (tenant lab-a)
    and 云冈大学 (tenant lab-b); bureau keys maker and checker; a dispatcher key per tenant."""

    def __init__(self, conn: psycopg.Connection, db: Any) -> None:
        self.conn, self.db = conn, db
        self.sites: dict[str, SignedBy] = {}
        for name, enterprise, in_province in (("ty-1", "Taihang Compute", True),
                                              ("fh-1", "Fenhe Cloud", True),
                                              ("bj-1", "Yanshan", False)):
            site_id, agent = seed_site(conn, db.partitions, name=name, city="太原",
                                       enterprise=enterprise, in_province=in_province,
                                       now=RUN_AT - timedelta(hours=1),
                                       pools=[PoolSpec("H100", 8, Decimal("8.00"))])
            self.sites[name] = SignedBy(agent, site_id)
        self.taihang = conn.execute("SELECT id FROM enterprises WHERE name = 'Taihang Compute'"
                                    ).fetchone()[0]
        parties.set_enterprise_code(conn, self.taihang, code(900))
        self.a = parties.register_applicant(conn, code=code(1), name="清源智能",
                                            kind="company", in_province=True)
        self.b = parties.register_applicant(conn, code=code(2, "110000"), name="云冈大学",
                                            kind="university", in_province=False)
        parties.bind_tenant(conn, self.a.id, "lab-a")
        parties.bind_tenant(conn, self.b.id, "lab-b")
        self.maker, self.checker = (self.principal(Role.BUREAU) for _ in range(2))
        self.lab_a = self.principal(Role.DISPATCHER, tenant="lab-a")
        self.lab_b = self.principal(Role.DISPATCHER, tenant="lab-b")

    def principal(self, role: Role, **owner: Any) -> Principal:
        create_key(self.conn, role, **owner)
        key_id = self.conn.execute("SELECT max(id) FROM api_keys").fetchone()[0]
        return Principal(key_id, role, tenant=owner.get("tenant"))

    def voucher(self, who: Principal, amount: str, *, provider: str = "Taihang Compute",
                contract: str = "HT-1", special: bool = False) -> issuing.Issued:
        number = issuing.apply(self.conn, who, Contract(
            provider, contract, Decimal(amount), date(2026, 1, 1), date(2026, 12, 31),
            special, "国家重大专项 2025ZD0001" if special else "", PAPERS))
        issuing.recommend(self.conn, self.maker, number)
        return issuing.approve(self.conn, self.checker, number, on=ISSUE_DAY)

    def run(self, tenant: str, site: str, voucher: int | None, *, hours: float,
            accelerators: int = 4, at: datetime = RUN_AT) -> str:
        """A job run to success at ``site`` for ``hours``; return the job id."""
        spec = JobSpec(project="p", accelerators_per_task=accelerators, voucher=voucher,
                       constraints={"site": site, "in_province_only": False},
                       payload={"command": ["true"]})
        job = submit_job(self.conn, spec, tenant, at)
        agent = self.sites[site]
        report(self.conn, self.db.partitions, agent.site_id, at)
        run_cycle(self.conn, CFG, at)
        reply = handle_lease(self.conn, agent, LeaseRequest(
            agent_id=agent.agent_id, sent_at=at, executor="process", free_slots=4), CFG, at)
        [lease] = [lease for lease in reply.new if lease.job_id == job]
        end = at + timedelta(hours=hours)
        for state, when in (("running", at), ("succeeded", end)):
            handle_event(self.conn, agent, lease.run_id, RunEvent(
                agent_id=agent.agent_id, sent_at=when, fencing_token=lease.fencing_token,
                state=state, at=when, **({"exit_code": 0, "started_at": at, "ended_at": end}
                                         if state == "succeeded" else {})), CFG, when)
        # the next heartbeat lets the run go
        handle_lease(self.conn, agent, LeaseRequest(
            agent_id=agent.agent_id, sent_at=end, executor="process", free_slots=4,
            held=[HeldRun(run_id=lease.run_id, fencing_token=lease.fencing_token)]), CFG, end)
        return job

    def draws(self, job: str) -> list[tuple[Decimal, str]]:
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT amount, reason FROM voucher_draws WHERE job_id = %s"
            " ORDER BY usage_record_id", (job,))]


@pytest.fixture
def world(conn: psycopg.Connection, db: Any) -> World:
    return World(conn, db)


def test_issue_draw_settle_and_the_ledger(world: World, tmp_path) -> None:
    conn = world.conn
    # Contract 300,000.00 at 20% = 60,000.00; the 2026 pool is funded with 50,000,000.00.
    issued = world.voucher(world.lab_a, "300000.00")
    assert (issued.face_value, issued.asked) == (Decimal("60000.00"), Decimal("60000.00"))
    assert ledger.balance(conn, "pool:voucher:2026") == Decimal("49940000.00")
    v = issued.voucher_id

    # 4 H100 × 2.5 h × 8.00 yuan = 80.00 yuan; the voucher draws 20% of it: 16.00.
    job = world.run("lab-a", "ty-1", v, hours=2.5)
    assert drawing.draw_pending(conn) == 1
    assert world.draws(job) == [(Decimal("16.00"), "80.00 × 0.20 = 16.00")]
    assert drawing.draw_pending(conn) == 0  # a record draws once
    # An adjustment of the run down by 30.00 yuan gives back 20% of it: 6.00.
    original = conn.execute("SELECT id FROM usage_records WHERE job_id = %s", (job,)
                            ).fetchone()[0]
    record_adjustment(conn, original, reason="price corrected", cost_yuan=Decimal("-30.00"))
    drawing.draw_pending(conn)
    assert world.draws(job)[1][0] == Decimal("-6.00")
    # Balance 60,000.00 - 16.00 + 6.00 = 59,990.00, derived from the ledger.
    assert settling.voucher_statement(conn, v)["balance"] == Decimal("59990.00")
    assert ledger.balance(conn, f"receivable:provider:{world.taihang}") == Decimal("10.00")

    # The provider's quarterly statement (Q1 of the draws' date) and its settlement.
    drawn_on = conn.execute("SELECT min(drawn_at) FROM voucher_draws").fetchone()[0]
    day = drawn_on.astimezone(UTC).date()
    statement = settling.provider_statement(conn, world.taihang, day)
    assert statement["unsettled"] == Decimal("10.00")
    assert [d["job"] for d in statement["draws"]] == [job, job]
    settlement = settling.settle(conn, world.maker, world.taihang, day)
    with pytest.raises(Conflict, match="already settled"):
        settling.settle(conn, world.maker, world.taihang, day)
    assert settling.mark_paid(conn, world.checker, settlement, "BOC-2026-0042") == Decimal(
        "10.00")
    assert ledger.balance(conn, f"paid:provider:{world.taihang}") == Decimal("10.00")
    assert ledger.balance(conn, f"receivable:provider:{world.taihang}") == 0
    key = ledger.signing_key(tmp_path / "k.pem")
    ledger.checkpoint(conn, key)
    assert ledger.verify(conn, key.public_key()) == []
    # double entry: every account together sums to zero
    assert sum(ledger.balances(conn, "").values()) == 0


def test_draws_refused_elsewhere_outside_the_dates_or_for_another_tenant(world: World) -> None:
    v = world.voucher(world.lab_a, "300000.00").voucher_id
    at_fenhe = world.run("lab-a", "fh-1", v, hours=1)
    out_of_province = world.run("lab-a", "bj-1", v, hours=1)
    another_tenant = world.run("lab-b", "ty-1", v, hours=1)
    too_early = world.run("lab-a", "ty-1", v, hours=1, at=datetime(2025, 12, 31, 1, tzinfo=UTC))
    drawing.draw_pending(world.conn)
    assert world.draws(at_fenhe) == [(Decimal("0.00"), "ran at 'fh-1', not at an in-province"
                                      " site of the contracted provider 'Taihang Compute'")]
    assert "not at an in-province site" in world.draws(out_of_province)[0][1]
    assert world.draws(another_tenant) == [(Decimal("0.00"), "tenant 'lab-b' does not act for"
                                            f" voucher {v}'s applicant")]
    # 2025-12-31 01:00 UTC is 09:00 on 31 December in Beijing: before the contract's start.
    assert world.draws(too_early) == [(Decimal("0.00"), "ended on 2025-12-31, outside the"
                                       " contract's dates and the voucher's validity"
                                       " (2026-01-01 .. 2026-12-31)")]
    assert settling.voucher_statement(world.conn, v)["balance"] == Decimal("60000.00")


def test_the_special_rate_and_the_applicant_cap(world: World) -> None:
    # 30%: 8,000,000.00 × 0.30 = 2,400,000.00, capped at 2,000,000.00 a year.
    special = world.voucher(world.lab_a, "8000000.00", special=True)
    assert (special.asked, special.face_value) == (Decimal("2400000.00"), Decimal("2000000.00"))
    # 云冈大学 at 20%: 3,000,000.00 × 0.20 = 600,000.00, then 3,000,000.00 again: only
    # 1,000,000.00 - 600,000.00 = 400,000.00 left under its cap; a third gets nothing.
    assert world.voucher(world.lab_b, "3000000.00", contract="B-1").face_value == Decimal(
        "600000.00")
    second = world.voucher(world.lab_b, "3000000.00", contract="B-2")
    assert second.face_value == Decimal("400000.00") and "leaves 400000.00" in second.why
    with pytest.raises(Conflict, match=r"cap of 1000000\.00 yuan is reached"):
        world.voucher(world.lab_b, "100000.00", contract="B-3")


def test_the_pool_running_out_issues_what_is_left(world: World) -> None:
    # 49,999,000.00 of the pool is spent elsewhere; an approval asking 60,000.00 gets the
    # 1,000.00 left (the policy file: issue_remainder), and the next is refused.
    world.voucher(world.lab_b, "5000.00", contract="B-0")  # funds the pool: 1,000.00 issued
    with world.conn.transaction():
        ledger.append(world.conn, [ledger.Move("test.other", "pool:voucher:2026",
                                               "voucher:elsewhere", Decimal("49998000.00"))],
                      "test")
    last = world.voucher(world.lab_a, "300000.00")
    assert last.face_value == Decimal("1000.00")
    assert "pool had only 1000.00 left" in last.why
    with pytest.raises(Conflict, match=r"pool has 0\.00 yuan left"):
        world.voucher(world.lab_a, "300000.00", contract="HT-2")


def test_expiry_revocation_and_clawback_return_money_to_the_pool(world: World) -> None:
    conn = world.conn
    v = world.voucher(world.lab_a, "300000.00").voucher_id
    world.run("lab-a", "ty-1", v, hours=2.5)
    drawing.draw_pending(conn)
    # Expiry on 2027-01-01: 60,000.00 - 16.00 = 59,984.00 returns to the 2026 pool.
    pool = ledger.balance(conn, "pool:voucher:2026")
    assert issuing.expire_due(conn, date(2026, 12, 31)) == []
    assert issuing.expire_due(conn, date(2027, 1, 1)) == [v]
    assert ledger.balance(conn, "pool:voucher:2026") == pool + Decimal("59984.00")
    assert ledger.balance(conn, f"voucher:{v}") == 0
    # A later run draws nothing from it, and says why.
    later = world.run("lab-a", "ty-1", v, hours=1, at=RUN_AT + timedelta(days=1))
    drawing.draw_pending(conn)
    assert world.draws(later) == [(Decimal("0.00"), f"voucher {v} is expired")]
    # Fraud found: the 16.00 drawn is clawed back from the provider to the pool.
    assert issuing.clawback(conn, world.maker, v, "usage invented by the provider") == Decimal(
        "16.00")
    assert ledger.balance(conn, f"receivable:provider:{world.taihang}") == 0
    assert ledger.balance(conn, "pool:voucher:2026") == pool + Decimal("60000.00")
    # Revocation of an active voucher returns its whole balance.
    other = world.voucher(world.lab_b, "10000.00", contract="B-9").voucher_id
    assert issuing.revoke(world.conn, world.maker, other, "contract cancelled") == Decimal(
        "2000.00")
    with pytest.raises(Conflict, match="already revoked"):
        issuing.revoke(world.conn, world.maker, other, "again")


def test_the_guards_name_their_rule_and_entry(world: World) -> None:
    conn = world.conn
    contract = Contract("Taihang Compute", "HT-1", Decimal("1000.00"), date(2026, 1, 1),
                        date(2026, 12, 31), False, "", PAPERS)
    first = issuing.apply(conn, world.lab_a, contract)
    with pytest.raises(Conflict, match=f"one application per contract.*application {first}"):
        issuing.apply(conn, world.lab_b, contract)
    # the applicant is the provider itself
    itself = parties.register_applicant(conn, code=code(900), name="Taihang Compute",
                                        kind="company", in_province=True)
    parties.bind_tenant(conn, itself.id, "taihang-lab")
    own = world.principal(Role.DISPATCHER, tenant="taihang-lab")
    with pytest.raises(Conflict, match=f"one entity \\(credit code {code(900)}\\)"):
        issuing.apply(conn, own, replace(contract, contract_id="X"))
    # an affiliated provider
    parties.affiliate(conn, world.maker, code(2, "110000"), code(900), "同一实际控制人")
    with pytest.raises(Conflict, match=r"affiliation register entry .*同一实际控制人"):
        issuing.apply(conn, world.lab_b, replace(contract, contract_id="Y"))
    # support already given by another fund
    conn.execute("INSERT INTO reward_other_support (credit_code, measure, fund, amount,"
                 " granted_on) VALUES (%s, '9', '太原市算力券', 50000, '2026-02-01')", (code(1),))
    with pytest.raises(Conflict, match=r"other-support register entry .*太原市算力券"):
        issuing.apply(conn, world.lab_a, replace(contract, provider="Fenhe Cloud",
                                                 contract_id="Z"))
    # no in-province site; a tenant acting for nobody; the maker may not also check
    with pytest.raises(Conflict, match="no in-province site"):
        issuing.apply(conn, world.lab_b, replace(contract, provider="Yanshan",
                                                 contract_id="W"))
    stranger = world.principal(Role.DISPATCHER, tenant="nobody")
    with pytest.raises(Forbidden, match="acts for no voucher applicant"):
        issuing.apply(conn, stranger, contract)
    issuing.recommend(conn, world.maker, first)
    with pytest.raises(Forbidden, match="maker-checker"):
        issuing.approve(conn, world.maker, first, on=ISSUE_DAY)


def test_credit_codes_are_checked_where_they_enter(world: World) -> None:
    with pytest.raises(Invalid, match="expected") as error:
        parties.register_applicant(world.conn, code=code(5)[:-1] + "0", name="x",
                                   kind="company", in_province=True)
    assert error.value.field == "credit_code"
