"""The intake's fast parse agrees with the canonical one (wire model, then ``first_problem``).

The fast path may only say "valid, and these are the samples" or "not sure". So: a valid batch
takes it, with exactly the samples the wire model parses; every malformed or rule-breaking
variant is left to the canonical path; and, property-tested over random edits of a valid
body, whatever the fast path accepts the canonical path accepts with the same samples.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from collectors_kit import Agent, now_ms, steady_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from collectors.intake import parse_checked
from collectors.validation import Limits, Samples, first_problem
from jinsuan.contract.signing import new_private_key
from jinsuan.contract.wire import Batch

_AGENT = Agent("agt_fast", 1, new_private_key())


def _limits() -> Limits:
    now = now_ms()
    return Limits(oldest_ms=now - 86_400_000, newest_ms=now + 300_000)


def _document() -> dict[str, Any]:
    batch = _AGENT.batch(steady_series(now_ms() - 120_000, 4), seq=7)
    return json.loads(batch.model_dump_json())


def _canonical(body: bytes, limits: Limits) -> Samples | None:
    """The samples the canonical path stores, or None when it refuses the body."""
    try:
        batch = Batch.model_validate_json(body)
    except ValidationError:
        return None
    if first_problem(batch, limits) is not None:
        return None
    return Samples.of(batch.series)


def test_valid_batch_takes_the_fast_path_with_the_wire_models_samples():
    body = json.dumps(_document()).encode()
    limits = _limits()

    fast = parse_checked(body, limits)

    assert fast is not None
    envelope, samples = fast
    canonical = Batch.model_validate_json(body)
    assert samples == Samples.of(canonical.series)
    assert len(samples) == canonical.sample_count() == (2 * 3 + 2 * 2) * 4  # series x points
    assert envelope == canonical.model_copy(update={"series": []})


def _edit(path: tuple[Any, ...], value: Any = None, *, delete: bool = False):
    def apply(document: dict[str, Any]) -> None:
        *parents, last = path
        target: Any = document
        for key in parents:
            target = target[key]
        if delete:
            del target[last]
        else:
            target[last] = value
    return apply


_LEFT_TO_THE_CANONICAL_PATH = {
    # malformed: the wire model names the field
    "series is null": _edit(("series",), None),
    "series item is a list": _edit(("series", 0), ["accelerator_up", "GPU-0000", []]),
    "extra key in a series": _edit(("series", 0, "unit"), "W"),
    "series without points": _edit(("series", 0, "points"), delete=True),
    "no points": _edit(("series", 0, "points"), []),
    "points is an object": _edit(("series", 0, "points"), {"0": [1, 1.0]}),
    "point of three items": _edit(("series", 0, "points", 1), [now_ms(), 1.0, 2.0]),
    "point is an object": _edit(("series", 0, "points", 1), {"0": now_ms(), "1": 1.0}),
    "point is a string": _edit(("series", 0, "points", 1), "ab"),
    "fractional timestamp": _edit(("series", 0, "points", 1, 0), now_ms() - 60_000.5),
    "boolean value": _edit(("series", 0, "points", 1, 1), True),
    "null value": _edit(("series", 0, "points", 1, 1), None),
    "metric not an identifier": _edit(("series", 0, "metric"), "bad metric!"),
    "device is a number": _edit(("series", 0, "device"), 7),
    "seq below one": _edit(("seq",), 0),
    # lax coercions the wire model accepts: the canonical path stores them
    "timestamp as a string": _edit(("series", 0, "points", 1, 0), str(now_ms() - 60_000)),
    "value as a string": _edit(("series", 0, "points", 1, 1), "1.0"),
    "integral float timestamp": _edit(("series", 0, "points", 0, 0), float(now_ms() - 90_000)),
    # rules: first_problem names them
    "unknown metric": _edit(("series", 0, "metric"), "gpu_watts"),
    "device not in the inventory": _edit(("series", 0, "device"), "GPU-9999"),
    "value out of bounds": _edit(("series", 1, "points", 2, 1), 25_000.0),
    "negative counter": _edit(("series", 2, "points", 0, 1), -1.0),
    "timestamp in the future": _edit(("series", 0, "points", 3, 0), now_ms() + 3_600_000),
    "stale timestamp": _edit(("series", 3, "points", 0, 0), now_ms() - 3 * 86_400_000),
    "out of order": _edit(("series", 0, "points", 2, 0), now_ms() - 119_000),
}


@pytest.mark.parametrize("edit", _LEFT_TO_THE_CANONICAL_PATH.values(),
                         ids=_LEFT_TO_THE_CANONICAL_PATH.keys())
def test_anything_unusual_is_left_to_the_canonical_path(edit):
    document = _document()
    edit(document)
    body = json.dumps(document).encode()

    assert parse_checked(body, _limits()) is None


@pytest.mark.parametrize("body", [b"", b"[]", b"{", b'"batch"', b"null"])
def test_a_body_that_is_not_a_json_object_is_left_to_the_canonical_path(body):
    assert parse_checked(body, _limits()) is None


def test_nan_is_left_to_the_canonical_path_which_names_the_point():
    document = _document()
    document["series"][1]["points"][2][1] = math.nan
    body = json.dumps(document).encode()  # Python writes the NaN literal pydantic accepts
    limits = _limits()

    assert parse_checked(body, limits) is None
    problem = first_problem(Batch.model_validate_json(body), limits)
    assert problem is not None and problem.field == "series[1].points[2].value"


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6)
    | st.sampled_from(["GPU-0001", "fac", "site", "accelerator_up", "meter_power_watts"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=2),
    max_leaves=4,
)
# For a point's time or value: mostly numbers near what is valid, bounds and their neighbours.
_POINT_ITEMS = (
    st.integers(now_ms() - 200_000, now_ms() + 400_000)
    | st.floats(-100, 3_000)
    | st.sampled_from([0, 1, -1, 0.5, 2_000, 2_000.001, 1e18, 10**18 + 1, 2**40, 2**40 + 1,
                       -40, -40.5, 150, 1e300, math.inf, -math.inf, math.nan, True, False,
                       float(now_ms() - 50_000), now_ms() - 50_000.5])
    | _JSON_VALUES
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_whatever_the_fast_path_accepts_the_canonical_path_stores_alike(data):
    document = _document()
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = _paths(document)
        in_points = [p for p in paths if len(p) == 5 and p[2] == "points"]
        anywhere = st.sampled_from(paths)
        path = data.draw(st.sampled_from(in_points) | anywhere if in_points else anywhere,
                         label="path")
        if data.draw(st.booleans(), label="delete") and not isinstance(path[-1], int):
            _edit(path, delete=True)(document)
        else:
            in_point = len(path) == 5 and path[2] == "points"
            values = _POINT_ITEMS if in_point else _JSON_VALUES
            _edit(path, data.draw(values, label="value"))(document)
    body = json.dumps(document).encode()
    limits = _limits()

    fast = parse_checked(body, limits)

    if fast is not None:
        assert fast[1] == _canonical(body, limits)
