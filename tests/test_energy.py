"""Energy over a period, coverage and PUE (collectors.energy)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from collectors.energy import (
    Integral,
    coverage,
    integrate_counter,
    integrate_power,
    max_gap_for,
    nominal_interval,
    pue,
    time_weighted_mean,
)

INF = math.inf


def close(a: float, b: float, scale: float = 1.0) -> bool:
    """Equal up to float rounding, relative to ``scale`` (the magnitude of the summed terms)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(scale, 1.0))


# --- hand-computed cases -------------------------------------------------------------------


def test_power_with_irregular_sampling_and_a_gap_by_hand() -> None:
    points = [(-5, 100), (5, 200), (15, 300), (22, 300), (30, 100), (80, 100), (90, 500),
              (105, 500)]
    times = [t for t, _ in points]
    # Differences: 10, 10, 7, 8, 50, 10, 15 -> sorted 7, 8, 10, 10, 10, 15, 50 -> median 10.
    assert nominal_interval(times) == 10
    # Three intervals: 30 s. The 50 s interval from 30 to 80 is a gap.
    max_gap = max_gap_for(times)
    assert max_gap == 30

    # Window [0, 100):
    # [-5, 5]: 100 W -> 200 W, slope 10 W/s; p(0) = 100 + 10*5 = 150; inside [0, 5]:
    #          (150 + 200)/2 * 5 = 875 J, 5 s covered.
    # [5, 15]: (200 + 300)/2 * 10 = 2500 J, 10 s.
    # [15, 22]: (300 + 300)/2 * 7 = 2100 J, 7 s.
    # [22, 30]: (300 + 100)/2 * 8 = 1600 J, 8 s.
    # [30, 80]: 50 s > 30 s: a gap, 0 J, 0 s.
    # [80, 90]: (100 + 500)/2 * 10 = 3000 J, 10 s.
    # [90, 105]: constant 500 W; inside [90, 100]: 500 * 10 = 5000 J, 10 s.
    expected_j = (150 + 200) / 2 * 5 + (200 + 300) / 2 * 10 + (300 + 300) / 2 * 7 \
        + (300 + 100) / 2 * 8 + (100 + 500) / 2 * 10 + 500 * 10
    expected_s = 5 + 10 + 7 + 8 + 10 + 10
    assert expected_j == 15075 and expected_s == 50  # the arithmetic above, summed

    result = integrate_power(points, 0, 100, max_gap)
    assert close(result.joules, expected_j)
    assert result.covered_s == expected_s
    assert coverage(result.covered_s, 0, 100) == 0.5

    mean, covered = time_weighted_mean(points, 0, 100, max_gap)
    assert covered == expected_s
    assert mean is not None and close(mean, expected_j / expected_s)


def test_pue_from_irregular_counters_with_gaps_by_hand() -> None:
    # Facility meter, about 150 kW, readings in joules; the window is the hour [0, 3600).
    facility = [(-30, 0.0), (270, 4.5e7), (570, 9.0e7), (2370, 3.6e8), (2670, 4.05e8),
                (3270, 4.95e8), (3630, 5.49e8)]
    # Differences 300, 300, 1800, 300, 600, 360 -> median (300 + 360)/2 = 330 -> max gap 990;
    # the 1800 s interval [570, 2370] is a gap: its increase counts, its time is not covered.
    facility_gap = max_gap_for([t for t, _ in facility])
    assert facility_gap == 990
    # [-30, 270]: 4.5e7 J over 300 s, 270 s inside -> 4.5e7 * 270/300
    # [270, 570]: 4.5e7            [570, 2370]: 2.7e8 (gap: not covered)
    # [2370, 2670]: 4.5e7          [2670, 3270]: 9.0e7
    # [3270, 3630]: 5.4e7 J over 360 s, 330 s inside -> 5.4e7 * 330/360
    facility_j = 4.5e7 * 270 / 300 + 4.5e7 + 2.7e8 + 4.5e7 + 9.0e7 + 5.4e7 * 330 / 360
    facility_s = 270 + 300 + 0 + 300 + 600 + 330

    # IT meter, 100..130 kW, an independent irregular schedule and its own gap.
    it = [(-50, 1.0e9), (400, 1.054e9), (900, 1.104e9), (1300, 1.156e9), (3500, 1.431e9),
          (3650, 1.449e9)]
    # Differences 450, 500, 400, 2200, 150 -> median 450 -> max gap 1350; [1300, 3500] is a gap.
    it_gap = max_gap_for([t for t, _ in it])
    assert it_gap == 1350
    # [-50, 400]: 5.4e7 J over 450 s, 400 s inside -> 5.4e7 * 400/450
    # [400, 900]: 5.0e7    [900, 1300]: 5.2e7    [1300, 3500]: 2.75e8 (gap: not covered)
    # [3500, 3650]: 1.8e7 J over 150 s, 100 s inside -> 1.8e7 * 100/150
    it_j = 5.4e7 * 400 / 450 + 5.0e7 + 5.2e7 + 2.75e8 + 1.8e7 * 100 / 150
    it_s = 400 + 500 + 400 + 0 + 100

    got_facility = integrate_counter(facility, 0, 3600, facility_gap)
    got_it = integrate_counter(it, 0, 3600, it_gap)
    assert close(got_facility.joules, facility_j, 1e9)
    assert close(got_it.joules, it_j, 1e9)
    assert got_facility.covered_s == facility_s
    assert got_it.covered_s == it_s

    ratio = pue(got_facility.joules, got_it.joules)
    assert ratio is not None and close(ratio, facility_j / it_j)


