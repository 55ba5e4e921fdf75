"""The probe interface: a source of readings the agent samples once per cycle.

A probe is anything with ``name`` and ``read(now)``. It is handed its device library or
network client at construction, so a test can hand in a strict fake or a real protocol peer.
``read`` never raises for a device-level failure: it reports the failure in ``errors`` and
keeps the other devices' readings, so one dead meter does not silence a site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from jinsuan.contract.wire import AcceleratorInfo, MeterInfo


class ProbeUnavailable(RuntimeError):
    """The probe cannot run on this host: its library or tool is missing.

    Raised at construction, never from ``read``; the agent refuses to start unless the
    operator disables that probe in the config.
    """


@dataclass(frozen=True, slots=True)
class Point:
    """One value of one series at the cycle's time.

    ``metric`` is a name from ``jinsuan.contract.metrics``.
    """

    metric: str
    device: str
    value: float


@dataclass(slots=True)
class Reading:
    """What one probe read in one cycle."""

    points: list[Point] = field(default_factory=list)
    accelerators: list[AcceleratorInfo] = field(default_factory=list)
    meters: list[MeterInfo] = field(default_factory=list)
    racks: list[str] = field(default_factory=list)
    edge: bool = False
    errors: list[str] = field(default_factory=list)


class Probe(Protocol):
    name: str

    def read(self, now: datetime) -> Reading:
        """Read every device once, stamping values at ``now`` (UTC)."""
        ...
