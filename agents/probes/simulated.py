"""A simulated data-centre site: deterministic from a seed, realistic enough to test against.

What it models, and why each piece is there:
- a fleet of accelerators of mixed models in racks, each with a stable UUID derived from the
  seed, so restarts report the same devices;
- a daily load curve in Asia/Shanghai time (busy afternoons, quiet nights) with per-device
  noise, and board power that follows utilisation between idle and TDP;
- IT power = accelerators plus host overhead, split over two UPS-output meters; facility power
  = IT power × a PUE that depends on the site's cooling design and the outside temperature
  (Shanxi's seasons and the day's swing), landing between about 1.1 and 1.6;
- cumulative energy counters integrated from power between reads, with rare counter resets
  (a meter or driver restart) and occasional meter gaps (a meter that does not answer for a
  few minutes), so the platform's reset and gap handling is exercised by the demo itself.

Randomness comes from hashing (seed, key, time bucket), never from a global RNG, so the same
seed and the same sequence of ``read(now)`` calls give the same readings.
"""

from __future__ import annotations

import hashlib
import math
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from agents.probe import Point, Reading
from jinsuan.contract.wire import AcceleratorInfo, MeterInfo, MeterRole

SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True, slots=True)
class _Model:
    """Simulation parameters of one accelerator model (name as its vendor tool reports it)."""

    name: str
    vendor: str
    idle_w: float
    tdp_w: float
    memory_bytes: int
    compute_units: int | None = None  # reported where the FP16 figure must be estimated
    clock_max_mhz: float | None = None


MODELS: dict[str, _Model] = {
    m.name: m
    for m in (
        _Model("NVIDIA H800", "NVIDIA", 90, 700, 80 * 2**30),
        _Model("NVIDIA H20", "NVIDIA", 80, 500, 96 * 2**30),
        _Model("NVIDIA A800-SXM4-80GB", "NVIDIA", 60, 400, 80 * 2**30),
        _Model("NVIDIA L20", "NVIDIA", 35, 275, 48 * 2**30),
        _Model("NVIDIA L40S", "NVIDIA", 35, 350, 48 * 2**30),
        _Model("NVIDIA GeForce RTX 4090", "NVIDIA", 25, 450, 24 * 2**30),
        # npu-smi reports 20 AI cores at up to 1800 MHz for a 910B3; the platform estimates
        # its FP16 peak from them (Huawei publishes no 910B figure: see
        # jinsuan.contract.accelerators).
        _Model("Ascend910B3", "Huawei", 70, 350, 64 * 2**30, 20, 1800),
    )
}


class SimulatedSiteConfig(BaseModel):
    """One simulated site; ``fleet`` maps a model name from MODELS to how many of it."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    fleet: dict[str, int] = Field(default_factory=lambda: {"NVIDIA H800": 32})
    accelerators_per_rack: int = Field(default=16, gt=0)
    pue_design: float = Field(default=1.25, ge=1.05, le=1.6,
                              description="PUE at 15 °C outside; hotter days cost more cooling.")
    climate_offset_c: float = Field(default=0.0,
                                    description="Outside temperature offset from Taiyuan's.")
    base_utilization: float = Field(default=0.55, ge=0, le=1)
    host_overhead: float = Field(default=0.35, ge=0,
                                 description="Host power as a fraction of accelerator power.")
    meter_gap_probability: float = Field(default=0.01, ge=0, le=1,
                                         description="Chance a meter is silent in a 5-min slot.")
    counter_reset_probability: float = Field(default=0.0005, ge=0, le=1,
                                             description="Chance per read a counter restarts.")
    edge: bool = False
    terminals_base: int = Field(default=0, ge=0)

    def model_names(self) -> list[str]:
        unknown = sorted(set(self.fleet) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown simulated models {unknown}; known: {sorted(MODELS)}")
        return sorted(self.fleet)


def _unit(*key: object) -> float:
    """A deterministic pseudo-random number in [0, 1) for ``key``."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return struct.unpack("<Q", digest)[0] / 2**64


def outside_temperature_c(local: datetime, offset_c: float) -> float:
    """Taiyuan-like climate: about -6 °C in January, 25 °C in July, ±6 °C over the day."""
    day_of_year = local.timetuple().tm_yday
    seasonal = 9.5 - 15.5 * math.cos(2 * math.pi * (day_of_year - 15) / 365.25)
    hour = local.hour + local.minute / 60
    daily = 6 * math.cos(2 * math.pi * (hour - 15) / 24)
    return seasonal + daily + offset_c


def load_curve(local: datetime) -> float:
    """Relative demand over the day: lowest around 04:00, highest around 15:00."""
    hour = local.hour + local.minute / 60
    return 0.7 + 0.3 * math.cos(2 * math.pi * (hour - 15) / 24)


@dataclass(slots=True)
class _Counter:
    joules: float = 0.0
    last_ts: float | None = None
    last_watts: float = 0.0

    def advance(self, ts: float, watts: float, reset: bool) -> float:
        if self.last_ts is not None and ts > self.last_ts:
            self.joules += (self.last_watts + watts) / 2 * (ts - self.last_ts)
        if reset:
            self.joules = 0.0
        self.last_ts, self.last_watts = ts, watts
        return self.joules


