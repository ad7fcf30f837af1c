"""One-pass prediction for the models' pipeline (``StandardScaler | clip | LogisticRegression``).

River's ``Pipeline.predict_proba_one`` builds three dicts per call (scaled, clipped, then the dot
product) with a Python call per step; the model stage scores two models on every case update, and
that was the largest single cost of the flow (benchmarks/throughput.py). This computes the same
probability from the same River state in one pass: one dict of scaled-and-clipped values, the dot
product in River's (Rust) ``VectorDict``. It reads the state only: learning stays River's.

Equal to ``pipeline.predict_proba_one(x)[True]`` up to float rounding (the summation order of the
dot product); ``tests/scoring/test_fastpath.py`` checks it on trained models.
"""

from __future__ import annotations

import math

from river import compose

CLIP = (
    5.0  # standardised values are capped at +-CLIP (salvage.scoring.models.clip, in the pipeline)
)


def predict_proba(pipeline: compose.Pipeline, x: dict[str, float]) -> float:
    """P(True) of a ``StandardScaler | clip | LogisticRegression`` pipeline, as River computes it.

    >>> from river import linear_model, preprocessing
    >>> from salvage.scoring.models import clip
    >>> pipe = compose.Pipeline(
    ...     preprocessing.StandardScaler(), compose.FuncTransformer(clip),
    ...     linear_model.LogisticRegression())
    >>> predict_proba(pipe, {"x": 1.0})  # untrained
    0.5
    >>> for i in range(20):
    ...     pipe.learn_one({"x": float(i % 4), "c": 1.0}, i % 4 >= 2)
    >>> [round(predict_proba(pipe, {"x": v}), 4) for v in (0.0, 3.0, 1e9)]  # 1e9 is clipped
    [0.4752, 0.5248, 0.5914]
    >>> x = {"x": 3.0, "c": 1.0, "unseen": 7.0}  # constant and unseen inputs add nothing
    >>> abs(predict_proba(pipe, x) - pipe.predict_proba_one(x)[True]) < 1e-12
    True
    """
    scaler = pipeline["StandardScaler"]
    lr = pipeline["LogisticRegression"]
    means, variances = scaler.means, scaler.vars
    scaled: dict[str, float] = {}
    for k, v in x.items():
        var = variances.get(k)
        if var:  # unseen or constant so far: River scales it to 0.0 (no contribution)
            s = (v - means[k]) / var**0.5
            scaled[k] = -CLIP if s < -CLIP else CLIP if s > CLIP else s
    z = lr._weights.dot(scaled) + lr.intercept
    if z < -30:  # river.utils.math.sigmoid
        return 0.0
    if z > 30:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))
