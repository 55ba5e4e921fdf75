"""The simulated site: deterministic, physically plausible, and exercising resets and gaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.probes.simulated import MODELS, SimulatedSite, SimulatedSiteConfig
from jinsuan.contract.metrics import CATALOGUE

START = datetime(2026, 1, 10, tzinfo=UTC)


def _series(site: SimulatedSite, start: datetime, steps: int, step: timedelta):
    out: list[tuple[datetime, dict[tuple[str, str], float]]] = []
    for i in range(steps):
        now = start + i * step
        out.append((now, {(p.metric, p.device): p.value for p in site.read(now).points}))
    return out


def test_same_seed_same_readings_and_different_seed_differs():
    cfg = SimulatedSiteConfig(seed=7, fleet={"NVIDIA H800": 4, "Ascend910B3": 4})
    a = _series(SimulatedSite(cfg), START, 30, timedelta(seconds=10))
    b = _series(SimulatedSite(cfg), START, 30, timedelta(seconds=10))
    c = _series(SimulatedSite(cfg.model_copy(update={"seed": 8})), START, 30,
                timedelta(seconds=10))
    assert a == b
    assert a != c


def test_every_point_is_a_catalogued_metric_within_bounds():
    cfg = SimulatedSiteConfig(seed=1, fleet={name: 2 for name in MODELS}, edge=True,
                              terminals_base=1000)
    site = SimulatedSite(cfg)
    for i in range(20):
        reading = site.read(START + timedelta(minutes=7 * i))
        for p in reading.points:
            assert CATALOGUE[p.metric].check(p.value) is None, p


def test_power_follows_utilisation():
    site = SimulatedSite(SimulatedSiteConfig(seed=3, fleet={"NVIDIA H20": 64}))
    values = site.read(START + timedelta(hours=7)).points
    by_device: dict[str, dict[str, float]] = {}
    for p in values:
        by_device.setdefault(p.device, {})[p.metric] = p.value
    pairs = sorted((d["accelerator_utilization_ratio"], d["accelerator_power_watts"])
                   for d in by_device.values() if "accelerator_power_watts" in d)
    powers = [w for _, w in pairs]
    assert powers == sorted(powers)  # monotone in utilisation
    assert powers[0] < powers[-1]


@pytest.mark.parametrize(("pue_design", "offset"), [(1.12, -4.0), (1.45, 3.0)])
def test_monthly_energy_pue_stays_in_the_policy_range(pue_design, offset):
    cfg = SimulatedSiteConfig(seed=5, fleet={"NVIDIA L20": 8}, pue_design=pue_design,
                              climate_offset_c=offset, meter_gap_probability=0,
                              counter_reset_probability=0)
    for month in (1, 7):
        site = SimulatedSite(cfg)
        start = datetime(2026, month, 1, tzinfo=UTC)
        first = last = None
        for i in range(0, 48 * 6):  # two days at 10-minute reads
            points = site.read(start + timedelta(minutes=10 * i)).points
            energy = {p.device: p.value for p in points if p.metric == "meter_energy_joules_total"}
            first = first or energy
            last = energy
        facility = last["utility-main"] - first["utility-main"]
        it = (last["ups-a"] - first["ups-a"]) + (last["ups-b"] - first["ups-b"])
        assert 1.08 <= facility / it <= 1.62


def test_counters_only_fall_at_a_reset_and_meters_have_gaps():
    cfg = SimulatedSiteConfig(seed=11, fleet={"NVIDIA H800": 2}, meter_gap_probability=0.3,
                              counter_reset_probability=0.02)
    site = SimulatedSite(cfg)
    previous: dict[str, float] = {}
    falls = gaps = 0
    for i in range(400):
        reading = site.read(START + timedelta(seconds=10 * i))
        gaps += len(reading.errors)
        for p in reading.points:
            if p.metric.endswith("_joules_total"):
                if p.device in previous and p.value < previous[p.device]:
                    falls += 1
                    assert p.value < 1e6  # restarted from (near) zero, not a random drop
                previous[p.device] = p.value
    assert falls > 0
    assert gaps > 0


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown simulated models"):
        SimulatedSite(SimulatedSiteConfig(fleet={"NVIDIA Z9000": 1}))
