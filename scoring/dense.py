"""The models' math over dense vectors: ``StandardScaler | clip | LogisticRegression(Adam, l2)``.

This is the reference semantics of the online models (:mod:`salvage.scoring.models`), written in
plain Python over a fixed input order; :mod:`salvage.scoring.dense_numba` compiles the same
functions, operation for operation, so both give bit-identical floats.

Inputs. A model sees ``n`` base inputs (the feature names in a fixed order, see
``ModelSet.feature_names``) and, once a return is requested, every input again crossed with the
request (``returned:<name>``): ``P = 2n`` slots, of which the first ``n`` are always *present*
and the last ``n`` only on returned updates (their values are the base values). A slot that is
absent is neither learned nor predicted from, exactly as a key missing from River's dicts.

State. One model is six rows of ``P`` floats (:data:`ROWS`) plus the intercept and the number of
optimiser steps taken. The operations replicate River 0.26 (``preprocessing/scale.py``,
``linear_model/base.py`` GLM, ``optim/adam.py``, ``optim/losses.py`` Log, ``utils.math.sigmoid``)
in River's own order:

* scaler (Welford, learn then transform): ``count += 1``, ``mean += (x - old) / count``,
  ``var += ((x - old) * (x - mean) - var) / count``; a slot with zero variance (unseen or
  constant so far) scales to 0.0; values are clipped at ``+-CLIP``;
* ``z = dot(w, scaled) + intercept``; the Log loss gradient (±18 cut-offs), times the sample
  weight, clamped at ``+-1e12``; the intercept moves by ``0.01 * gradient`` *before* the weights;
* Adam, only on present slots (River keeps ``m``/``v`` per key and touches the keys of the
  gradient): ``g = scaled * grad + l2 * w``; ``m = b1 m + (1 - b1) g``;
  ``v = b2 v + (1 - b2) (g g)``; ``w -= (lr_t m) / (sqrt(v) + eps)`` with the bias-corrected
  ``lr_t`` of the step (:func:`adam_rates`, River's expression, computed in Python for both
  engines).

Two deliberate differences from River's floats, both below 1e-12 on a trained stream (see
``tests/test_dense.py``): the dot product sums in slot order (River sums in dict order), and
square roots are ``math.sqrt`` (correctly rounded) where River writes ``v ** 0.5`` (libm ``pow``,
off by one ulp in ~0.1% of values), so that the compiled kernel can match this file exactly.

>>> S = new_state(2)                      # two inputs: four slots
>>> predict(S, 0.0, [1.0, 3.0], False)    # untrained
0.5
>>> b = 0.0
>>> for i in range(40):
...     x = [float(i % 4), 1.0]
...     b = learn(S, b, x, i % 2 == 1, i % 4 >= 2, 1.0, adam_rates(0.1, i, 1)[0], 1e-3)
>>> S[COUNT]                              # the crossed slots saw the returned half only
[40.0, 40.0, 20.0, 20.0]
>>> S[VAR][1]                             # the constant input never scales: no weight
0.0
>>> round(predict(S, b, [3.0, 1.0], False), 4), round(predict(S, b, [0.0, 1.0], False), 4)
(0.9459, 0.0539)
"""

from __future__ import annotations

import math
from collections.abc import MutableSequence, Sequence

LAYOUT_VERSION = 1  # slots: n base inputs (ModelSet.feature_names order), then the n crossed
COUNT, MEAN, VAR, W, M, V = range(6)
ROWS = 6
CLIP = 5.0  # standardised values are capped at +-CLIP
BETA_1 = 0.9  # river.optim.Adam defaults
BETA_2 = 0.999
EPS = 1e-8
INTERCEPT_LR = 0.01  # river LogisticRegression's constant intercept learning rate
CLIP_GRADIENT = 1e12  # river GLM's clip_gradient

State = list[list[float]]  # ROWS rows of P floats (the numba engine: a (ROWS, P) float64 array)


def new_state(n: int) -> State:
    """The state of an untrained model over ``n`` base inputs (``2n`` slots)."""
    return [[0.0] * (2 * n) for _ in range(ROWS)]


