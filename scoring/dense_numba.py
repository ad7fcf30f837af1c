"""The compiled engine of :mod:`salvage.scoring.dense`: the same functions, the same operations
in the same order, compiled by numba without ``fastmath`` (no reassociation, no fused
multiply-add), so the floats are bit-identical to the plain-Python reference
(``tests/test_dense.py`` checks it on trained streams).

A model's state is a ``(ROWS, P)`` float64 array; ``x`` a float64 vector of the ``n`` base
inputs. Compiled functions are cached on disk (``cache=True``, next to this file in
``__pycache__``): the first import in a fresh environment compiles them (see README, "Dense
model core", for the time it takes), later processes load them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from salvage.scoring.dense import (
    BETA_1,
    BETA_2,
    CLIP,
    CLIP_GRADIENT,
    COUNT,
    EPS,
    INTERCEPT_LR,
    MEAN,
    VAR,
    M,
    V,
    W,
)


@njit(cache=True, inline="always")
def _sigmoid(z):
    if z < -30.0:
        return 0.0
    if z > 30.0:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


@njit(cache=True, inline="always")
def _log_loss_gradient(y, z):
    if y:
        if z > 18.0:
            return -math.exp(-z)
        if z < -18.0:
            return -1.0
        return -1.0 / (math.exp(z) + 1.0)
    zz = -z
    if zz > 18.0:
        return math.exp(-zz)
    if zz < -18.0:
        return 1.0
    return 1.0 / (math.exp(zz) + 1.0)


@njit(cache=True, inline="always")
def _scaled(x, mean, var):
    if var == 0.0:
        return 0.0
    s = (x - mean) / math.sqrt(var)
    if s < -CLIP:
        return -CLIP
    if s > CLIP:
        return CLIP
    return s


@njit(cache=True)
def predict_one(S, intercept, x, returned):
    n = x.shape[0]
    z = 0.0
    for i in range(n):
        vi = S[VAR, i]
        if vi != 0.0:
            z += S[W, i] * _scaled(x[i], S[MEAN, i], vi)
    if returned:
        for i in range(n, 2 * n):
            vi = S[VAR, i]
            if vi != 0.0:
                z += S[W, i] * _scaled(x[i - n], S[MEAN, i], vi)
    return _sigmoid(z + intercept)


@njit(cache=True)
def predict_pair(S1, b1, S2, b2, x, returned):
    """Both models on one update (one call from Python)."""
    return predict_one(S1, b1, x, returned), predict_one(S2, b2, x, returned)


@njit(cache=True)
def predict_batch(S, intercept, X, returned):
    out = np.empty(X.shape[0])
    for k in range(X.shape[0]):
        out[k] = predict_one(S, intercept, X[k], returned[k])
    return out


@njit(cache=True)
def _learn(S, intercept, x, returned, y, weight, rate, l2, scaled):
    n = x.shape[0]
    p = 2 * n if returned else n
    for i in range(p):
        xi = x[i] if i < n else x[i - n]
        c = S[COUNT, i] + 1.0
        S[COUNT, i] = c
        old = S[MEAN, i]
        mi = old + (xi - old) / c
        S[MEAN, i] = mi
        S[VAR, i] = S[VAR, i] + ((xi - old) * (xi - mi) - S[VAR, i]) / c
    z = 0.0
    for i in range(p):
        xi = x[i] if i < n else x[i - n]
        si = _scaled(xi, S[MEAN, i], S[VAR, i])
        scaled[i] = si
        z += S[W, i] * si
    g = _log_loss_gradient(y, z + intercept) * weight
    g = max(min(g, CLIP_GRADIENT), -CLIP_GRADIENT)
    intercept = intercept - INTERCEPT_LR * g
    for i in range(p):
        wi = S[W, i]
        gi = scaled[i] * g + l2 * wi
        mi = BETA_1 * S[M, i] + (1.0 - BETA_1) * gi
        vi = BETA_2 * S[V, i] + (1.0 - BETA_2) * (gi * gi)
        S[M, i] = mi
        S[V, i] = vi
        S[W, i] = wi - (rate * mi) / (math.sqrt(vi) + EPS)
    return intercept


@njit(cache=True)
def learn_batch(S, intercept, X, returned, y, weight, rates, l2):
    """Learn the rows of ``X`` in order; returns the final intercept (``S`` in place)."""
    scaled = np.empty(S.shape[1])
    for k in range(X.shape[0]):
        intercept = _learn(S, intercept, X[k], returned[k], y[k], weight[k], rates[k], l2, scaled)
    return intercept
