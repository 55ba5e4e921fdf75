"""Measure 10 (compute exported out of the province) worked by hand: each scenario's arithmetic
is written beside its asserts; at the end, the measure assessed on the store from usage the
scheduler metered for real runs and an accepted declaration.

The calculation is a pure function of frozen inputs and a policy file; the store test checks
that ``read_inputs`` hands it what the scheduler metered at an enterprise's in-province sites
for tenants of applicants registered outside the province, inside the year's window.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from test_rewards_more_measures import POLICY, award_of, declaration, figure, policy_with
from test_vouchers import PAPERS, RUN_AT, World

from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.errors import Invalid
from rewards.declarations import declare, review
from rewards.inputs import Inputs, OtherSupport, OutboundUsage, PriorAward, Site
from rewards.outbound import KIND, assess_outbound
from rewards.store import assess, stored_inputs
from scheduler.seed import PoolSpec, seed_site
from scheduler.usage import record_adjustment

SITES = (Site(1, "ty-1", "Shuchu", "太原", "太原一号"), Site(2, "dt-1", "Other", "大同", "大同"))


def outbound_inputs(year: int = 2025, *, declared: str = "200000000.00",
                    metered: str = "100000000.00", **extra: object) -> Inputs:
    """Shuchu declared ``declared`` yuan of out-of-province contracts for ``year``; the
    scheduler metered ``metered`` yuan of out-of-province usage at its sites in 12 records.
    Other has a site and nothing else."""
    found = (declaration(1, "Shuchu", None, KIND, amount=declared, year=year,
                         excludes_rack_leasing=True),)
    usage = (OutboundUsage("Shuchu", Decimal(metered), 12),)
    return Inputs(year, SITES, (), found, outbound=usage, **extra)  # type: ignore[arg-type]


def test_10_the_threshold_itself_counts_and_half_metered_is_enough() -> None:
    # Declared 200,000,000.00: 2亿元及以上 includes the figure itself.
    # Unmetered 200,000,000.00 − 100,000,000.00 = 100,000,000.00, not more than
    # 0.5 × 200,000,000.00 = 100,000,000.00: eligible.
    # Award = 200,000,000.00 × 0.02 = 4,000,000.00, below the 10,000,000.00 cap.
    awards = assess_outbound(outbound_inputs(), POLICY)
    shuchu = award_of(awards, "Shuchu")
    assert shuchu.amount == Decimal("4000000.00") and shuchu.eligible
    assert shuchu.reasons == ("eligible",)
    metered = figure(shuchu, "metered out-of-province usage")
    assert (metered.value, metered.source) == ("100000000.00", "measured")
    assert "12 usage records" in metered.detail and "2025-01-01 .. 2025-12-31" in metered.detail
    contracts = figure(shuchu, "out-of-province contracts, rack leasing excluded")
    assert (contracts.value, contracts.source) == ("200000000.00", "declared")
    assert "declaration 1" in contracts.detail
    unmetered = figure(shuchu, "unmetered")
    assert unmetered.value == "100000000.00" and "assumption" in unmetered.detail
    assert Decimal(figure(shuchu, "before the cap").value) == 4_000_000
    cap = figure(shuchu, "cap left")
    assert (cap.value, cap.source) == ("10000000.00", "policy")
    assert shuchu.assumptions == ("10.max_unmetered_share",)
    # Other has a site and no declaration: assessed, and nothing.
    other = award_of(awards, "Other")
    assert other.amount == 0 and not other.eligible
    assert other.reasons == ("not eligible: no accepted out_of_province_contracts declaration"
                             " for 2025",)
    assert figure(other, "metered out-of-province usage").value == "0.00"


def test_10_a_fen_below_the_threshold_earns_nothing() -> None:
    # 199,999,999.99 < 200,000,000.00; the metered check passes (150,000,000 metered).
    below = award_of(assess_outbound(outbound_inputs(declared="199999999.99",
                                                     metered="150000000.00"), POLICY), "Shuchu")
    assert below.amount == 0 and not below.eligible
    assert below.reasons == ("not eligible: declared out-of-province contracts 199999999.99,"
                             " below 200000000.00",)


def test_10_the_cap_is_per_enterprise_and_year() -> None:
    # 600,000,000.00 × 0.02 = 12,000,000.00 -> capped at 10,000,000.00; unmetered
    # 600,000,000 − 450,000,000 = 150,000,000 ≤ 300,000,000.
    # 2025's paid 10,000,000.00 leaves 2026's cap whole: the cap is per year.
    paid = PriorAward(101, "10", 2025, "Shuchu", None, Decimal("10000000.00"), "paid")
    shuchu = award_of(assess_outbound(outbound_inputs(2026, declared="600000000.00",
                                                      metered="450000000.00",
                                                      prior_awards=(paid,)), POLICY), "Shuchu")
    assert shuchu.amount == Decimal("10000000.00") and shuchu.reasons == ("capped",)
    assert Decimal(figure(shuchu, "before the cap").value) == 12_000_000
    assert figure(shuchu, "cap left").detail == "10000000.00 yuan per enterprise and year"


def test_10_too_little_metered_usage_names_both_figures() -> None:
    # Unmetered 300,000,000.00 − 149,999,999.99 = 150,000,000.01, more than
    # 0.5 × 300,000,000.00 = 150,000,000.00 by a fen: not eligible.
    inputs = outbound_inputs(declared="300000000.00", metered="149999999.99")
    short = award_of(assess_outbound(inputs, POLICY), "Shuchu")
    assert short.amount == 0 and not short.eligible
    assert short.reasons == ("not eligible: declared 300000000.00, metered 149999999.99; the"
                             " unmetered 150000000.01 is more than 0.5 of the declared amount"
                             " (150000000.000)",)
    assert figure(short, "metered out-of-province usage").value == "149999999.99"
    assert figure(short, "out-of-province contracts, rack leasing excluded").value == (
        "300000000.00")
    # The share is the bureau's: at 0.6, 0.6 × 300,000,000 = 180,000,000 may go unmetered,
    # and the award is assessed on the declared amount: 300,000,000.00 × 0.02 = 6,000,000.00.
    lenient = policy_with(('[measures.10.max_unmetered_share]\nvalue = "0.5"',
                           '[measures.10.max_unmetered_share]\nvalue = "0.6"'))
    assert award_of(assess_outbound(inputs, lenient), "Shuchu").amount == Decimal("6000000.00")
    # Metered usage above the declared amount does not raise the award: 4,000,000.00 still.
    more = award_of(assess_outbound(outbound_inputs(metered="250000000.00"), POLICY), "Shuchu")
    assert more.amount == Decimal("4000000.00")
    assert figure(more, "unmetered").value == "-50000000.00"


def test_10_only_the_years_newest_declaration_counts() -> None:
    inputs = outbound_inputs()
    # A declaration for 2024 is none for 2025, whatever its amount.
    other_year = replace(inputs, declarations=(declaration(
        1, "Shuchu", None, KIND, amount="900000000.00", year=2024, excludes_rack_leasing=True),))
    none = award_of(assess_outbound(other_year, POLICY), "Shuchu")
    assert none.amount == 0
    assert none.reasons == ("not eligible: no accepted out_of_province_contracts declaration"
                            " for 2025",)
    # Two for 2025: the later (3) supersedes: 210,000,000.00 × 0.02 = 4,200,000.00
    # (unmetered 210,000,000 − 100,000,000 = 110,000,000 > 105,000,000 would refuse it, so
    # 105,000,000.00 metered: unmetered 105,000,000.00 = 0.5 × 210,000,000).
    two = replace(inputs, outbound=(OutboundUsage("Shuchu", Decimal("105000000.00"), 3),),
                  declarations=tuple(declaration(n, "Shuchu", None, KIND, amount=amount,
                                                 year=2025, excludes_rack_leasing=True)
                                     for n, amount in ((2, "250000000.00"),
                                                       (3, "210000000.00"))))
    latest = award_of(assess_outbound(two, POLICY), "Shuchu")
    assert latest.amount == Decimal("4200000.00")
    assert "declaration 3" in figure(latest, "out-of-province contracts, rack leasing"
                                             " excluded").detail


def test_10_the_other_support_register_refuses_and_the_policy_ends() -> None:
    support = OtherSupport(7, "Shuchu", "10", "省级算力输出专项", Decimal("1000000.00"),
                           date(2025, 6, 1))
    elsewhere = OtherSupport(8, "Shuchu", "2", "省级云服务专项", Decimal("1.00"),
                             date(2025, 6, 1))
    refused = award_of(assess_outbound(outbound_inputs(other_support=(support, elsewhere)),
                                       POLICY), "Shuchu")
    assert refused.amount == 0 and not refused.eligible
    assert refused.reasons == ("refused: Shuchu was already supported for measure 10 by"
                               " 省级算力输出专项 (1000000.00 yuan, 2025-06-01); other-support"
                               " register entry 7",)
    # An entry for another measure refuses nothing: 4,000,000.00.
    assert award_of(assess_outbound(outbound_inputs(other_support=(elsewhere,)), POLICY),
                    "Shuchu").amount == Decimal("4000000.00")
    assert assess_outbound(outbound_inputs(2027), POLICY) == []  # after 2026-12-31


def test_10_the_usage_survives_the_frozen_copy() -> None:
    inputs = outbound_inputs()
    assert Inputs.from_json(inputs.as_json()) == inputs
    assert Inputs.from_json(inputs.as_json()).sha256() == inputs.sha256()


# --- the store: usage the scheduler metered, and an accepted declaration ---------------------

def test_10_on_the_store_counts_out_of_province_tenants_at_in_province_sites(conn, db) -> None:
    """Taihang Compute's sites ty-1 (World: 8.00 yuan an accelerator-hour) and ty-9, whose
    price stands for a year of contracts in a few runs: 10,000,000.00 an accelerator-hour.
    云冈大学 (tenant lab-b) is registered outside the province, 清源智能 (lab-a) inside."""
    world = World(conn, db)
    site_id, agent = seed_site(conn, db.partitions, name="ty-9", city="太原",
                               enterprise="Taihang Compute", now=RUN_AT - timedelta(hours=1),
                               pools=[PoolSpec("H100", 8, Decimal("10000000.00"))])
    world.sites["ty-9"] = SignedBy(agent, site_id)
    # Counted for 2026 (ended in 2026, Beijing):
    big = world.run("lab-b", "ty-9", None, hours=3)  # 4 × 3 h × 10,000,000 = 120,000,000.00
    world.run("lab-b", "ty-1", None, hours=2.5)  # 4 × 2.5 h × 8.00 = 80.00
    original = conn.execute("SELECT id FROM usage_records WHERE job_id = %s", (big,)
                            ).fetchone()[0]
    record_adjustment(conn, original, reason="price corrected",
                      cost_yuan=Decimal("-10000000.00"))
    # Not counted: an in-province applicant's tenant, a tenant acting for no applicant, an
    # out-of-province site (Yanshan's bj-1), and a run that ended in 2025: 2025-12-31 01:00 UTC
    # + 1 h is 10:00 on 31 December in Beijing (4 × 1 h × 10,000,000 = 40,000,000.00).
    world.run("lab-a", "ty-9", None, hours=1)
    world.run("walk-in", "ty-9", None, hours=1)
    world.run("lab-b", "bj-1", None, hours=1)
    world.run("lab-b", "ty-9", None, hours=1, at=datetime(2025, 12, 31, 1, tzinfo=UTC))

    # A declaration states that it excludes rack leasing, or is refused where it enters.
    value = {"amount": "220000000.00", "year": 2026}
    with pytest.raises(Invalid) as missing:
        declare(conn, world.maker, kind=KIND, data_centre=None, value=value, evidence=PAPERS,
                enterprise_id=world.taihang)
    assert missing.value.field == "value.excludes_rack_leasing"
    number = declare(conn, world.maker, kind=KIND, data_centre=None,
                     value={**value, "excludes_rack_leasing": True}, evidence=PAPERS,
                     enterprise_id=world.taihang)
    review(conn, world.checker, number, accept=True, reason="合同核对无误")

    [done] = assess(conn, 2026, ["10"], by_key=None)
    # Metered: 120,000,000.00 + 80.00 − 10,000,000.00 = 110,000,080.00 in 3 records.
    # Unmetered 220,000,000.00 − 110,000,080.00 = 109,999,920.00 ≤ 0.5 × 220,000,000 =
    # 110,000,000: eligible; 220,000,000.00 × 0.02 = 4,400,000.00.
    assert done.total == Decimal("4400000.00")
    details = {r[0]: r[1] for r in conn.execute(
        "SELECT e.name, a.detail FROM reward_awards a JOIN enterprises e"
        " ON e.id = a.enterprise_id WHERE a.assessment_id = %s", (done.id,))}
    assert set(details) == {"Taihang Compute", "Fenhe Cloud"}  # Yanshan has no site in Shanxi
    taihang = details["Taihang Compute"]
    assert (taihang["amount"], taihang["reasons"]) == ("4400000.00", ["eligible"])
    figures = {f["name"]: f for f in taihang["figures"]}
    assert figures["metered out-of-province usage"]["value"] == "110000080.00"
    assert "3 usage records" in figures["metered out-of-province usage"]["detail"]
    assert figures["out-of-province contracts, rack leasing excluded"]["source"] == "declared"
    assert figures["unmetered"]["value"] == "109999920.00"
    assert details["Fenhe Cloud"]["reasons"] == ["not eligible: no accepted"
                                                 " out_of_province_contracts declaration for"
                                                 " 2026"]
    inputs, _ = stored_inputs(conn, done.id)  # the frozen copy verifies against its digest
    assert inputs.outbound == (OutboundUsage("Taihang Compute", Decimal("110000080.00"), 3),)

    # 2025 sees its own run only (from 1 January, Beijing), and no declaration for 2025.
    [earlier] = assess(conn, 2025, ["10"], by_key=None)
    assert earlier.total == 0
    inputs, _ = stored_inputs(conn, earlier.id)
    assert inputs.outbound == (OutboundUsage("Taihang Compute", Decimal("40000000.00"), 1),)