def adam_rates(lr: float, steps: int, k: int) -> list[float]:
    """Adam's bias-corrected learning rate for the ``k`` steps after ``steps`` steps, as River
    computes it (``optim/adam.py``: the ``v`` correction, then the ``m`` one).

    >>> adam_rates(0.001, 0, 2)
    [0.00031622776601683816, 0.00023531672532745276]
    """
    out = []
    for n in range(steps, steps + k):
        rate = lr * (1 - BETA_2 ** (n + 1)) ** 0.5
        rate /= 1 - BETA_1 ** (n + 1)
        out.append(rate)
    return out


def sigmoid(z: float) -> float:
    """``river.utils.math.sigmoid`` (0 and 1 beyond +-30), as a float.

    >>> sigmoid(0.0), sigmoid(-31.0), sigmoid(31.0)
    (0.5, 0.0, 1.0)
    """
    if z < -30.0:
        return 0.0
    if z > 30.0:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def log_loss_gradient(y: bool, z: float) -> float:
    """d(log loss)/dz at the raw score ``z``: ``river.optim.losses.Log.gradient`` (weights 1).

    >>> log_loss_gradient(True, 0.0), log_loss_gradient(False, 0.0)
    (-0.5, 0.5)
    >>> log_loss_gradient(True, -20.0), log_loss_gradient(False, 20.0)
    (-1.0, 1.0)
    """
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


def _scaled(x: float, mean: float, var: float) -> float:
    if var == 0.0:
        return 0.0
    s = (x - mean) / math.sqrt(var)
    return -CLIP if s < -CLIP else CLIP if s > CLIP else s


def predict(S: State, intercept: float, x: Sequence[float], returned: bool) -> float:
    """P(True) for the base inputs ``x`` (crossed too when ``returned``)."""
    n = len(x)
    mean, var, w = S[MEAN], S[VAR], S[W]
    z = 0.0
    for i in range(n):
        vi = var[i]
        if vi != 0.0:
            z += w[i] * _scaled(x[i], mean[i], vi)
    if returned:
        for i in range(n, 2 * n):
            vi = var[i]
            if vi != 0.0:
                z += w[i] * _scaled(x[i - n], mean[i], vi)
    return sigmoid(z + intercept)


def learn(
    S: State,
    intercept: float,
    x: Sequence[float],
    returned: bool,
    y: bool,
    weight: float,
    rate: float,
    l2: float,
) -> float:
    """One step of ``pipeline.learn_one(x, y, w=weight)``: updates ``S`` in place and returns the
    new intercept. ``rate``: this step's :func:`adam_rates`."""
    n = len(x)
    p = 2 * n if returned else n
    count, mean, var, w, m, v = S
    scaled: MutableSequence[float] = [0.0] * p
    # the scaler learns, then transforms (river Pipeline.learn_one)
    for i in range(p):
        xi = x[i] if i < n else x[i - n]
        c = count[i] + 1.0
        count[i] = c
        old = mean[i]
        mi = old + (xi - old) / c
        mean[i] = mi
        var[i] = var[i] + ((xi - old) * (xi - mi) - var[i]) / c
    z = 0.0
    for i in range(p):
        xi = x[i] if i < n else x[i - n]
        si = _scaled(xi, mean[i], var[i])
        scaled[i] = si
        z += w[i] * si
    g = log_loss_gradient(y, z + intercept) * weight
    g = max(min(g, CLIP_GRADIENT), -CLIP_GRADIENT)
    intercept = intercept - INTERCEPT_LR * g
    for i in range(p):
        gi = scaled[i] * g + l2 * w[i]
        mi = BETA_1 * m[i] + (1.0 - BETA_1) * gi
        vi = BETA_2 * v[i] + (1.0 - BETA_2) * (gi * gi)
        m[i] = mi
        v[i] = vi
        w[i] = w[i] - (rate * mi) / (math.sqrt(vi) + EPS)
    return intercept


def predict_batch(
    S: State, intercept: float, X: Sequence[Sequence[float]], returned: Sequence[bool]
) -> list[float]:
    """:func:`predict` for each row of ``X``."""
    return [predict(S, intercept, x, r) for x, r in zip(X, returned, strict=True)]


def learn_batch(
    S: State,
    intercept: float,
    X: Sequence[Sequence[float]],
    returned: Sequence[bool],
    y: Sequence[bool],
    weight: Sequence[float],
    rates: Sequence[float],
    l2: float,
) -> float:
    """:func:`learn` on each row in order; returns the final intercept."""
    for i in range(len(X)):
        intercept = learn(S, intercept, X[i], returned[i], y[i], weight[i], rates[i], l2)
    return intercept
