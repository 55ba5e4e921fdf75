"""Pure checks of a parsed report batch: the first problem, named by rule and field path.

Checks run per series with C-level passes over the points (``min``, ``max``, ``all(map(...))``);
only when a pass fails is the series walked point by point to name the first offending one, so
a valid batch costs a few passes over its points and no per-point Python bytecode.

Rules, in the order they are checked for each series:

- the metric is in the catalogue (``jinsuan.metrics``);
- the device fits the metric's scope: ``"site"`` for site-wide metrics, an accelerator UUID or
  a meter id listed in the same batch's inventory otherwise (so every figure can be traced to
  the hardware that produced it);
- every value is within the metric's plausible bounds;
- no timestamp is more than the allowed skew in the future, or older than the retention
  period (such a sample would be dropped at once, so accepting it would only hide a wrong
  agent clock);
- points are in non-decreasing time order.

A cumulative counter that goes backwards is *not* a problem: it is a counter reset, which the
rollups handle (see ``collectors.energy.integrate_counter``).
"""

from __future__ import annotations

import enum
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

from jinsuan.errors import Invalid
from jinsuan.metrics import CATALOGUE, Metric, Scope
from jinsuan.wire import Batch, Series

SITE_DEVICE = "site"


class Rule(enum.StrEnum):
    """Why a batch was rejected; also the ``reason`` label of the rejection counter."""

    UNKNOWN_METRIC = "unknown_metric"
    UNKNOWN_DEVICE = "unknown_device"
    OUT_OF_BOUNDS = "out_of_bounds"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    OUT_OF_ORDER = "out_of_order"


@dataclass(frozen=True, slots=True)
class Problem:
    rule: Rule
    reason: str
    field: str

    def error(self) -> Invalid:
        return Invalid(self.reason, field=self.field)


@dataclass(frozen=True, slots=True)
class Limits:
    """The accepted time range of sample timestamps, in unix milliseconds, inclusive."""

    oldest_ms: int
    newest_ms: int


def first_problem(batch: Batch, limits: Limits) -> Problem | None:
    """The first problem in ``batch``, or None when every series passes every rule.

    A quick test per series (a handful of C-level passes) lets valid series through; a series
    that fails it is examined rule by rule to name the problem and the point.
    """
    devices = {
        Scope.SITE: {SITE_DEVICE},
        Scope.ACCELERATOR: {a.uuid for a in batch.inventory.accelerators},
        Scope.METER: {m.id for m in batch.inventory.meters},
    }
    oldest, newest = limits.oldest_ms, limits.newest_ms
    lookup = CATALOGUE.get
    for index, series in enumerate(batch.series):
        metric = lookup(series.metric)
        if metric is not None and series.device in devices[metric.scope]:
            times, values = zip(*series.points, strict=True)
            total = sum(values)  # NaN when any value is NaN
            if (
                total == total
                and metric.minimum <= min(values)
                and max(values) <= metric.maximum
                and oldest <= times[0]
                and times[-1] <= newest
                and all(map(operator.le, times, islice(times, 1, None)))
            ):
                continue
        problem = _series_problem(index, series, metric, devices, limits)
        if problem is not None:
            return problem
    return None


def _series_problem(
    index: int,
    series: Series,
    metric: Metric | None,
    devices: dict[Scope, set[str]],
    limits: Limits,
) -> Problem | None:
    where = f"series[{index}]"
    if metric is None:
        known = ", ".join(sorted(CATALOGUE))
        return Problem(Rule.UNKNOWN_METRIC,
                       f"unknown metric {series.metric!r}; known: {known}", where + ".metric")
    device_problem = _device_problem(metric, series.device, devices[metric.scope])
    if device_problem is not None:
        return Problem(Rule.UNKNOWN_DEVICE, device_problem, where + ".device")
    return _points_problem(metric, series.points, limits, where)


def _device_problem(metric: Metric, device: str, listed: set[str]) -> str | None:
    if metric.scope is Scope.SITE:
        if device != SITE_DEVICE:
            return f"{metric.name} is site-wide: its device must be {SITE_DEVICE!r}, not {device!r}"
        return None
    if device not in listed:
        return (f"{metric.scope.value} {device!r} of {metric.name} is not in this batch's "
                f"inventory.{metric.scope.value}s")
    return None


def _points_problem(
    metric: Metric, points: Sequence[tuple[int, float]], limits: Limits, where: str
) -> Problem | None:
    times, values = zip(*points, strict=True)
    if not (
        all(map(math.isfinite, values))
        and metric.minimum <= min(values)
        and max(values) <= metric.maximum
    ):
        for j, value in enumerate(values):
            reason = metric.check(value)
            if reason is not None:
                return Problem(Rule.OUT_OF_BOUNDS, f"{metric.name}: {reason}",
                               f"{where}.points[{j}].value")
    if max(times) > limits.newest_ms:
        j = next(j for j, t in enumerate(times) if t > limits.newest_ms)
        ahead = (times[j] - limits.newest_ms) / 1000
        return Problem(Rule.FUTURE_TIMESTAMP,
                       f"timestamp {times[j]} ms is {ahead:.3f} s beyond the allowed clock skew",
                       f"{where}.points[{j}].ts")
    if min(times) < limits.oldest_ms:
        j = next(j for j, t in enumerate(times) if t < limits.oldest_ms)
        return Problem(Rule.STALE_TIMESTAMP,
                       f"timestamp {times[j]} ms is older than the retention period "
                       f"(oldest accepted: {limits.oldest_ms} ms)",
                       f"{where}.points[{j}].ts")
    if not all(map(operator.le, times, islice(times, 1, None))):
        j = next(j for j in range(1, len(times)) if times[j] < times[j - 1])
        return Problem(Rule.OUT_OF_ORDER,
                       f"timestamp {times[j]} ms is before the previous point's {times[j - 1]} ms",
                       f"{where}.points[{j}].ts")
    return None

