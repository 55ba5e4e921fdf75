"""The one rule for reading a cumulative counter (energy registers, NVML's total energy).

Every figure built on a counter's increase (a site-hour's energy in the rollups, a job's energy
in its usage record, the live state) takes the increases from :func:`steps`, so a bad reading
moves none of them. Between two accepted readings ``a`` then ``b``:

- ``b >= a``: the increase is ``b - a``, unless it is **physically impossible**: more than the
  device's rated maximum power allows over the interval (``max_rate`` joules a second). Such a
  reading is refused (``implausible``) and the next one is measured from ``a``.
- ``b < a`` and a reading within the next :data:`LOOKAHEAD` returns to ``a`` or above: the low
  readings were a **glitch** (a gateway that answers 0 on a timeout, a torn register read) and
  are skipped (``glitch``); nothing is counted for them and the energy between ``a`` and the
  recovered reading is counted once.
- ``b < a`` and the counter does not come back: a **reset** (the meter or the driver restarted
  from zero), so ``b`` is what it counted since (``reset``), itself subject to ``max_rate``.

Points are ``(unix seconds, value)`` sorted by time; readings with the same timestamp are taken
in the order given (callers sort by time, then value, so the result is deterministic).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

LOOKAHEAD = 3
"""How many readings after a drop may show the counter back at its level (a glitch)."""


@dataclass(frozen=True, slots=True)
class Step:
    """The increase from one accepted reading to the next, and what the rule did to get it."""

    t0: float
    t1: float
    increase: float
    flag: str = ""  # "", "reset"; skipped readings are reported by Counted.flags


@dataclass(slots=True)
class Counted:
    """:func:`steps`' tally of the readings it refused or read as resets."""

    glitches: int = 0
    implausible: int = 0
    resets: int = 0

    @property
    def flags(self) -> list[str]:
        return [name for name in ("glitches", "implausible", "resets") if getattr(self, name)]


def steps(points: Sequence[tuple[float, float]], max_rate: float,
          counted: Counted | None = None) -> Iterator[Step]:
    """The increases between consecutive accepted readings of one counter, oldest first."""
    tally = counted if counted is not None else Counted()
    if not points:
        return
    t0, c0 = points[0]
    index = 1
    while index < len(points):
        t1, c1 = points[index]
        if c1 < c0:
            recovered = next((j for j in range(index + 1, min(index + 1 + LOOKAHEAD,
                                                              len(points)))
                              if points[j][1] >= c0), None)
            if recovered is not None:
                tally.glitches += recovered - index
                index = recovered
                continue
            increase, flag = c1, "reset"
        else:
            increase, flag = c1 - c0, ""
        if increase > max_rate * (t1 - t0):
            tally.implausible += 1
            index += 1
            continue
        if flag:
            tally.resets += 1
        yield Step(t0, t1, increase, flag)
        t0, c0 = t1, c1
        index += 1