def test_pue_of_a_period_is_the_ratio_of_totals_not_the_mean_of_ratios() -> None:
    # Two hours: (facility, IT) = (200, 100) then (1300, 1000): PUE 2.0 then 1.3.
    # The period's PUE is (200 + 1300) / (100 + 1000) = 1500/1100, not (2.0 + 1.3)/2 = 1.65.
    hours = [(200.0, 100.0), (1300.0, 1000.0)]
    total = pue(sum(f for f, _ in hours), sum(i for _, i in hours))
    assert total is not None and close(total, 1500 / 1100)
    assert not close(total, 1.65)


def test_pue_without_it_energy_is_none() -> None:
    assert pue(100.0, 0.0) is None
    assert pue(100.0, None) is None
    assert pue(None, 100.0) is None
    assert pue(0.0, 100.0) == 0.0


@pytest.mark.parametrize(("facility", "it"), [(-1.0, 10.0), (10.0, -1.0), (math.nan, 1.0),
                                              (1.0, math.inf)])
def test_pue_rejects_impossible_energy(facility: float, it: float) -> None:
    with pytest.raises(ValueError, match="energy must be a finite number"):
        pue(facility, it)


# --- counter resets --------------------------------------------------------------------------


def test_counter_reset_inside_the_window_sums_both_segments() -> None:
    # 100 -> 600: +500 J; 600 -> 50: reset, 50 J since the restart; 50 -> 250: +200 J.
    points = [(0, 100.0), (10, 600.0), (20, 50.0), (30, 250.0)]
    whole = integrate_counter(points, 0, 30, INF)
    assert whole == Integral(500 + 50 + 200, 30)
    # [5, 25): half of each outer interval: 500/2 + 50 + 200/2.
    part = integrate_counter(points, 5, 25, INF)
    assert close(part.joules, 500 / 2 + 50 + 200 / 2)
    assert part.covered_s == 20


def test_counter_reset_inside_a_long_gap_counts_the_value_after_it() -> None:
    # Readings every 10 s, then a 100 s silence during which the meter restarted.
    points = [(0, 1000.0), (10, 1100.0), (20, 1200.0), (120, 300.0), (130, 400.0)]
    max_gap = max_gap_for([t for t, _ in points])
    assert max_gap == 30  # differences 10, 10, 100, 10: median 10
    result = integrate_counter(points, 0, 130, max_gap)
    # 100 + 100 + 300 (only what was counted after the restart) + 100; the gap is not covered.
    assert close(result.joules, 100 + 100 + 300 + 100)
    assert result.covered_s == 30


def test_an_interval_of_exactly_three_nominal_intervals_is_still_bridged() -> None:
    # "A gap longer than three sample intervals is not bridged": 30 s after 10 s samples is not
    # longer, 31 s is.
    exact = [(0, 10.0), (10, 10.0), (20, 10.0), (50, 10.0), (60, 10.0)]
    longer = [(0, 10.0), (10, 10.0), (20, 10.0), (51, 10.0), (61, 10.0)]
    assert max_gap_for([t for t, _ in exact]) == 30
    assert max_gap_for([t for t, _ in longer]) == 30
    assert integrate_power(exact, 0, 60, 30) == Integral(600, 60)
    assert integrate_power(longer, 0, 61, 30) == Integral(300, 30)
    counter = [(t, 10.0 * t) for t, _ in exact]
    assert integrate_counter(counter, 0, 60, 30) == Integral(600, 60)


def test_power_is_not_bridged_across_a_gap_but_counter_energy_is() -> None:
    power = [(0, 10.0), (10, 10.0), (100, 10.0), (110, 10.0)]
    counter = [(0, 0.0), (10, 100.0), (100, 1000.0), (110, 1100.0)]
    assert integrate_power(power, 0, 110, 30) == Integral(200, 20)
    assert integrate_counter(counter, 0, 110, 30) == Integral(1100, 20)


