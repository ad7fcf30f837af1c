"""The one-pass predictor gives River's pipeline probability on trained models."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.scoring.fastpath import predict_proba
from salvage.scoring.models import ModelConfig, _pipeline, clip


def _trained(seed: int, n: int = 400):
    rng = random.Random(seed)
    pipe = _pipeline(ModelConfig())
    names = [f"f{i}" for i in range(30)]
    for i in range(n):
        x = {k: rng.gauss(j % 5, 1 + j % 3) for j, k in enumerate(names) if rng.random() < 0.7}
        x["rare_flag"] = 1.0 if i == n // 2 else 0.0  # once: standardised far past the clip
        x["constant"] = 3.0
        y = sum(x.get(k, 0.0) for k in names[:5]) + rng.gauss(0, 2) > 10
        pipe.learn_one(x, y, w=rng.choice([1.0, 3.0]))
    return pipe, names


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 5),
    values=st.dictionaries(
        st.sampled_from([*(f"f{i}" for i in range(30)), "rare_flag", "constant", "never_seen"]),
        st.floats(-1e6, 1e6, allow_nan=False),
        max_size=33,
    ),
)
def test_equals_the_river_pipeline(seed, values):
    pipe, _ = _trained(seed)
    want = pipe.predict_proba_one(dict(values)).get(True, 0.0)
    assert abs(predict_proba(pipe, values) - want) <= 1e-9 * max(1.0, abs(want))


def test_an_untrained_pipeline_says_one_half():
    pipe = _pipeline(ModelConfig())
    assert predict_proba(pipe, {"a": 1.0}) == pipe.predict_proba_one({"a": 1.0})[True] == 0.5


def test_the_clip_matches_the_models_clip():
    assert clip({"a": 99.0, "b": -99.0, "c": 1.5}) == {"a": 5.0, "b": -5.0, "c": 1.5}
    pipe, names = _trained(1)
    x = {"rare_flag": 1.0, names[0]: 1.0}  # the rare flag standardises to ~20: clipped to 5
    scaler = pipe["StandardScaler"]
    assert (1.0 - scaler.means["rare_flag"]) / scaler.vars["rare_flag"] ** 0.5 > 15
    assert abs(predict_proba(pipe, x) - pipe.predict_proba_one(x)[True]) < 1e-12
