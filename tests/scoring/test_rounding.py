"""round6 is Python's round(x, 6), bit for bit, on the vectorised path too."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.scoring.rounding import _MIN_VECTOR, round6


def _bits(xs: list[float]) -> list[str]:
    return [x.hex() for x in xs]  # tells -0.0 from 0.0; NaN as "nan"


def _near_tie(k: int, ulps: int, scale: int) -> float:
    """A value within a few ulps of a rounding tie: (k + 1/2) / 10**6, times a power of ten."""
    x = (k + 0.5) / 1e6 * 10.0**scale
    step = math.inf if ulps > 0 else -math.inf
    for _ in range(abs(ulps)):
        x = math.nextafter(x, step)
    return x


near_ties = st.builds(
    _near_tie, st.integers(-(10**9), 10**9), st.integers(-3, 3), st.integers(-3, 0)
)
scores = st.floats(0.0, 1.0)
anything = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(scores, near_ties, anything), min_size=_MIN_VECTOR, max_size=200))
def test_round6_is_pythons_round(xs: list[float]) -> None:
    got = round6(np.array(xs))
    assert _bits(got) == _bits([round(x, 6) for x in xs])


@settings(max_examples=100, deadline=None)
@given(st.lists(scores, max_size=_MIN_VECTOR - 1))
def test_round6_of_a_few_values_is_pythons_round(xs: list[float]) -> None:
    assert _bits(round6(np.array(xs))) == _bits([round(x, 6) for x in xs])


def test_near_ties_are_where_a_scaled_rint_goes_wrong() -> None:
    """The case the fall-back exists for: numpy's scale-round-divide differs from Python's round
    on values near a tie, and round6 does not."""
    rng = np.random.default_rng(7)
    xs = [
        _near_tie(int(k), int(u), 0)
        for k, u in zip(rng.integers(0, 10**6, 5000), rng.integers(-2, 3, 5000), strict=True)
    ]
    want = _bits([round(x, 6) for x in xs])
    naive = _bits((np.rint(np.array(xs) * 1e6) / 1e6).tolist())
    assert sum(a != b for a, b in zip(naive, want, strict=True)) > 100
    assert _bits(round6(np.array(xs))) == want