counter_steps = st.lists(
    st.tuples(
        st.floats(0.01, 100.0),  # time step
        st.floats(0.0, 1e4),  # increase, or the value after a reset
        st.booleans(),  # reset before this reading
    ),
    min_size=1,
    max_size=60,
)


def build_counter(
    first: float, steps: list[tuple[float, float, bool]]
) -> list[tuple[float, float]]:
    t, value = 0.0, first
    points = [(t, value)]
    for dt, amount, reset in steps:
        t += dt
        value = amount if reset else value + amount
        points.append((t, value))
    return points


@given(st.floats(0.0, 1e6), counter_steps, st.floats(-50, 3000), st.floats(0, 3000),
       st.floats(0, 300))
def test_counter_energy_is_never_negative(
    first: float, steps: list[tuple[float, float, bool]], start: float, length: float,
    max_gap: float,
) -> None:
    end = start + length
    result = integrate_counter(build_counter(first, steps), start, end, max_gap)
    assert result.joules >= 0
    assert 0 <= result.covered_s <= end - start


# --- additivity: splitting a window does not change the totals --------------------------------

power_steps = st.lists(
    st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 2000.0)),  # (time step, watts)
    min_size=1,
    max_size=60,
)


def build_power(steps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    t = 0.0
    points = []
    for dt, watts in steps:
        t += dt
        points.append((t, watts))
    return points


@st.composite
def windows(draw: st.DrawFn) -> tuple[float, float, float]:
    """a <= b <= c, reaching before and after the generated points."""
    a, b, c = sorted(draw(st.lists(st.floats(-100, 6500), min_size=3, max_size=3)))
    return a, b, c


@given(power_steps, windows(), st.floats(0, 300))
def test_power_integral_is_additive_over_split_windows(
    steps: list[tuple[float, float]], split: tuple[float, float, float], max_gap: float
) -> None:
    points = build_power(steps)
    a, b, c = split
    whole = integrate_power(points, a, c, max_gap)
    left = integrate_power(points, a, b, max_gap)
    right = integrate_power(points, b, c, max_gap)
    scale = 2000.0 * (c - a)
    assert close(whole.joules, left.joules + right.joules, scale)
    assert close(whole.covered_s, left.covered_s + right.covered_s, c - a)
    assert 0 <= whole.covered_s <= c - a


@given(st.floats(0.0, 1e6), counter_steps, windows(), st.floats(0, 300))
def test_counter_integral_is_additive_over_split_windows(
    first: float, steps: list[tuple[float, float, bool]], split: tuple[float, float, float],
    max_gap: float,
) -> None:
    points = build_counter(first, steps)
    a, b, c = split
    whole = integrate_counter(points, a, c, max_gap)
    left = integrate_counter(points, a, b, max_gap)
    right = integrate_counter(points, b, c, max_gap)
    assert close(whole.joules, left.joules + right.joules, 1e4 * len(steps))
    assert close(whole.covered_s, left.covered_s + right.covered_s, c - a)


def test_counter_readings_at_the_same_instant_belong_to_exactly_one_window() -> None:
    points = [(0, 0.0), (10, 100.0), (10, 130.0), (20, 230.0)]
    left = integrate_counter(points, 0, 10, INF)
    right = integrate_counter(points, 10, 20, INF)
    assert left == Integral(100, 10)
    assert right == Integral(30 + 100, 10)


# --- constant power, and counter versus power ------------------------------------------------


@given(st.floats(0, 2000), st.lists(st.floats(0.01, 60), min_size=1, max_size=80),
       st.integers(0, 1000), st.integers(0, 1000))
def test_constant_power_over_a_covered_window_is_power_times_duration(
    watts: float, steps: list[float], start_permille: int, end_permille: int,
) -> None:
    times = [-1.0]
    for dt in steps:
        times.append(times[-1] + dt)
    times.append(times[-1] + 1.0)
    span = times[-1] - 1.0  # the window lies in [0, span], strictly inside the samples
    start, end = sorted((start_permille / 1000 * span, end_permille / 1000 * span))
    points = [(t, watts) for t in times]
    result = integrate_power(points, start, end, INF)
    assert close(result.joules, watts * (end - start), watts * span)
    assert close(result.covered_s, end - start, span)
    mean, covered = time_weighted_mean(points, start, end, INF)
    if end > start:
        assert mean is not None and close(mean, watts, watts)
    assert close(covered, end - start, span)


def exact_counter(power: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The counter a meter would show for this power: trapezoids summed from zero."""
    counter = [(power[0][0], 0.0)]
    for (t0, p0), (t1, p1) in itertools.pairwise(power):
        counter.append((t1, counter[-1][1] + (p0 + p1) / 2 * (t1 - t0)))
    return counter


@given(power_steps.filter(lambda s: len(s) >= 2), st.data())
def test_counter_from_integrated_power_matches_power_integral_at_sample_edges(
    steps: list[tuple[float, float]], data: st.DataObject
) -> None:
    power = build_power(steps)
    counter = exact_counter(power)
    i, j = sorted(data.draw(st.lists(st.integers(0, len(power) - 1), min_size=2, max_size=2)))
    start, end = power[i][0], power[j][0]
    from_power = integrate_power(power, start, end, INF)
    from_counter = integrate_counter(counter, start, end, INF)
    scale = 2000.0 * (end - start)
    assert close(from_counter.joules, from_power.joules, scale)
    assert close(from_counter.covered_s, from_power.covered_s, end - start)


@given(power_steps.filter(lambda s: len(s) >= 2), st.floats(-10, 6100), st.floats(0, 6100))
def test_counter_from_integrated_power_matches_power_integral_anywhere_up_to_edge_shape(
    steps: list[tuple[float, float]], start: float, length: float
) -> None:
    """Between samples a counter is interpolated linearly (constant power) while power is
    interpolated linearly (a trapezoid), so a window edge inside an interval of length dt
    from p0 to p1 may differ by at most dt * |p1 - p0| / 8; anywhere else they agree."""
    power = build_power(steps)
    assume(power[-1][0] > power[0][0])
    counter = exact_counter(power)
    end = start + length
    from_power = integrate_power(power, start, end, INF)
    from_counter = integrate_counter(counter, start, end, INF)
    edge_bound = 0.0
    for (t0, p0), (t1, p1) in itertools.pairwise(power):
        if t0 < start < t1 or t0 < end < t1:
            edge_bound += (t1 - t0) * abs(p1 - p0) / 8
    scale = 2000.0 * (power[-1][0] - power[0][0])
    assert abs(from_counter.joules - from_power.joules) <= edge_bound + 1e-9 * scale
    assert close(from_counter.covered_s, from_power.covered_s, length)


# --- helpers and bad input ---------------------------------------------------------------


def test_nominal_interval_is_the_median_of_positive_differences() -> None:
    assert nominal_interval([]) is None
    assert nominal_interval([5.0]) is None
    assert nominal_interval([5.0, 5.0]) is None
    assert nominal_interval([0, 1, 1, 3, 6, 106]) == 2.5  # 1, 2, 3, 100 (the repeat ignored)
    assert max_gap_for([0, 1, 1, 3, 6, 106]) == 7.5
    assert max_gap_for([7.0]) == 0.0


def test_empty_and_outside_windows_give_nothing() -> None:
    points = [(0, 10.0), (10, 20.0)]
    assert integrate_power([], 0, 10, INF) == Integral(0, 0)
    assert integrate_counter([], 0, 10, INF) == Integral(0, 0)
    assert integrate_power(points, 20, 30, INF) == Integral(0, 0)
    assert integrate_counter(points, -30, -20, INF) == Integral(0, 0)
    assert integrate_power(points, 5, 5, INF) == Integral(0, 0)
    assert time_weighted_mean(points, 20, 30, INF) == (None, 0)


def test_unsorted_points_are_rejected_with_their_position() -> None:
    points = [(0, 1.0), (10, 2.0), (5, 3.0)]
    with pytest.raises(ValueError, match="point 2 at 5 is before 10"):
        integrate_power(points, 0, 10, INF)
    with pytest.raises(ValueError, match="point 2 at 5 is before 10"):
        integrate_counter(points, 0, 10, INF)
    with pytest.raises(ValueError, match=r"time 2 \(5\) is before 10"):
        nominal_interval([t for t, _ in points])


def test_bad_values_and_windows_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"point 1 \(10, nan\) is not finite"):
        integrate_power([(0, 1.0), (10, math.nan)], 0, 10, INF)
    with pytest.raises(ValueError, match="counter cannot be negative"):
        integrate_counter([(0, 1.0), (10, -2.0)], 0, 10, INF)
    with pytest.raises(ValueError, match="start <= end"):
        integrate_power([(0, 1.0)], 10, 0, INF)
    with pytest.raises(ValueError, match="max_gap must be >= 0"):
        integrate_counter([(0, 1.0)], 0, 10, -1)
    with pytest.raises(ValueError, match="non-empty window"):
        coverage(0, 5, 5)
