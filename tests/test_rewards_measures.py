"""Measures 5b and 4 worked by hand: each scenario's arithmetic is written beside its asserts.

The calculations are pure functions of frozen inputs and a policy file, so these tests need no
database; tests/test_rewards_store.py runs them on the store and end to end from agents.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.access import assess_access
from rewards.inputs import Declaration, Inputs, OtherSupport, PriorAward, Site, SiteHour
from rewards.policy import POLICIES, PolicyError, load, load_all
from rewards.pue import assess_pue

POLICY = load(POLICIES / "jinzhengbanfa-2024-35-v1.toml")
H = timedelta(hours=1)
SH = timedelta(hours=8)  # Asia/Shanghai is UTC+8, all year


def beijing(*args: int) -> datetime:
    """A Beijing wall-clock time as the UTC instant the store keeps."""
    return datetime(*args, tzinfo=UTC) - SH


def hours(site: int, first: datetime, count: int, *, pflops: str = "0", estimated: str = "0",
          it: str | None = None, facility: str | None = None, coverage: str = "1",
          racks: int = 0) -> list[SiteHour]:
    return [SiteHour(site_id=site, hour=first + i * H, fp16_pflops=Decimal(pflops),
                     fp16_pflops_estimated=Decimal(estimated), coverage_accelerators=Decimal(1),
                     it_kwh=None if it is None else Decimal(it),
                     facility_kwh=None if facility is None else Decimal(facility),
                     coverage_it=Decimal(coverage), coverage_facility=Decimal(coverage),
                     racks=racks, quality=())
            for i in range(count)]


def award_of(awards, enterprise, centre=None):
    return next(a for a in awards if a.enterprise == enterprise and a.data_centre == centre)


def figure(award, name):
    return next(f for f in award.figures if f.name == name)


# --- 5b -------------------------------------------------------------------------------------

SITES = (Site(1, "ty-1", "Alpha", "太原", "ty-1"), Site(2, "dt-1", "Alpha", "大同", "dt-1"),
         Site(3, "big", "Beta", "吕梁", "big"), Site(4, "paper", "Gamma", "晋中", "paper"))


def test_5b_counts_measured_pflops_across_cities_and_leaves_estimates_out() -> None:
    # Alpha: 太原 100 h at 2.0 PFlops of which 0.5 on estimated peaks  -> 1.5 × 100 = 150
    #        大同  50 h at 1.0 PFlops, all measured                    -> 1.0 ×  50 =  50
    # PFlops-hours 200; 2025 has 8,760 hours; PFlops-years = 200 / 8760 = 0.0228310502...
    # award = 0.0228310502... × 20,000 = 456.621004... -> 456.62 yuan
    start = beijing(2025, 3, 1)
    inputs = Inputs(2025, SITES, tuple(hours(1, start, 100, pflops="2.0", estimated="0.5")
                                       + hours(2, start, 50, pflops="1.0")))
    alpha = award_of(assess_access(inputs, POLICY), "Alpha")
    assert alpha.amount == Decimal("456.62")
    assert figure(alpha, "PFlops-hours measured").value == "200.0"
    assert figure(alpha, "PFlops-hours on estimated peaks").value == "50.0"
    assert figure(alpha, "hours connected").value == "100"  # the 50 大同 hours overlap
    assert figure(alpha, "rate").source == "assumption"
    assert set(alpha.assumptions) == {"5b.rate", "5b.cap"}
    assert figure(alpha, "site dt-1").source == "measured"


def test_5b_declared_capacity_never_reported_earns_nothing() -> None:
    gamma = award_of(assess_access(Inputs(2025, SITES, ()), POLICY), "Gamma")
    assert gamma.amount == 0 and not gamma.eligible
    assert gamma.reasons == ("no compute connected and reporting in the window",)


def test_5b_cap_reached_and_not() -> None:
    # Beta: 30 PFlops every hour of 2025: 30 × 8760 / 8760 = 30 PFlops-years × 20,000 = 600,000
    # -> capped at 500,000.00.  At 20 PFlops: 400,000.00, below the cap.
    year = beijing(2025, 1, 1)
    capped = award_of(assess_access(Inputs(2025, SITES, tuple(hours(3, year, 8760,
                                                                    pflops="30"))), POLICY), "Beta")
    assert capped.amount == Decimal("500000.00") and capped.reasons == ("capped",)
    below = award_of(assess_access(Inputs(2025, SITES, tuple(hours(3, year, 8760,
                                                                   pflops="20"))), POLICY), "Beta")
    assert below.amount == Decimal("400000.00") and below.reasons == ("below the cap",)


def test_5b_window_cut_at_2024_07_01_and_2026_12_31() -> None:
    # 2024: the hour starting 2024-06-30 23:00 Beijing is outside, 2024-07-01 00:00 inside.
    # 24 hours at 10 PFlops inside -> 240 PFlops-hours; 2024 has 8,784 hours:
    # 240 / 8784 × 20,000 = 546.448087... -> 546.45
    rows = hours(3, beijing(2024, 6, 30, 23), 1, pflops="10") + hours(
        3, beijing(2024, 7, 1), 24, pflops="10")
    beta = award_of(assess_access(Inputs(2024, SITES, tuple(rows)), POLICY), "Beta")
    assert figure(beta, "PFlops-hours measured").value == "240"
    assert beta.amount == Decimal("546.45")
    # 2026: the last hour, 23:00 on 31 December, counts; 2027 is outside the policy entirely.
    last = hours(3, beijing(2026, 12, 31, 23), 2, pflops="10")  # 23:00 in, 00:00 (2027) out
    beta26 = award_of(assess_access(Inputs(2026, SITES, tuple(last)), POLICY), "Beta")
    assert figure(beta26, "PFlops-hours measured").value == "10"
    assert assess_access(Inputs(2027, SITES, tuple(last)), POLICY) == []


def test_5b_refused_when_the_other_support_register_covers_it() -> None:
    support = OtherSupport(7, "Beta", "5b", "省级数字经济专项", Decimal("100000.00"),
                           date(2025, 2, 1))
    inputs = Inputs(2025, SITES, tuple(hours(3, beijing(2025, 1, 1), 10, pflops="5")),
                    other_support=(support,))
    beta = award_of(assess_access(inputs, POLICY), "Beta")
    assert beta.amount == 0
    assert "other-support register entry 7" in beta.reasons[0]
    assert "省级数字经济专项" in beta.reasons[0]


# --- 4 --------------------------------------------------------------------------------------

CENTRES = (Site(1, "ty-a", "Alpha", "太原", "太原一号"),
           Site(2, "ty-b", "Alpha", "太原", "太原一号"),
           Site(3, "dt", "Alpha", "大同", "大同二号"),
           Site(4, "lv", "Beta", "吕梁", "吕梁三号"))


def commissioned(number: int, enterprise: str, centre: str, day: str) -> Declaration:
    return Declaration(number, enterprise, centre, "commissioning", {"date": day},
                       (("验收报告.pdf", "ab" * 32),))


def year_of_hours(site: int, year: int, **kwargs: object) -> list[SiteHour]:
    first = beijing(year, 1, 1)
    count = int((beijing(year + 1, 1, 1) - first) / H)
    return hours(site, first, count, **kwargs)  # type: ignore[arg-type]


def pue_inputs(year: int = 2025, **extra: object) -> Inputs:
    rows = (year_of_hours(1, year, it="100", facility="115", racks=20)
            + year_of_hours(2, year, it="50", facility="58", racks=10)
            + year_of_hours(3, year, it="10", facility="11", racks=5)
            + year_of_hours(4, year, it="10", facility="11.9", racks=40))
    declarations = (commissioned(1, "Alpha", "太原一号", "2024-05-01"),
                    commissioned(2, "Alpha", "大同二号", "2025-03-01"),
                    commissioned(3, "Beta", "吕梁三号", "2024-02-01"))
    return Inputs(year, CENTRES, tuple(rows), declarations, **extra)  # type: ignore[arg-type]


def test_4_a_centre_split_across_two_sites_is_judged_on_its_summed_energy() -> None:
    # 太原一号 = ty-a + ty-b; every hour: facility 115 + 58 = 173 kWh, IT 100 + 50 = 150 kWh.
    # Annual PUE = (173 × 8760) / (150 × 8760) = 1.153333... -> 1.1533 < 1.18.
    # Racks: 20 + 10 = 30 in every hour -> 30 × 1,000 = 30,000.00 yuan.
    centre = award_of(assess_pue(pue_inputs(), POLICY), "Alpha", "太原一号")
    assert figure(centre, "annual PUE").value == "1.1533"
    assert figure(centre, "facility kWh").value == str(173 * 8760)
    assert figure(centre, "racks").value == "30"
    assert figure(centre, "commissioned on").source == "declared"
    assert centre.amount == Decimal("30000.00") and centre.reasons == ("eligible",)
    # 大同二号: 11 / 10 = 1.1 -> 5 racks × 1,000 = 5,000.00
    assert award_of(assess_pue(pue_inputs(), POLICY), "Alpha", "大同二号").amount == Decimal(
        "5000.00")


def test_4_near_miss_pays_nothing_and_says_so() -> None:
    # 吕梁三号: 11.9 / 10 = 1.19: not below 1.18, within 0.02 of it.
    beta = award_of(assess_pue(pue_inputs(), POLICY), "Beta", "吕梁三号")
    assert beta.amount == 0
    assert beta.reasons == ("near miss: annual PUE 1.1900 is not below 1.18",)


def test_4_a_meter_gap_makes_a_centre_ineligible() -> None:
    # ty-b's meters cover only half of 1,000 hours: 7,760 of 8,760 hours fully metered at both
    # sites = 0.8858 < 0.90. Its PUE is still 1.1533, but not accepted.
    inputs = pue_inputs()
    gap_start = beijing(2025, 5, 1)
    rows = tuple(replace(r, coverage_it=Decimal("0.5"))
                 if r.site_id == 2 and gap_start <= r.hour < gap_start + 1000 * H else r
                 for r in inputs.hours)
    centre = award_of(assess_pue(replace(inputs, hours=rows), POLICY), "Alpha", "太原一号")
    assert figure(centre, "metered share").value == "0.8858"
    assert centre.amount == 0
    assert centre.reasons == ("not eligible: only 0.8858 of the hours fully metered, below 0.90",)


def test_4_pays_a_centre_once_and_not_the_next_year() -> None:
    paid = PriorAward(11, "4", 2025, "Alpha", "太原一号", Decimal("30000.00"), "paid")
    centre = award_of(assess_pue(pue_inputs(2026, prior_awards=(paid,)), POLICY), "Alpha",
                      "太原一号")
    assert centre.amount == 0
    assert "already awarded for 2025 (award 11, paid)" in centre.reasons[0]


def test_4_a_centre_commissioned_before_the_assumed_start_is_not_new() -> None:
    inputs = pue_inputs()
    old = replace(inputs, declarations=(commissioned(1, "Alpha", "太原一号", "2019-06-01"),))
    centre = award_of(assess_pue(old, POLICY), "Alpha", "太原一号")
    assert centre.amount == 0 and "commissioned on 2019-06-01" in centre.reasons[0]
    undeclared = award_of(assess_pue(replace(inputs, declarations=()), POLICY), "Alpha",
                          "大同二号")
    assert undeclared.reasons[0].startswith("not eligible: no accepted commissioning")


def test_4_the_enterprise_cap_is_shared_by_its_centres() -> None:
    # Alpha was awarded 4,990,000.00 for other centres in 2024: 10,000.00 of the 5,000,000 cap
    # is left. 大同二号 (5,000) comes before 太原一号 (30,000) by name: 5,000 then 5,000.
    earlier = PriorAward(3, "4", 2024, "Alpha", "other", Decimal("4990000.00"), "approved")
    awards = assess_pue(pue_inputs(prior_awards=(earlier,)), POLICY)
    assert award_of(awards, "Alpha", "大同二号").amount == Decimal("5000.00")
    taiyuan = award_of(awards, "Alpha", "太原一号")
    assert taiyuan.amount == Decimal("5000.00")
    assert taiyuan.reasons == ("capped",)


# --- properties -------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 8759),
                          st.decimals("0", "500", places=3)), max_size=60),
       st.lists(st.decimals("0", "6000000", places=2), max_size=3))
def test_no_award_exceeds_its_cap_and_the_same_inputs_give_the_same_awards(
        samples: list[tuple[int, int, Decimal]], earlier: list[Decimal]) -> None:
    start = beijing(2025, 1, 1)
    rows = tuple(SiteHour(site, start + hour * H, pflops, Decimal(0), Decimal(1),
                          Decimal(100), pflops + Decimal(100), Decimal(1), Decimal(1), 1000, ())
                 for site, hour, pflops in samples)
    prior = tuple(PriorAward(i, "4", 2024, "Alpha", f"c{i}", amount, "paid")
                  for i, amount in enumerate(earlier))
    inputs = Inputs(2025, CENTRES, rows, pue_inputs().declarations, prior)
    for assess, cap in ((assess_access, Decimal("500000")), (assess_pue, None)):
        awards = assess(inputs, POLICY)
        assert awards == assess(Inputs.from_json(inputs.as_json()), POLICY)
        per_enterprise: dict[str, Decimal] = {}
        for award in awards:
            assert award.amount >= 0
            total = per_enterprise.get(award.enterprise, Decimal(0))
            per_enterprise[award.enterprise] = total + award.amount
        for enterprise, total in per_enterprise.items():
            if cap is None:  # measure 4: 5,000,000 over the period, less what was awarded
                taken = sum(p.amount for p in prior if p.enterprise == enterprise)
                assert total <= max(Decimal("5000000") - taken, Decimal(0))
            else:
                assert total <= cap


# --- the policy file ------------------------------------------------------------------------

def test_the_policy_file_is_strict(tmp_path: Path) -> None:
    text = (POLICIES / "jinzhengbanfa-2024-35-v1.toml").read_text(encoding="utf-8")
    cases = {
        "measures.5b.rat": text.replace("[measures.5b.rate]", "[measures.5b.rat]"),
        "measures.4.cap.per": text.replace('per = "enterprise"\n', ""),
        "measures.5b.cap.unit": text.replace('unit = "yuan"\nper = "enterprise-year"',
                                             'per = "enterprise-year"'),
        "measures.4.per_rack.amount": text.replace('amount = "1000.00"', "amount = 1000.0"),
        "policy.colour": text.replace("[measures.5b]", 'colour = "red"\n\n[measures.5b]'),
    }
    for key, broken in cases.items():
        path = tmp_path / "broken.toml"
        path.write_text(broken, encoding="utf-8")
        with pytest.raises(PolicyError) as error:
            load(path)
        assert error.value.key.startswith(key.rsplit(".", 1)[0]), (key, error.value)
        assert str(error.value).startswith("broken.toml: ")


def test_policy_versions_may_not_overlap(tmp_path: Path) -> None:
    text = (POLICIES / "jinzhengbanfa-2024-35-v1.toml").read_text(encoding="utf-8")
    (tmp_path / "v1.toml").write_text(text, encoding="utf-8")
    (tmp_path / "v2.toml").write_text(text.replace("version = 1", "version = 2").replace(
        "effective_from = 2024-07-01", "effective_from = 2026-01-01"), encoding="utf-8")
    with pytest.raises(PolicyError, match=r"v2\.toml: policy\.effective_from: 2026-01-01 overlaps"):
        load_all(tmp_path)
    assert [p.version for p in load_all(POLICIES)] == [1]
