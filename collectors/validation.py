"""Pure checks of a parsed report batch: the first problem, named by rule and field path.

Checks run per series with C-level passes over the points (``min``, ``max``, ``all(map(...))``);
only when a pass fails is the series walked point by point to name the first offending one, so
a valid batch costs a few passes over its points and no per-point Python bytecode.

Rules, in the order they are checked for each series:

- the metric is in the catalogue (``jinsuan.contract.metrics``);
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

Two ways in. :func:`checked_samples` is the intake's fast path: it takes a report's ``series``
as a JSON parser returned them and answers only "all good" (the samples as flat columns) or
"not sure" (None), with a few C-level passes over the whole batch. A typical batch holds
thousands of series of a few points each, so anything done per series in Python, pydantic's
per-series model objects included, would cost more than the COPY itself. On "not sure" the
intake takes the canonical path: the wire model names a malformed field, and
:func:`first_problem` names the rule and the point.
"""

from __future__ import annotations

import enum
import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, islice, repeat
from operator import itemgetter

from jinsuan.contract.metrics import CATALOGUE, Metric, Scope
from jinsuan.contract.wire import Batch, Inventory, Series
from jinsuan.kernel.errors import Invalid

SITE_DEVICE = "site"

# As floats: a float-to-float comparison is the interpreter's fast path.
_MINIMUM = {name: float(m.minimum) for name, m in CATALOGUE.items()}
_MAXIMUM = {name: float(m.maximum) for name, m in CATALOGUE.items()}
_SERIES_FIELDS = itemgetter("metric", "device", "points")
_TS = itemgetter(0)
_VALUE = itemgetter(1)


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


@dataclass(frozen=True, slots=True)
class Samples:
    """A batch's samples as flat columns, series after series in the order they were sent.

    Series ``i`` is ``(metrics[i], devices[i])`` and owns ``counts[i]`` consecutive entries of
    ``times`` (unix ms) and ``values``, starting where series ``i - 1``'s end.
    """

    metrics: list[str]
    devices: list[str]
    counts: list[int]
    times: list[int]
    values: list[float]

    @classmethod
    def of(cls, series: Sequence[Series]) -> Samples:
        """The columns of parsed wire-model series (the canonical path)."""
        points = list(chain.from_iterable(s.points for s in series))
        return cls([s.metric for s in series], [s.device for s in series],
                   [len(s.points) for s in series], list(map(_TS, points)),
                   list(map(_VALUE, points)))

    def __len__(self) -> int:
        return len(self.times)

    def spans(self) -> Iterator[tuple[str, str, int, int]]:
        """``(metric, device, start, stop)`` of each series, offsets into the point columns."""
        stops = list(accumulate(self.counts))
        return zip(self.metrics, self.devices, [0, *stops[:-1]], stops, strict=True)


def checked_samples(series: object, inventory: Inventory, limits: Limits) -> Samples | None:
    """``series`` from a parsed JSON body as columns, if it is well formed and breaks no rule.

    Returns None, without saying why, on anything unusual: a missing or extra key, a point
    that is not an ``[integer, number]`` pair, a value a JSON parser gives as another type, a
    rule broken. It is at least as strict as the wire model followed by :func:`first_problem`,
    so what it accepts the canonical path accepts too, with the same values; what it refuses,
    the canonical path names, or accepts after pydantic's lax coercions.
    """
    try:
        return _checked_samples(series, _devices(inventory), limits)
    except (TypeError, KeyError):  # unhashable or missing where a JSON string was expected
        return None


def _checked_samples(
    series: object, devices: dict[Scope, set[str]], limits: Limits
) -> Samples | None:
    if type(series) is not list:
        return None
    if not series:
        return Samples([], [], [], [], [])
    if set(map(type, series)) != {dict} or set(map(len, series)) != {3}:
        return None
    metrics, device_ids, points = (list(c) for c in zip(*map(_SERIES_FIELDS, series),
                                                          strict=True))
    allowed = {name: devices[m.scope] for name, m in CATALOGUE.items()}
    for metric, device in zip(metrics, device_ids, strict=True):
        if device not in allowed.get(metric, ()):
            return None
    if set(map(type, points)) != {list}:
        return None
    counts = list(map(len, points))
    flat = list(chain.from_iterable(points))
    if min(counts) < 1 or set(map(len, flat)) != {2}:
        return None
    # A point is then a list, or a string or object of two items: the types of the items
    # (an object has none at 0 and 1: KeyError) let only [int, number] pairs through.
    times = list(map(_TS, flat))
    values = list(map(_VALUE, flat))
    if set(map(type, times)) != {int} or not set(map(type, values)) <= {float, int}:
        return None
    if not (limits.oldest_ms <= min(times) and max(times) <= limits.newest_ms):
        return None
    # Bounds per point (a NaN fails both comparisons), each series' bound repeated per point.
    lows = chain.from_iterable(map(repeat, map(_MINIMUM.__getitem__, metrics), counts))
    highs = chain.from_iterable(map(repeat, map(_MAXIMUM.__getitem__, metrics), counts))
    if not (all(map(operator.le, lows, values)) and all(map(operator.le, values, highs))):
        return None
    # Each point's time against the next one's, except across series boundaries.
    earlier = times[:-1]
    for stop in accumulate(counts[:-1]):
        earlier[stop - 1] = limits.oldest_ms
    if not all(map(operator.le, earlier, islice(times, 1, None))):
        return None
    return Samples(metrics, device_ids, counts, times, values)


def _devices(inventory: Inventory) -> dict[Scope, set[str]]:
    return {
        Scope.SITE: {SITE_DEVICE},
        Scope.ACCELERATOR: {a.uuid for a in inventory.accelerators},
        Scope.METER: {m.id for m in inventory.meters},
    }


def first_problem(batch: Batch, limits: Limits) -> Problem | None:
    """The first problem in ``batch``, or None when every series passes every rule.

    A quick test per series (a handful of C-level passes) lets valid series through; a series
    that fails it is examined rule by rule to name the problem and the point.
    """
    devices = _devices(batch.inventory)
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

