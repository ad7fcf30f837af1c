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


# ---------------------------------------------------------------- one model-stage call at a time
# What the model stage does per update in Python (scoring/baseline.py's rules, Inputs.prepare,
# predict_pair), over the matrix of one call's updates: the same operations in the same order.


@njit(cache=True, inline="always")
def _min(a, b):
    return b if b < a else a  # Python's min(a, b): the first unless the second is smaller


@njit(cache=True, inline="always")
def _max(a, b):
    return b if b > a else a  # Python's max(a, b)


@njit(cache=True, inline="always")
def _rule_sigmoid(z):
    if z < -30:
        return 1e-13
    return 1.0 / (1.0 + math.exp(-z))


@njit(cache=True)
def rule_scores(X, c):
    """The rule baseline (scoring/baseline.py ``recoverability`` and ``abuse``, unrounded) for
    each row of ``X``; ``c``: the columns of ``baseline.RULE_FEATURES`` in ``X``."""
    k = X.shape[0]
    rec = np.empty(k)
    ab = np.empty(k)
    for r in range(k):
        f = X[r]
        returned = f[c[0]]
        z = 2.4
        z -= 0.025 * _min(f[c[1]], 120.0)
        z -= 0.6 * _min(f[c[2]], 3.0)
        z -= 0.25 * _min(f[c[3]], 4.0)
        z -= 0.3 * _min(f[c[4]], 3.0)
        z += 0.6 * f[c[5]]
        z -= 1.2 * f[c[6]]
        z -= 2.2 * returned
        z += returned * (1.4 * f[c[7]] + 0.9 * f[c[8]])
        z -= returned * (1.0 * f[c[9]] + 0.8 * f[c[10]] + 0.5 * f[c[11]])
        z -= 0.8 * _min(f[c[12]], 1.0)
        rec[r] = _rule_sigmoid(z)
        z = -4.0
        z += 0.9 * _min(f[c[13]], 3.0)
        z += 0.8 * _min(f[c[14]], 3.0)
        z += 1.0 * _min(f[c[15]], 2.0)
        z += 2.2 * f[c[16]] * f[c[17]]
        z += 0.8 * _min(f[c[18]], 2.0)
        z += 0.9 * _min(f[c[19]], 2.0)
        z += 1.0 * f[c[20]] * (1.0 if f[c[21]] > 18 else 0.0)
        z += 1.2 * _max(f[c[22]] - 0.4, 0.0) * (1.0 if f[c[23]] >= 3 else 0.0)
        ab[r] = _rule_sigmoid(z)
    return rec, ab


@njit(cache=True, inline="always")
def _logit(p):
    q = _min(_max(p, 1e-6), 1 - 1e-6)
    return math.log(q / (1 - q))


@njit(cache=True)
def prepare_rows(X, rec, ab, i_rec, i_abuse, log_slots, i_returned):
    """Complete the raw rows in place (the rule logits of the rounded rule scores ``rec`` /
    ``ab``, as ``Inputs.raw``) and return the model inputs (``Inputs.prepare``) and the
    returned flags (``Inputs.returned``)."""
    k = X.shape[0]
    P = X.copy()
    R = np.zeros(k, dtype=np.bool_)
    for r in range(k):
        if i_rec >= 0:
            X[r, i_rec] = _logit(rec[r])
            P[r, i_rec] = X[r, i_rec]
        if i_abuse >= 0:
            X[r, i_abuse] = _logit(ab[r])
            P[r, i_abuse] = X[r, i_abuse]
        for i in log_slots:
            v = X[r, i]
            P[r, i] = math.copysign(math.log1p(abs(v)), v)
        if i_returned >= 0:
            R[r] = X[r, i_returned] != 0.0
    return P, R


@njit(cache=True)
def predict_pairs(S1, b1, S2, b2, X, returned, lo, hi):
    """:func:`predict_pair` on rows ``lo`` to ``hi`` (excluded): a ``(hi - lo, 2)`` array."""
    out = np.empty((hi - lo, 2))
    for k in range(lo, hi):
        out[k - lo, 0] = predict_one(S1, b1, X[k], returned[k])
        out[k - lo, 1] = predict_one(S2, b2, X[k], returned[k])
    return out
