"""The metric catalogue: every series name an agent may send, its unit and its plausible range.

Names follow Prometheus conventions (base units, unit in the name, ``_total`` for counters).
A series is identified on the wire by ``(metric, device)``: ``device`` is the accelerator's UUID,
the meter's id from the site config, or ``"site"`` for site-wide values.

The bounds are deliberately generous: they exist to stop a mis-scaled meter (kW read as W,
Wh as J) or a corrupt reading from entering the store, not to second-guess real hardware.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Kind(enum.StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"


class Scope(enum.StrEnum):
    ACCELERATOR = "accelerator"
    METER = "meter"
    SITE = "site"


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: Kind
    scope: Scope
    unit: str
    help: str
    minimum: float
    maximum: float
    max_rate: float = math.inf
    """A counter's fastest plausible rise, per second: for an energy register, in joules a
    second, the rated maximum power of what it meters (jinsuan.kernel.counters)."""

    def check(self, value: float) -> str | None:
        """Return why ``value`` is implausible for this metric, or None when it is fine."""
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if value < self.minimum:
            return f"{value:g} {self.unit} is below {self.minimum:g} {self.unit}"
        if value > self.maximum:
            bound = f"{self.maximum:g} {self.unit}"
            return f"{value:g} {self.unit} is above the plausible bound {bound}"
        return None


_HUGE = 1e18  # counters: only non-negativity is checked; resets are handled by the rollups

CATALOGUE: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accelerator_power_watts", Kind.GAUGE, Scope.ACCELERATOR, "W",
               "Board power draw.", 0, 2_000),
        Metric("accelerator_energy_joules_total", Kind.COUNTER, Scope.ACCELERATOR, "J",
               "Energy consumed since the driver loaded (NVML total energy).", 0, _HUGE,
               max_rate=2_000),  # no accelerator board draws more than 2 kW
        Metric("accelerator_utilization_ratio", Kind.GAUGE, Scope.ACCELERATOR, "1",
               "Fraction of time a kernel was running, 0..1.", 0, 1),
        Metric("accelerator_memory_used_bytes", Kind.GAUGE, Scope.ACCELERATOR, "B",
               "Device memory in use.", 0, 2**40),
        Metric("accelerator_memory_total_bytes", Kind.GAUGE, Scope.ACCELERATOR, "B",
               "Device memory installed.", 0, 2**40),
        Metric("accelerator_temperature_celsius", Kind.GAUGE, Scope.ACCELERATOR, "°C",
               "Die temperature.", -40, 150),
        Metric("accelerator_sm_clock_hertz", Kind.GAUGE, Scope.ACCELERATOR, "Hz",
               "Streaming-multiprocessor (or AI core) clock.", 0, 5e9),
        Metric("accelerator_health_errors_total", Kind.COUNTER, Scope.ACCELERATOR, "1",
               "Uncorrected ECC errors and XID-style health events since the agent started.",
               0, _HUGE),
        Metric("accelerator_up", Kind.GAUGE, Scope.ACCELERATOR, "1",
               "1 when the device answered its probe and is healthy, 0 otherwise.", 0, 1),
        Metric("meter_power_watts", Kind.GAUGE, Scope.METER, "W",
               "Active power through a facility or IT meter.", 0, 1e9),
        Metric("meter_energy_joules_total", Kind.COUNTER, Scope.METER, "J",
               "Cumulative active energy register of a facility or IT meter.", 0, _HUGE,
               max_rate=100e6),  # 100 MW: more than any one meter of a data centre carries
        Metric("site_racks", Kind.GAUGE, Scope.SITE, "1",
               "Physical racks in the site's inventory.", 0, 100_000),
        Metric("site_terminals_served", Kind.GAUGE, Scope.SITE, "1",
               "Distinct terminals an edge site has served in the current calendar year.",
               0, 1e10),
    )
}


def lookup(name: str) -> Metric | None:
    return CATALOGUE.get(name)
