"""Measures 3, 6, 1 and 2 worked by hand: each scenario's arithmetic is written beside its
asserts; at the end, measures 3 and 6 assessed on the store from signed agent reports.

The calculations are pure functions of frozen inputs and a policy file (no database); the
store tests check that ``read_inputs`` hands them what the agents reported: a site's largest
terminals-served reading inside the year's window, and its inventory at the window's end.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from collectors_kit import bearer, enrol, make_app, make_org
from fastapi.testclient import TestClient

from collectors.rollup import run_rollups
from jinsuan.contract.wire import AcceleratorInfo, Batch, Inventory, Series
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.sites import create_site
from rewards.cloud import assess_cloud
from rewards.domestic import assess_domestic
from rewards.edge import assess_edge
from rewards.inputs import (
    Declaration,
    Inputs,
    OtherSupport,
    PriorAward,
    Site,
    SiteAccelerators,
    SiteHour,
    TerminalsServed,
)
from rewards.policy import POLICIES, load, parse
from rewards.scale import assess_scale
from rewards.store import assess, stored_inputs

POLICY_FILE = POLICIES / "jinzhengbanfa-2024-35-v1.toml"
POLICY = load(POLICY_FILE)
H = timedelta(hours=1)
SH = timedelta(hours=8)  # Asia/Shanghai is UTC+8, all year
PAPER = (("证明材料.pdf", "cd" * 32),)


def beijing(*args: int) -> datetime:
    """A Beijing wall-clock time as the UTC instant the store keeps."""
    return datetime(*args, tzinfo=UTC) - SH


def hours(site: int, first: datetime, count: int, *, pflops: str = "0", estimated: str = "0",
          racks: int = 0) -> list[SiteHour]:
    return [SiteHour(site_id=site, hour=first + i * H, fp16_pflops=Decimal(pflops),
                     fp16_pflops_estimated=Decimal(estimated), coverage_accelerators=Decimal(1),
                     it_kwh=None, facility_kwh=None, coverage_it=Decimal(0),
                     coverage_facility=Decimal(0), racks=racks, quality=())
            for i in range(count)]


def declaration(number: int, enterprise: str, centre: str | None, kind: str,
                **value: object) -> Declaration:
    return Declaration(number, enterprise, centre, kind, value, PAPER)


def award_of(awards, enterprise, centre=None):
    return next(a for a in awards if a.enterprise == enterprise and a.data_centre == centre)


def figure(award, name):
    return next(f for f in award.figures if f.name == name)


def policy_with(*changes: tuple[str, str]):
    """The policy file with passages changed (the bureau's choice of a parameter)."""
    text = POLICY_FILE.read_text(encoding="utf-8")
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return parse(text.encode(), Path("changed.toml"))


# --- 3: edge computing centre ------------------------------------------------------------------

EDGE = (Site(1, "ty-e1", "Bian", "太原", "太原边缘"), Site(2, "ty-e2", "Bian", "太原", "太原边缘"),
        Site(3, "dt-e", "Bian", "大同", "大同边缘"), Site(4, "lv", "Gamma", "吕梁", "吕梁中心"))


def edge_inputs(year: int = 2025, *, ty_racks: int = 30, dt_terminals: int = 299_999,
                **extra: object) -> Inputs:
    at = beijing(year, 11, 30, 12)
    rows = (hours(1, beijing(year, 3, 1), 10, racks=ty_racks) + hours(2, beijing(year, 3, 1), 10,
                                                                      racks=20)
            + hours(3, beijing(year, 3, 1), 10, racks=10) + hours(4, beijing(year, 3, 1), 10,
                                                                 racks=500))
    served = (TerminalsServed(1, 200_000, at, 96), TerminalsServed(2, 100_000, at, 96),
              TerminalsServed(3, dt_terminals, at, 96))
    return Inputs(year, EDGE, tuple(rows), terminals=served, **extra)  # type: ignore[arg-type]


def test_3_the_threshold_itself_counts_and_sites_of_a_centre_add_up() -> None:
    # 太原边缘 = ty-e1 + ty-e2: 200,000 + 100,000 = 300,000 terminals, 超过30万(含): eligible.
    # Racks: 30 + 20 = 50 in each hour -> 50 × 3,000 = 150,000.00 (below the 300,000 cap).
    awards = assess_edge(edge_inputs(), POLICY)
    taiyuan = award_of(awards, "Bian", "太原边缘")
    assert taiyuan.amount == Decimal("150000.00") and taiyuan.reasons == ("eligible",)
    assert figure(taiyuan, "terminals served").value == "300000"
    assert figure(taiyuan, "racks").value == "50"
    assert figure(taiyuan, "site ty-e1").source == "measured"
    assert figure(taiyuan, "cap left").value == "300000.00"
    assert set(taiyuan.assumptions) == {"3.per_rack", "3.cap"}
    # 大同边缘: 299,999, one short.
    datong = award_of(awards, "Bian", "大同边缘")
    assert datong.amount == 0 and not datong.eligible
    assert datong.reasons == ("not eligible: 299999 terminals served, below 300000",)
    # 吕梁中心 never reported the gauge: not an edge computing centre, whatever its 500 racks.
    gamma = award_of(awards, "Gamma", "吕梁中心")
    assert gamma.amount == 0 and "not an edge computing centre" in gamma.reasons[0]


def test_3_the_cap_is_per_centre() -> None:
    # 太原边缘: 100 + 20 = 120 racks × 3,000 = 360,000 -> capped at 300,000.00.
    # 大同边缘 at 300,000 terminals: 10 racks × 3,000 = 30,000.00, its own cap untouched:
    # Bian gets 330,000.00 in all, more than one cap, because the cap is per centre.
    awards = assess_edge(edge_inputs(ty_racks=100, dt_terminals=300_000), POLICY)
    taiyuan = award_of(awards, "Bian", "太原边缘")
    assert taiyuan.amount == Decimal("300000.00") and taiyuan.reasons == ("capped",)
    assert figure(taiyuan, "before the cap").value == "360000.00"
    assert award_of(awards, "Bian", "大同边缘").amount == Decimal("30000.00")
    # Were the cap per enterprise, 大同边缘 (first by name) would take 30,000.00 and leave
    # 270,000.00 to 太原边缘.
    shared = policy_with(('per = "data-centre"\nassumption = true\nnote = "总额最高30万元',
                          'per = "enterprise"\nassumption = true\nnote = "总额最高30万元'))
    awards = assess_edge(edge_inputs(ty_racks=100, dt_terminals=300_000), shared)
    assert award_of(awards, "Bian", "大同边缘").amount == Decimal("30000.00")
    taiyuan = award_of(awards, "Bian", "太原边缘")
    assert taiyuan.amount == Decimal("270000.00") and taiyuan.reasons == ("capped",)
    assert "30000.00 of it awarded by this assessment" in figure(taiyuan, "cap left").detail


def test_3_pays_a_centre_once_and_respects_the_other_support_register() -> None:
    paid = PriorAward(31, "3", 2025, "Bian", "太原边缘", Decimal("150000.00"), "paid")
    awards = assess_edge(edge_inputs(2026, dt_terminals=300_000, prior_awards=(paid,)), POLICY)
    taiyuan = award_of(awards, "Bian", "太原边缘")
    assert taiyuan.amount == 0
    assert taiyuan.reasons == ("not eligible: already awarded for 2025 (award 31, paid); measure"
                               " 3 pays a centre once",)
    # the other centre was never paid: 10 racks × 3,000
    assert award_of(awards, "Bian", "大同边缘").amount == Decimal("30000.00")
    support = OtherSupport(4, "Bian", "3", "省级边缘计算专项", Decimal("50000.00"),
                           date(2025, 5, 1))
    refused = award_of(assess_edge(edge_inputs(other_support=(support,)), POLICY), "Bian",
                       "太原边缘")
    assert refused.amount == 0 and "other-support register entry 4" in refused.reasons[0]


def test_3_a_reading_outside_the_window_is_not_taken() -> None:
    # 2024 begins on 1 July: a reading of 30 June (Beijing) is outside the window.
    inputs = edge_inputs(2024)
    early = replace(inputs, terminals=(TerminalsServed(1, 400_000, beijing(2024, 6, 30, 23), 1),),
                    hours=tuple(hours(1, beijing(2024, 7, 1), 5, racks=30)))
    taiyuan = award_of(assess_edge(early, POLICY), "Bian", "太原边缘")
    assert figure(taiyuan, "site ty-e1").value == "none"
    assert taiyuan.amount == 0 and "not an edge computing centre" in taiyuan.reasons[0]


# --- 6: domestic (信创) data centre ------------------------------------------------------------

XIN = (Site(1, "jz-1", "Xin", "晋中", "晋中信创"), Site(2, "jz-2", "Xin", "晋中", "晋中信创"),
       Site(3, "yq", "Xin", "阳泉", "阳泉二号"))


def xin_inputs(year: int = 2025, *, other: str = "0.92", **extra: object) -> Inputs:
    at = beijing(year, 12, 31, 23, 50)
    inventory = (
        # 晋中信创: jz-1 80 Ascend 910A at 256 and one H100 at 989.4; jz-2 19 domestic parts on
        # estimated peaks of 100 TFLOPS each.
        SiteAccelerators(1, False, 1, Decimal("989.4"), Decimal(0), 0, at),
        SiteAccelerators(1, True, 80, Decimal("20480"), Decimal(0), 0, at),
        SiteAccelerators(2, True, 19, Decimal(0), Decimal("1900"), 0, at),
        # 阳泉二号: 90 Ascend 910A (23,040 TFLOPS) and 10 H100 (9,894 TFLOPS).
        SiteAccelerators(3, False, 10, Decimal("9894.0"), Decimal(0), 0, at),
        SiteAccelerators(3, True, 90, Decimal("23040"), Decimal(0), 0, at),
    )
    declarations = (
        declaration(1, "Xin", "晋中信创", "commissioning", date="2025-04-01", retrofit=True),
        declaration(2, "Xin", "阳泉二号", "commissioning", date="2024-09-01"),
        declaration(3, "Xin", "晋中信创", "domestic_share_other", share=other),
        declaration(4, "Xin", "阳泉二号", "domestic_share_other", share="0.95"),
    )
    return Inputs(year, XIN, (), declarations, accelerators=inventory,
                  **extra)  # type: ignore[arg-type]


def test_6_both_accelerator_shares_and_the_declared_share_must_reach_90_percent() -> None:
    # 晋中信创: by count (80 + 19) / 100 = 0.99; by capacity (20,480 + 1,900) / (20,480 + 1,900
    # + 989.4) = 22,380 / 23,369.4 = 0.957662...; declared 0.92; rebuilt 2025-04-01 (a
    # retrofit counts: 新建、改建) -> the one-time reward, 5,000,000.00.
    awards = assess_domestic(xin_inputs(), POLICY)
    jinzhong = award_of(awards, "Xin", "晋中信创")
    assert jinzhong.amount == Decimal("5000000.00") and jinzhong.reasons == ("eligible",)
    assert figure(jinzhong, "domestic accelerators by count").value == "0.9900"
    assert figure(jinzhong, "domestic accelerators by FP16 capacity").value == "0.9576"
    assert "1900 TFLOPS of it on estimated peaks" in figure(
        jinzhong, "domestic accelerators by FP16 capacity").detail
    assert figure(jinzhong, "other basic software and hardware domestic").source == "declared"
    assert figure(jinzhong, "retrofitted on").value == "2025-04-01"
    assert figure(jinzhong, "reward").source == "assumption"
    assert set(jinzhong.assumptions) == {"6.accelerator_share", "6.new_since", "6.reward"}
    # 阳泉二号: by count 90 / 100 = 0.90 (以上: reaches it); by capacity 23,040 / 32,934 =
    # 0.699581... -> not eligible while the rule asks for both shares.
    yangquan = award_of(awards, "Xin", "阳泉二号")
    assert yangquan.amount == 0
    assert yangquan.reasons == ("not eligible: domestic accelerators by capacity 0.6995, below"
                                " 0.90",)


def test_6_the_bureau_may_count_accelerators_by_number_and_the_cap_may_be_shared() -> None:
    # By count only, 阳泉二号's 0.90 reaches the threshold: 5,000,000.00.
    count = ('[measures.6.accelerator_share]\nvalue = "both"',
             '[measures.6.accelerator_share]\nvalue = "count"')
    by_count = policy_with(count)
    assert award_of(assess_domestic(xin_inputs(), by_count), "Xin", "阳泉二号").amount == Decimal(
        "5000000.00")
    # With the cap per enterprise, 晋中信创 (first by name) takes all 5,000,000 of it and
    # 阳泉二号 gets 0.00, capped.
    shared = policy_with(count, ('per = "data-centre"\nnote = "最高不超过500万元',
                                 'per = "enterprise"\nnote = "最高不超过500万元'))
    awards = assess_domestic(xin_inputs(), shared)
    assert award_of(awards, "Xin", "晋中信创").amount == Decimal("5000000.00")
    yangquan = award_of(awards, "Xin", "阳泉二号")
    assert yangquan.amount == 0 and yangquan.reasons == ("capped",)
    assert figure(yangquan, "cap left").value == "0.00"


def test_6_a_declaration_missing_or_below_the_threshold() -> None:
    low = award_of(assess_domestic(xin_inputs(other="0.85"), POLICY), "Xin", "晋中信创")
    assert low.amount == 0
    assert low.reasons == ("not eligible: declared domestic share of the other basic software"
                           " and hardware 0.85, below 0.90",)
    inputs = xin_inputs()
    missing = replace(inputs, declarations=inputs.declarations[:2])
    none = award_of(assess_domestic(missing, POLICY), "Xin", "晋中信创")
    assert none.reasons == ("not eligible: no accepted domestic_share_other declaration",)
    old = replace(inputs, declarations=(
        declaration(1, "Xin", "晋中信创", "commissioning", date="2019-01-01"),
        *inputs.declarations[2:]))
    assert award_of(assess_domestic(old, POLICY), "Xin", "晋中信创").reasons == (
        "not eligible: commissioned on 2019-01-01, not between 2024-01-01 (assumed start of"
        " 'new') and 2025-12-31",)


def test_6_pays_a_centre_once_and_counts_no_inventory_outside_the_window() -> None:
    paid = PriorAward(61, "6", 2025, "Xin", "晋中信创", Decimal("5000000.00"), "approved")
    again = award_of(assess_domestic(xin_inputs(2026, prior_awards=(paid,)), POLICY), "Xin",
                     "晋中信创")
    assert again.amount == 0 and "already awarded for 2025 (award 61, approved)" in (
        again.reasons[0])
    # An inventory last written in 2024 is no inventory of 2025.
    inputs = xin_inputs()
    stale = replace(inputs, accelerators=tuple(replace(a, as_of=beijing(2024, 12, 31, 23))
                                               for a in inputs.accelerators))
    empty = award_of(assess_domestic(stale, POLICY), "Xin", "晋中信创")
    assert figure(empty, "domestic accelerators by count").value == "none"
    assert empty.reasons[:2] == (
        "not eligible: no accelerator share by count (no accelerators in the inventory)",
        "not eligible: no accelerator share by capacity (no accelerators with an FP16 peak in"
        " the inventory)")


# --- 1: intelligent-computing centre of 100 PFlops -------------------------------------------

ZHI = (Site(1, "zs-1", "Zhisuan", "太原", "太原智算"),
       Site(2, "zs-2", "Zhisuan", "太原", "太原智算"))


def zhi_inputs(year: int = 2025, *, at_scale: int = 720, estimated: str = "10",
               investment: str = "400000000.00", retrofit: bool = False,
               **extra: object) -> Inputs:
    first = beijing(year, 3, 1)
    # zs-1 80 PFlops measured; zs-2 30 PFlops of which `estimated` on estimated peaks.
    rows = hours(1, first, at_scale, pflops="80") + hours(2, first, at_scale, pflops="30",
                                                          estimated=estimated)
    declarations = (
        declaration(1, "Zhisuan", "太原智算", "commissioning", date="2025-02-01",
                    retrofit=retrofit),
        declaration(2, "Zhisuan", "太原智算", "centre_investment", amount=investment),
        declaration(3, "Zhisuan", "太原智算", "loan", amount="100000000.00", rate="0.0435",
                    start="2025-03-15", months=36),
        declaration(4, "Zhisuan", "太原智算", "loan", amount="10000000.00", rate="0.015",
                    start="2025-11-30", months=12),
    )
    return Inputs(year, ZHI, tuple(rows), declarations, **extra)  # type: ignore[arg-type]


def test_1_capped_investment_part_plus_interest_on_two_loans() -> None:
    # Each of 720 hours: 80 + (30 − 10 estimated) = 100 measured PFlops, 以上: at scale.
    # Investment part: 400,000,000 × 0.15 = 60,000,000 -> capped at 50,000,000.
    # Loan 3: 4.35% subsidised at 2%; months start 15 Mar .. 15 Dec 2025 = 10 in the window:
    #   100,000,000 × 0.02 × 10 / 12 = 1,666,666.666...
    # Loan 4: 1.5% (below 2%); months start 30 Nov and 30 Dec 2025 = 2:
    #   10,000,000 × 0.015 × 2 / 12 = 25,000
    # Award = 50,000,000 + 1,666,666.666... + 25,000 = 51,691,666.666... -> 51,691,666.67
    centre = award_of(assess_scale(zhi_inputs(), POLICY), "Zhisuan", "太原智算")
    assert centre.amount == Decimal("51691666.67") and centre.reasons == ("capped",)
    assert figure(centre, "hours at scale").value == "720"
    assert figure(centre, "highest hour, measured PFlops").value == "100"
    assert figure(centre, "highest hour, PFlops on estimated peaks").value == "10"
    assert Decimal(figure(centre, "investment part before the cap").value) == 60_000_000
    assert figure(centre, "investment part").value == "50000000.00"
    assert figure(centre, "investment declared").source == "declared"
    assert "× 10 ÷ 12" in figure(centre, "loan 3").detail
    assert Decimal(figure(centre, "loan 4").value) == 25_000
    assert set(centre.assumptions) == {"1.min_hours", "1.new_since", "1.interest_rate"}


def test_1_below_the_cap_and_without_loans() -> None:
    # 100,000,000 × 0.15 = 15,000,000.00, no loan declared.
    inputs = zhi_inputs(investment="100000000.00")
    inputs = replace(inputs, declarations=inputs.declarations[:2])
    centre = award_of(assess_scale(inputs, POLICY), "Zhisuan", "太原智算")
    assert centre.amount == Decimal("15000000.00") and centre.reasons == ("eligible",)
    assert Decimal(figure(centre, "interest part").value) == 0


def test_1_the_investment_part_is_paid_once_the_interest_each_year() -> None:
    # 2026, the 2025 award paid. 720 hours at scale again in 2026.
    # Loan 3 (months counted from 1): months 11..22 start 15 Jan .. 15 Dec 2026 = 12:
    #   100,000,000 × 0.02 × 12/12 = 2,000,000 (months 23 and 24 start in 2027; 25..36 are
    #   past the 24-month limit)
    # Loan 4: months 3..12 start 30 Jan, 28 Feb, 30 Mar .. 30 Oct 2026 = 10:
    #   10,000,000 × 0.015 × 10 / 12 = 125,000
    # Award = 2,125,000.00, no investment part.
    paid = PriorAward(21, "1", 2025, "Zhisuan", "太原智算", Decimal("51691666.67"), "paid")
    centre = award_of(assess_scale(zhi_inputs(2026, prior_awards=(paid,)), POLICY), "Zhisuan",
                      "太原智算")
    assert centre.amount == Decimal("2125000.00")
    assert centre.reasons == ("eligible: investment part already awarded for 2025 (award 21,"
                              " paid); the interest part only",)
    assert "12 of the first 24 months" in figure(centre, "loan 3").detail
    assert "10 of the first 12 months" in figure(centre, "loan 4").detail
    assert assess_scale(zhi_inputs(2027), POLICY) == []  # 2027 is outside the policy


def test_1_not_at_scale_not_new_or_not_declared() -> None:
    # 719 hours at 100 PFlops: one short of the assumed 720.
    short = award_of(assess_scale(zhi_inputs(at_scale=719), POLICY), "Zhisuan", "太原智算")
    assert short.amount == 0
    assert short.reasons == ("not eligible: 719 hours at 100 measured PFlops or more, fewer"
                             " than 720",)
    # 110 PFlops connected, 10.5 of them on estimated peaks: 99.5 measured, never at scale.
    estimated = award_of(assess_scale(zhi_inputs(estimated="10.5"), POLICY), "Zhisuan",
                         "太原智算")
    assert figure(estimated, "hours at scale").value == "0"
    assert figure(estimated, "highest hour, measured PFlops").value == "99.5"
    retrofit = award_of(assess_scale(zhi_inputs(retrofit=True), POLICY), "Zhisuan", "太原智算")
    assert retrofit.reasons == ("not eligible: retrofitted on 2025-02-01; the measure is for new"
                                " builds",)
    inputs = zhi_inputs()
    undeclared = replace(inputs, declarations=(inputs.declarations[0],))
    assert award_of(assess_scale(undeclared, POLICY), "Zhisuan", "太原智算").reasons == (
        "not eligible: no accepted centre_investment declaration",)


# --- 2: cloud-service revenue ---------------------------------------------------------------

YUN = (Site(1, "a1", "Yun", "太原", "A"), Site(2, "a2", "Yun", "太原", "A"),
       Site(3, "b1", "Yun", "大同", "B"), Site(4, "z", "Zhi", "晋中", "Z"))


def yun_inputs(year: int = 2025, *, share: str = "0.15", **extra: object) -> Inputs:
    first = beijing(year, 4, 1)
    rows = (hours(1, first, 10, racks=100) + hours(2, first, 10, racks=50)
            + hours(1, first + 10 * H, 1, racks=120) + hours(3, first, 5, racks=30)
            + hours(4, first, 5, racks=3500))
    declarations = (declaration(1, "Yun", None, "cloud_revenue_share", share=share),
                    declaration(2, "Zhi", None, "cloud_revenue_share", share="0.40"))
    return Inputs(year, YUN, tuple(rows), declarations, **extra)  # type: ignore[arg-type]


def test_2_racks_summed_over_centres_and_the_threshold_itself_counts() -> None:
    # Yun: centre A has 100 + 50 = 150 racks together for 10 hours (120 alone in the 11th):
    # 150; centre B 30. 150 + 30 = 180 racks × 1,000 = 180,000.00; 15%以上 includes 0.15.
    awards = assess_cloud(yun_inputs(), POLICY)
    yun = award_of(awards, "Yun")
    assert yun.amount == Decimal("180000.00") and yun.reasons == ("eligible",)
    assert figure(yun, "data centre A").value == "150"
    assert figure(yun, "racks").value == "180"
    assert figure(yun, "cloud-service revenue share").source == "declared"
    assert yun.assumptions == ("2.per_rack",)
    # Zhi: 3,500 racks × 1,000 = 3,500,000 -> capped at 3,000,000.00.
    zhi = award_of(awards, "Zhi")
    assert zhi.amount == Decimal("3000000.00") and zhi.reasons == ("capped",)


def test_2_a_share_below_or_undeclared_and_paid_once() -> None:
    low = award_of(assess_cloud(yun_inputs(share="0.1499"), POLICY), "Yun")
    assert low.amount == 0 and low.reasons == ("not eligible: declared cloud-service revenue"
                                               " share 0.1499, below 0.15",)
    inputs = yun_inputs()
    undeclared = award_of(assess_cloud(replace(inputs, declarations=()), POLICY), "Zhi")
    assert undeclared.reasons == ("not eligible: no accepted cloud_revenue_share declaration",)
    paid = PriorAward(41, "2", 2025, "Yun", None, Decimal("180000.00"), "paid")
    awards = assess_cloud(yun_inputs(2026, prior_awards=(paid,)), POLICY)
    assert award_of(awards, "Yun").reasons == ("not eligible: already awarded for 2025 (award"
                                               " 41, paid); measure 2 pays an enterprise once",)
    assert award_of(awards, "Zhi").amount == Decimal("3000000.00")


def test_the_new_inputs_survive_the_frozen_copy() -> None:
    inputs = replace(edge_inputs(), accelerators=xin_inputs().accelerators)
    assert Inputs.from_json(inputs.as_json()) == inputs
    assert Inputs.from_json(inputs.as_json()).sha256() == inputs.sha256()


# --- the store: measures 3 and 6 from signed agent reports ------------------------------------

def _post(client: TestClient, agent, series: list[Series], *, inventory: Inventory | None = None,
          created: datetime | None = None) -> None:
    agent.seq += 1
    batch = Batch(agent_id=agent.id, seq=agent.seq, created_at=created or datetime.now(UTC),
                  interval_s=60, inventory=inventory or Inventory(racks=["r01"]), series=series)
    reply = agent.post(client, batch)
    assert reply.status_code == 200, reply.text


@pytest.fixture
def platform(settings, db, conn):
    app, _ = make_app(settings, db)
    with TestClient(app) as client:
        bureau = create_key(conn, Role.BUREAU, label="finance")
        yield client, conn, bureau


def test_3_on_the_store_takes_the_years_largest_reading(platform, db, settings) -> None:
    client, conn, _ = platform
    year = (datetime.now(UTC) + SH).year
    edge = make_org(conn, "Bian", "bian-ty", "太原")
    agent = enrol(client, edge)
    # Three readings of the gauge in the last hours, and 40 racks: 310,000 is the largest.
    first = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    times = [int((first + i * timedelta(minutes=20)).timestamp() * 1000) for i in range(3)]
    _post(client, agent, [
        Series(metric="site_terminals_served", device="site",
               points=list(zip(times, (250_000.0, 310_000.0, 305_000.0), strict=True))),
        Series(metric="site_racks", device="site", points=[(t, 40.0) for t in times])])
    run_rollups(db, settings, holder="test")
    # Last year's count, 900,000, read a minute before midnight on 1 January (Beijing): the
    # gauge then resets, and that reading belongs to the year before.
    series = conn.execute("SELECT id FROM series WHERE metric = 'site_terminals_served'"
                          ).fetchone()[0]
    before = beijing(year, 1, 1) - timedelta(minutes=1)
    db.partitions.ensure(conn, [before.date()])
    conn.execute("INSERT INTO samples (ts, series_id, value) VALUES (%s, %s, 900000)",
                 (before, series))

    [done] = assess(conn, year, ["3"], by_key=None)
    # 310,000 ≥ 300,000: 40 racks × 3,000 = 120,000.00
    assert done.total == Decimal("120000.00")
    detail = conn.execute("SELECT detail FROM reward_awards WHERE assessment_id = %s",
                          (done.id,)).fetchone()[0]
    figures = {f["name"]: f for f in detail["figures"]}
    assert figures["terminals served"]["value"] == "310000"
    assert "largest of 3 site_terminals_served readings" in figures["site bian-ty"]["detail"]
    assert datetime.fromisoformat(figures["site bian-ty"]["detail"].rsplit("taken ", 1)[1]) == (
        first + timedelta(minutes=20))
    assert figures["racks"]["value"] == "40"
    inputs, _ = stored_inputs(conn, done.id)  # the frozen copy verifies against its digest
    assert [t.terminals for t in inputs.terminals] == [310_000]


def _accelerators(domestic: int, foreign: int, prefix: str = "") -> list[AcceleratorInfo]:
    return ([AcceleratorInfo(uuid=f"NPU-{prefix}{i:03d}", model="Huawei Ascend 910A",
                             vendor="Huawei", rack="r01") for i in range(domestic)]
            + [AcceleratorInfo(uuid=f"GPU-{prefix}{i:03d}", model="NVIDIA H100 SXM5 80GB",
                               vendor="NVIDIA", rack="r01") for i in range(foreign)])


def test_6_on_the_store_reads_the_inventory_at_the_windows_end(platform) -> None:
    client, conn, bureau = platform
    year = (datetime.now(UTC) + SH).year
    org = make_org(conn, "Xin", "xin-jz", "晋中")
    create_site(conn, enterprise="Xin", name="xin-jz-2", city="晋中", data_centre="xin-jz")
    agent = enrol(client, org)
    racks = Series(metric="site_racks", device="site",
                   points=[(int(datetime.now(UTC).timestamp() * 1000) - 60_000, 1.0)])
    # Three hours ago the site listed 99 Ascend 910A, one H100 and five H100 more; now the
    # five are gone. The inventory at the window's end is the one written last.
    _post(client, agent, [racks], created=datetime.now(UTC) - timedelta(hours=3),
          inventory=Inventory(racks=["r01"], accelerators=_accelerators(99, 1)
                              + _accelerators(0, 5, "old-")))
    _post(client, agent, [racks], inventory=Inventory(racks=["r01"],
                                                      accelerators=_accelerators(99, 1)))
    for kind, value in (("commissioning", {"date": f"{year}-02-01", "retrofit": True}),
                        ("domestic_share_other", {"share": "0.93"})):
        made = client.post("/v1/rewards/declarations", headers=bearer(org.operator_key), json={
            "kind": kind, "data_centre": "xin-jz", "value": value,
            "evidence": [{"name": "信创清单.pdf", "sha256": "ef" * 32}]})
        assert made.status_code == 201, made.text
        reviewed = client.post(f"/v1/rewards/declarations/{made.json()['id']}/review",
                               json={"accept": True, "reason": "核对无误"},
                               headers=bearer(bureau))
        assert reviewed.status_code == 200, reviewed.text

    [done] = assess(conn, year, ["6"], by_key=None)
    # By count 99 / 100 = 0.99; by capacity 99 × 256 = 25,344 / (25,344 + 989.4) =
    # 25,344 / 26,333.4 = 0.962428...; declared 0.93: the reward, 5,000,000.00.
    # (Had the five removed H100 counted: 99 / 105 = 0.9428 by count, 25,344 / 31,280.4 =
    # 0.8102 by capacity, and nothing.)
    assert done.total == Decimal("5000000.00")
    detail = conn.execute("SELECT detail FROM reward_awards WHERE assessment_id = %s",
                          (done.id,)).fetchone()[0]
    figures = {f["name"]: f for f in detail["figures"]}
    assert figures["domestic accelerators by count"]["value"] == "0.9900"
    assert figures["domestic accelerators by FP16 capacity"]["value"] == "0.9624"
    assert figures["site xin-jz"]["value"] == "99 of 100 domestic"
    assert figures["site xin-jz-2"]["value"] == "0 of 0 domestic"
    assert figures["other basic software and hardware domestic"]["source"] == "declared"
    inputs, _ = stored_inputs(conn, done.id)
    assert sorted((a.domestic, a.count) for a in inputs.accelerators) == [(False, 1), (True, 99)]
