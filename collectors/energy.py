"""Energy, coverage and PUE over a period: the pure arithmetic behind the hourly rollups.

Callers fetch a series' points with a margin around the window, so the intervals that cross
the window's edges can be split; every function here clips to the half-open window
``[start, end)`` and interpolates linearly at its edges. Points are ``(unix seconds, value)``
pairs sorted by time; they may be irregular. Each function makes one pass over its points and
raises ``ValueError`` naming the offending point when they are out of order or not finite.

Policy rules implemented here (see ``shared/policy/MEASURES.md``):

- Energy comes from a device's cumulative energy counter where it has one
  (:func:`integrate_counter`), otherwise from trapezoidal integration of its power
  (:func:`integrate_power`).
- An interval longer than ``max_gap`` (three nominal sample intervals, :func:`max_gap_for`)
  is a gap: it does not count as covered, and power is not bridged across it.
- A counter's increases follow the one counter rule (``jinsuan.kernel.counters``): a drop
  that recovers is a glitch and skipped, a drop that stays is a reset counted from zero, and an
  increase faster than the device's rated maximum power is refused; never negative energy.
- PUE is facility energy over IT energy for the period (ISO/IEC 30134-2), never a mean of
  instantaneous ratios (:func:`pue`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from jinsuan.kernel.counters import Counted, steps

GAP_INTERVALS = 3
"""A gap longer than this many nominal sample intervals is not bridged (policy rule)."""

Points = Sequence[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Integral:
    """Energy attributed to a window and the seconds of that window backed by samples."""

    joules: float
    covered_s: float


def nominal_interval(times: Sequence[float]) -> float | None:
    """The series' sampling interval: the median of the positive consecutive differences.

    Repeated timestamps are ignored. None when there are fewer than two distinct times.
    """
    diffs: list[float] = []
    previous: float | None = None
    for index, t in enumerate(times):
        if not math.isfinite(t):
            raise ValueError(f"time {index} is not finite: {t!r}")
        if previous is not None:
            step = t - previous
            if step > 0:
                diffs.append(step)
            elif step < 0:
                raise ValueError(
                    f"times are not sorted: time {index} ({t!r}) is before {previous!r}"
                )
        previous = t
    return statistics.median(diffs) if diffs else None


def max_gap_for(times: Sequence[float]) -> float:
    """The longest interval still bridged: ``GAP_INTERVALS`` nominal intervals.

    With fewer than two distinct times there is no interval to bridge, so 0.0 is returned
    (every function here then reports zero energy and zero coverage, which is the truth).
    """
    nominal = nominal_interval(times)
    return 0.0 if nominal is None else GAP_INTERVALS * nominal


def integrate_power(points: Points, start: float, end: float, max_gap: float) -> Integral:
    """Trapezoidal integral of watts over ``[start, end)``, in joules, and its coverage.

    Each interval between consecutive points no longer than ``max_gap`` contributes the part
    of its trapezoid inside the window (power interpolated linearly at the window's edges) and
    that overlap to ``covered_s``. Longer intervals are gaps and contribute nothing.
    """
    joules, covered = _trapezoids(points, start, end, max_gap)
    return Integral(joules, covered)


def integrate_counter(points: Points, start: float, end: float, max_gap: float,
                      max_rate: float = math.inf, counted: Counted | None = None) -> Integral:
    """Energy over ``[start, end)`` from a cumulative joules counter, and its coverage.

    The increases between readings are those of the one counter rule
    (:func:`jinsuan.kernel.counters.steps`: a glitch is skipped, a reset counts from zero, an
    increase above ``max_rate`` joules a second is refused; ``counted`` tallies them). The part
    of an increase attributed to the window is proportional to the part of the interval inside
    it, i.e. the counter is interpolated linearly. Two readings with the same timestamp are a
    step at that instant, attributed to the window when the instant is in it.

    Intervals longer than ``max_gap`` still contribute their increase but no coverage. The
    register kept counting while no readings arrived, so the difference between two readings
    is measured energy, not an estimate; dropping it would understate the period's energy
    (and skew PUE) just because the link was down. What is unknown is how that energy is
    spread in time, so a gap that straddles the window's edge is split by an assumption, and
    the gap is reported as not covered so that the period is flagged. One exception to "the
    increase is measured": when the counter was reset inside an interval, the energy counted
    between the earlier reading and the reset is lost; only the new reading is counted.
    """
    _check_window(start, end, max_gap)
    for index, (t, c) in enumerate(points):
        _check_counter_point(index, t, c)
        if index and t < points[index - 1][0]:
            raise ValueError(f"points are not sorted: point {index} at {t!r} is before"
                             f" {points[index - 1][0]!r}")
    joules = 0.0
    covered = 0.0
    for step in steps(points, max_rate, counted):
        t0, t1 = step.t0, step.t1
        dt = t1 - t0
        if dt == 0:
            if start <= t1 < end:
                joules += step.increase
        elif t1 > start and t0 < end:
            lo = t0 if t0 > start else start
            hi = t1 if t1 < end else end
            joules += step.increase if (lo == t0 and hi == t1) else step.increase * (
                (hi - lo) / dt)
            if dt <= max_gap:
                covered += hi - lo
    return Integral(joules, _at_most_window(covered, start, end))


def time_weighted_mean(
    points: Points, start: float, end: float, max_gap: float
) -> tuple[float | None, float]:
    """Mean of a gauge over the covered part of ``[start, end)``, and the covered seconds.

    The gauge is integrated with trapezoids exactly as :func:`integrate_power` does and the
    integral is divided by the covered seconds; gaps are left out rather than bridged. The mean
    is None when no part of the window is covered.
    """
    integral, covered = _trapezoids(points, start, end, max_gap)
    return (integral / covered if covered > 0 else None), covered


def coverage(covered_s: float, start: float, end: float) -> float:
    """The fraction of ``[start, end)`` backed by samples, 0..1."""
    if not end > start:
        raise ValueError(f"coverage needs a non-empty window, got [{start!r}, {end!r})")
    return covered_s / (end - start)


def pue(facility_j: float | None, it_j: float | None) -> float | None:
    """Power usage effectiveness for a period: facility energy / IT energy (ISO/IEC 30134-2).

    Takes the period's energy totals, so a longer period's PUE is a ratio of its totals and
    never a mean of shorter periods' ratios. None when either energy is absent or IT energy
    is zero (nothing to divide by). A result below 1 is returned as is: it means the meters
    disagree, which the caller should flag, not hide.
    """
    if facility_j is None or it_j is None:
        return None
    for name, value in (("facility", facility_j), ("IT", it_j)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} energy must be a finite number >= 0, got {value!r}")
    return facility_j / it_j if it_j > 0 else None


def _trapezoids(points: Points, start: float, end: float, max_gap: float) -> tuple[float, float]:
    """Trapezoidal integral of a linear gauge over ``[start, end)`` and the covered seconds."""
    _check_window(start, end, max_gap)
    total = 0.0
    covered = 0.0
    iterator = enumerate(points)
    first = next(iterator, None)
    if first is None:
        return 0.0, 0.0
    t0, v0 = first[1]
    _check_point(0, t0, v0)
    for index, (t1, v1) in iterator:
        _check_point(index, t1, v1)
        dt = t1 - t0
        if dt < 0:
            raise ValueError(f"points are not sorted: point {index} at {t1!r} is before {t0!r}")
        if 0 < dt <= max_gap and t1 > start and t0 < end:
            if t0 >= start and t1 <= end:
                total += (v0 + v1) * 0.5 * dt
                covered += dt
            else:
                lo = t0 if t0 > start else start
                hi = t1 if t1 < end else end
                slope = (v1 - v0) / dt
                v_lo = v0 + slope * (lo - t0)
                v_hi = v0 + slope * (hi - t0)
                total += (v_lo + v_hi) * 0.5 * (hi - lo)
                covered += hi - lo
        t0, v0 = t1, v1
    return total, _at_most_window(covered, start, end)


def _at_most_window(covered: float, start: float, end: float) -> float:
    """Covered seconds summed over many intervals can exceed the window by a rounding error;
    clip them so that coverage never reads above 1."""
    duration = end - start
    return covered if covered < duration else duration


def _check_window(start: float, end: float, max_gap: float) -> None:
    if not (math.isfinite(start) and math.isfinite(end) and start <= end):
        raise ValueError(f"window [{start!r}, {end!r}) must be finite with start <= end")
    if not max_gap >= 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap!r}")


def _check_point(index: int, t: float, value: float) -> None:
    if not (math.isfinite(t) and math.isfinite(value)):
        raise ValueError(f"point {index} ({t!r}, {value!r}) is not finite")


def _check_counter_point(index: int, t: float, value: float) -> None:
    _check_point(index, t, value)
    if value < 0:
        raise ValueError(f"point {index} at {t!r}: a counter cannot be negative, got {value!r}")