class SimulatedSite:
    """A Probe that invents a whole site's accelerators, meters and inventory."""

    def __init__(self, config: SimulatedSiteConfig, name: str = "simulated") -> None:
        self.name = name
        self.config = config
        self._accelerators = self._build_fleet()
        racks = sorted({a.rack for a in self._accelerators if a.rack})
        self._racks = racks
        half = len(racks) // 2 or 1
        self._meters = [
            MeterInfo(id="utility-main", role=MeterRole.FACILITY, measures="utility_input",
                      racks=racks),
            MeterInfo(id="ups-a", role=MeterRole.IT, measures="ups_output", racks=racks[:half]),
            MeterInfo(id="ups-b", role=MeterRole.IT, measures="ups_output", racks=racks[half:]),
        ]
        self._counters: dict[str, _Counter] = {}

    def _build_fleet(self) -> list[AcceleratorInfo]:
        fleet: list[AcceleratorInfo] = []
        seed = self.config.seed
        for model_name in self.config.model_names():
            model = MODELS[model_name]
            for i in range(self.config.fleet[model_name]):
                index = len(fleet)
                prefix = "NPU" if model.vendor == "Huawei" else "GPU"
                device_uuid = uuid.uuid5(uuid.NAMESPACE_OID, f"jinsuan-sim/{seed}/{model_name}/{i}")
                rack = f"R{index // self.config.accelerators_per_rack + 1:03d}"
                fleet.append(AcceleratorInfo(
                    uuid=f"{prefix}-{device_uuid}", model=model.name, vendor=model.vendor,
                    rack=rack, memory_total_bytes=model.memory_bytes,
                    pci_bus_id=f"0000:{(index % 8) * 16 + 0x18:02x}:00.0",
                    sm_count=model.compute_units, sm_clock_max_mhz=model.clock_max_mhz,
                ))
        return fleet

    def _counter(self, key: str) -> _Counter:
        return self._counters.setdefault(key, _Counter())

    def read(self, now: datetime) -> Reading:
        cfg = self.config
        ts = now.timestamp()
        local = now.astimezone(SHANGHAI)
        demand = load_curve(local)
        slot = int(ts // 60)
        reading = Reading(accelerators=list(self._accelerators), meters=list(self._meters),
                          racks=list(self._racks), edge=cfg.edge)
        points = reading.points
        accelerator_watts = 0.0
        for acc in self._accelerators:
            model = MODELS[acc.model]
            jitter = _unit(cfg.seed, acc.uuid, slot) - 0.5
            util = min(1.0, max(0.0, cfg.base_utilization * demand / 0.7 + 0.3 * jitter))
            watts = model.idle_w + (model.tdp_w - model.idle_w) * util
            accelerator_watts += watts
            reset = _unit(cfg.seed, acc.uuid, "reset", ts) < cfg.counter_reset_probability
            energy = self._counter(acc.uuid).advance(ts, watts, reset)
            points += [
                Point("accelerator_up", acc.uuid, 1.0),
                Point("accelerator_power_watts", acc.uuid, round(watts, 1)),
                Point("accelerator_energy_joules_total", acc.uuid, round(energy, 1)),
                Point("accelerator_utilization_ratio", acc.uuid, round(util, 3)),
                Point("accelerator_memory_used_bytes", acc.uuid,
                      float(int(model.memory_bytes * (0.1 + 0.8 * util)))),
                Point("accelerator_memory_total_bytes", acc.uuid, float(model.memory_bytes)),
                Point("accelerator_temperature_celsius", acc.uuid, round(32 + 45 * util, 1)),
                Point("accelerator_sm_clock_hertz", acc.uuid, 1.98e9 if util > 0.05 else 3.45e8),
            ]
        it_watts = accelerator_watts * (1 + cfg.host_overhead)
        temperature = outside_temperature_c(local, cfg.climate_offset_c)
        # Cooling overhead grows 2 % per °C above 15 °C and shrinks below it (free cooling).
        overhead = (cfg.pue_design - 1) * (1 + 0.02 * (temperature - 15))
        pue = min(1.65, max(1.08, 1 + overhead))
        share = {"ups-a": 0.5, "ups-b": 0.5, "utility-main": pue}
        for meter in self._meters:
            if _unit(cfg.seed, meter.id, "gap", int(ts // 300)) < cfg.meter_gap_probability:
                reading.errors.append(f"meter {meter.id}: no answer (simulated gap)")
                continue
            watts = it_watts * share[meter.id]
            reset = _unit(cfg.seed, meter.id, "reset", ts) < cfg.counter_reset_probability
            energy = self._counter(meter.id).advance(ts, watts, reset)
            points.append(Point("meter_power_watts", meter.id, round(watts, 1)))
            points.append(Point("meter_energy_joules_total", meter.id, round(energy, 1)))
        points.append(Point("site_racks", "site", float(len(self._racks))))
        if cfg.edge:
            day = local.timetuple().tm_yday
            points.append(Point("site_terminals_served", "site",
                                float(cfg.terminals_base + day * 900 + int(ts // 3600) % 24)))
        return reading
