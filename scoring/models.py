"""Online River models for recoverability and abuse: delayed labels, progressive validation,
shadow-first promotion and drift demotion. Plain Python; the flow calls it in event-time order.

Life of a prediction (see :class:`ModelSet`):

1. ``score(order, t, x, rules)``: both models predict on the features known *now*; the policy acts
   on the model only once it has been promoted, else on the rule baseline. A compact snapshot of
   ``x`` and both predictions is kept for the order (at most three: the first risk signal, the
   return request, and the latest update). The rule scores are model inputs.
2. ``label(order, t, outcome facts)``: when the case closes, its stored snapshots are first scored
   against the label (progressive validation: the predictions were made before the label existed),
   then the models learn from those snapshots — never from features computed at or after the
   outcome (the closing update itself is not snapshotted). The abuse label is often *shown* before
   the close (a grade with or without abuse flags, a reviewer's verdict): abuse learns only from
   snapshots taken strictly before the first such event (:func:`abuse_revealed_at`), else the
   label itself (the grade's flag, counted in ``customer_abuse_flags``) would sit in the inputs.
3. Every labelled pair updates rolling ROC AUC, log loss and Brier for the model *and* for the rule
   baseline on the same cases. A shadow model is promoted when, over at least ``min_labels`` labels,
   its rolling AUC beats the baseline's by ``promote_margin``; an active model is demoted when ADWIN
   detects a rise in its error, or its AUC falls below the baseline's. Both are events with reasons.
"""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_right
from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, cast

import numpy as np
from river import compose, drift, linear_model, metrics, optim, preprocessing

from salvage.fastpickle import fast_pickle, slot_maker
from salvage.scoring import baseline, dense
from salvage.scoring.baseline import RULE_FEATURES, RULES_VERSION, ScoreResult
from salvage.scoring.dense import CLIP
from salvage.scoring.rounding import round6

RETAINED = frozenset({"kept", "exchange", "store_credit", "return_cancelled"})
LOST = frozenset({"refund", "chargeback"})


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Learning, evaluation and promotion settings shared by both models (frozen).

    >>> cfg = ModelConfig(min_labels=200)
    >>> cfg.min_labels, cfg.promote_margin, cfg.window, cfg.verdict_wait_us
    (200, 0.03, 1000, 0)
    >>> ModelSet(cfg).version  # both models start in shadow: the rule baseline drives
    'rules-v1'
    """

    min_labels: int = 1000  # labels since the last change before a promotion is considered
    promote_margin: float = 0.03  # rolling AUC margin over the rule baseline
    demote_margin: float = 0.0  # active model demoted when its AUC < baseline - this
    window: int = 1000  # rolling window for AUC / log loss / Brier
    learning_rate: float = 0.001  # Adam; 0.01 tracked the delayed label mix (AUC -0.1)
    l2: float = 1e-3
    abuse_weight_cap: float = 10.0  # positives weighted by min(cap, negatives/positives)
    adwin_delta: float = 0.0005
    # what "the rules flag" means for the promotion gate (DESIGN §11: models never make decisions
    # worse): abuse flagged at or above the policy's default abuse_block, recoverability flagged
    # (at risk) at or below this score
    abuse_flag: float = 0.5
    recoverability_flag: float = 0.5
    # "review requested": a claimed case that closes while a verdict or a grade may still come
    # (the abuse score was at/above abuse_flag, so the policy routed it to human review, or it was
    # refunded before grading) keeps its abuse snapshots this long for a late verdict / grade /
    # chargeback to label it; then the close-time label is taken. 0: label at the close.
    verdict_wait_us: int = 0
    # the dense core's engine (scoring/dense.py): "numba" (compiled) or "python" (the reference);
    # both give bit-identical floats
    engine: str = "numba"


class RollingEval:
    """Rolling ROC AUC, log loss and Brier score over the last ``window`` labelled predictions.

    AUC is undefined when the window holds one class only (River's RollingROCAUC then reports 0):
    :meth:`auc_value` returns None, the summary says ``"auc": None`` ("no value"), and nothing
    compares against it (promotion and demotion wait).

    Log loss and Brier are not River's ``utils.Rolling(metrics.LogLoss, ...)``: River clamps a
    probability at 1e-15 (here 1e-7, so one confident mistake weighs ~16, not ~35) and its rolling
    mean reverts incrementally (float drift over millions of labels), where this window sums its
    last ``window`` terms exactly when a summary is asked for (rarely: model events, exports);
    the published numbers would change. River has no Brier metric."""

    def __init__(self, window: int) -> None:
        self.auc = metrics.RollingROCAUC(window_size=window)
        # (logloss, brier, y) of the last `window` labelled predictions
        self.window: deque[tuple[float, float, bool]] = deque(maxlen=window)
        self.window_positives = 0
        self.n = 0

    def update(self, y: bool, p: float) -> None:
        self.n += 1
        self.auc.update(y, p)
        q = min(max(p, 1e-7), 1 - 1e-7)
        if len(self.window) == self.window.maxlen and self.window[0][2]:
            self.window_positives -= 1
        self.window.append((-math.log(q if y else 1 - q), (p - float(y)) ** 2, bool(y)))
        self.window_positives += bool(y)

    def auc_value(self) -> float | None:
        """The rolling AUC, or None while the window lacks positives or negatives."""
        if not 0 < self.window_positives < len(self.window):
            return None
        return float(self.auc.get())

    def summary(self) -> dict[str, float | None]:
        k = len(self.window) or 1
        auc = self.auc_value()
        return {
            "auc": None if auc is None else round(auc, 4),
            "logloss": round(sum(w[0] for w in self.window) / k, 4),
            "brier": round(sum(w[1] for w in self.window) / k, 4),
            "labels": float(self.n),
        }


LOG_SCALED = frozenset(
    {
        "order_value",
        "margin",
        "slippage_hours",
        "hours_since_last_scan",
        "days_since_delivery",
        "customer_net_value",
        "customer_tenure_days",
        "customer_orders",
    }
)


def prepare(x: dict[str, float]) -> dict[str, float]:
    """Model inputs: heavy-tailed money and durations on a signed log scale; once a return is
    requested, every input is also crossed with it (``returned:<name>``), so the linear model
    learns separate weights before and after the request (what a delay or a sizing question
    means for a return in progress is not what it means for a parcel in transit)."""
    out = {
        k: (math.copysign(math.log1p(abs(v)), v) if k in LOG_SCALED else v) for k, v in x.items()
    }
    if x.get("return_requested"):
        out.update({f"returned:{k}": v for k, v in list(out.items())})
    return out


def logit(p: float) -> float:
    q = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(q / (1 - q))


def with_rules(x: dict[str, float], rules: ScoreResult) -> dict[str, float]:
    """The model's inputs: the features plus the rule baseline's scores (as logits). The model
    starts from what the rules know and learns the brand's corrections to them (stacking)."""
    return x | {
        "rules_recoverability_logit": logit(rules.recoverability),
        "rules_abuse_logit": logit(rules.abuse),
    }


def clip(x: dict[str, float]) -> dict[str, float]:
    """Standardised values of rare flags explode (a 1-in-1000 flag becomes ~30): cap them."""
    return {k: -CLIP if v < -CLIP else CLIP if v > CLIP else v for k, v in x.items()}


def _pipeline(cfg: ModelConfig) -> compose.Pipeline:
    """The River pipeline the dense core replicates (scoring/dense.py; tests compare them)."""
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        compose.FuncTransformer(clip),
        linear_model.LogisticRegression(optimizer=optim.Adam(cfg.learning_rate), l2=cfg.l2),
    )


RULE_INPUTS = ("rules_recoverability_logit", "rules_abuse_logit")


class Inputs:
    """The fixed order of a model set's inputs (``ModelSet.feature_names``, sorted, with the rule
    logits), and how a feature dict becomes one vector in that order: :meth:`raw` (what a
    snapshot keeps) then :meth:`prepare` (:func:`prepare`'s signed log scale on the same slots;
    the ``returned:`` crossing is the dense core's second half, see scoring/dense.py). An input
    missing from the dict is 0.0, as it always was when learning from a snapshot.

    >>> inp = Inputs(("order_value", "return_requested", *RULE_INPUTS))
    >>> raw = inp.raw({"order_value": 99.0, "return_requested": 1.0}, ScoreResult(0.5, 0.5, ""))
    >>> raw, inp.returned(raw)
    ([99.0, 1.0, 0.0, 0.0], True)
    >>> [round(v, 4) for v in inp.prepare(raw)] == [round(math.log1p(99.0), 4), 1.0, 0.0, 0.0]
    True
    """

    __slots__ = ("i_abuse", "i_rec", "i_returned", "log_slots", "n", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.n = len(names)
        index = {k: i for i, k in enumerate(names)}
        self.i_rec = index.get(RULE_INPUTS[0], -1)
        self.i_abuse = index.get(RULE_INPUTS[1], -1)
        self.i_returned = index.get("return_requested", -1)
        self.log_slots = tuple(i for i, k in enumerate(names) if k in LOG_SCALED)

    def raw(self, x: dict[str, float], rules: ScoreResult | None = None) -> list[float]:
        values = list(map(x.get, self.names, repeat(0.0)))
        if rules is not None:
            if self.i_rec >= 0:
                values[self.i_rec] = logit(rules.recoverability)
            if self.i_abuse >= 0:
                values[self.i_abuse] = logit(rules.abuse)
        return values

    def prepare(self, raw: list[float]) -> list[float]:
        out = list(raw)
        for i in self.log_slots:
            v = out[i]
            out[i] = math.copysign(math.log1p(abs(v)), v)
        return out

    def returned(self, raw: Any) -> bool:
        return self.i_returned >= 0 and bool(raw[self.i_returned])

    def slot_names(self) -> list[str]:
        return [*self.names, *(f"returned:{k}" for k in self.names)]


class _PythonEngine:
    """The reference: scoring/dense.py over lists."""

    name = "python"
    batched = False  # the reference scores update by update (ModelSet.score)

    def adopt(self, state: Any) -> Any:
        return [list(map(float, row)) for row in state]

    def vector(self, xp: list[float]) -> Any:
        return xp

    def warm(self) -> None:
        pass

    def predict_one(self, s, b, x, returned: bool) -> float:
        return dense.predict(s, b, x, returned)

    def predict_pair(self, s1, b1, s2, b2, x, returned: bool) -> tuple[float, float]:
        return dense.predict(s1, b1, x, returned), dense.predict(s2, b2, x, returned)

    def learn(self, state, b, X, R, Y, W, rates, l2) -> float:
        return dense.learn_batch(state, b, X, R, Y, W, rates, l2)


class _NumbaEngine:
    """scoring/dense_numba.py: compiled, bit-identical to the reference."""

    name = "numba"
    batched = True  # a model-stage call's updates are scored together (ScoreBatch)

    def __init__(self) -> None:
        from salvage.scoring import dense_numba

        self.k = dense_numba

    def adopt(self, state: Any) -> Any:
        return np.array(state, dtype=np.float64)

    def vector(self, xp: list[float]) -> Any:
        return np.array(xp, dtype=np.float64)

    def warm(self) -> None:
        """Compile (or load from the cache) every kernel now, not on the first update."""
        s, x = np.zeros((dense.ROWS, 2)), np.zeros(1)
        self.k.predict_one(s, 0.0, x, True)
        self.k.predict_pair(s, 0.0, s, 0.0, x, True)
        self.learn(s, 0.0, [[0.0]], [True], [True], [1.0], [0.001], 0.0)
        X = np.zeros((1, len(RULE_FEATURES)))
        rec, ab = self.k.rule_scores(X, np.arange(len(RULE_FEATURES)))
        _, R = self.k.prepare_rows(X, rec, ab, 0, 1, np.zeros(1, dtype=np.int64), 2)
        self.k.predict_pairs(s, 0.0, s, 0.0, np.zeros((1, 1)), R, 0, 1)

    def predict_one(self, s, b, x, returned: bool) -> float:
        return self.k.predict_one(s, b, x, returned)

    def predict_pair(self, s1, b1, s2, b2, x, returned: bool) -> tuple[float, float]:
        return self.k.predict_pair(s1, b1, s2, b2, x, returned)

    def learn(self, state, b, X, R, Y, W, rates, l2) -> float:
        return self.k.learn_batch(
            state,
            b,
            np.array(X, dtype=np.float64),
            np.array(R, dtype=np.bool_),
            np.array(Y, dtype=np.bool_),
            np.array(W, dtype=np.float64),
            np.array(rates, dtype=np.float64),
            l2,
        )


ENGINES: dict[str, Any] = {"python": _PythonEngine, "numba": _NumbaEngine}
_ENGINES: dict[str, Any] = {}


def engine(name: str) -> Any:
    """The engine called ``name`` (the numba one compiles or loads its cache on first use)."""
    if name not in _ENGINES:
        if name not in ENGINES:
            raise ValueError(f"unknown model engine {name!r}: one of {sorted(ENGINES)}")
        e = ENGINES[name]()
        e.warm()
        _ENGINES[name] = e
    return _ENGINES[name]


class OnlineModel:
    """One binary classifier with its shadow/active state and its evaluation against the rules.

    Its parameters are the dense core's (scoring/dense.py): ``state`` (scaler and logistic
    regression, six rows of ``2n`` slots), ``intercept`` and Adam's ``steps``; ``None`` until the
    model set fixes its inputs (the first update scored)."""

    def __init__(self, name: str, cfg: ModelConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.inputs: Inputs | None = None
        self.state: Any = None
        self.intercept = 0.0
        self.steps = 0  # Adam iterations
        self.active = False
        self.version = 0  # promotions so far
        self.labels = 0
        self.labels_since_change = 0
        self.model_eval = RollingEval(cfg.window)
        self.rules_eval = RollingEval(cfg.window)
        # the same, on the cases the rules flag only (the decisions a promotion would change most)
        self.model_flagged = RollingEval(cfg.window)
        self.rules_flagged = RollingEval(cfg.window)
        self.adwin = drift.ADWIN(delta=cfg.adwin_delta)
        self.positives = 0
        self.negatives = 0

    @property
    def tag(self) -> str:
        """What currently drives decisions: the model version, or the rule baseline."""
        return f"{self.name}-lr-v{self.version}" if self.active else RULES_VERSION

    @property
    def engine(self) -> Any:
        return engine(self.cfg.engine)

    def bind(self, inputs: Inputs) -> None:
        """Fix the inputs (a fresh model starts untrained over them)."""
        self.inputs = inputs
        if self.state is None:
            self.state = self.engine.adopt(dense.new_state(inputs.n))

    def configure(self, cfg: ModelConfig) -> None:
        """Take this run's settings (the engine may change: the state is converted, unchanged)."""
        self.cfg = cfg
        if self.state is not None:
            self.state = self.engine.adopt(self.state)

    def predict(self, x: dict[str, float]) -> float:
        """P(True) for a feature dict (the rule logits are inputs like any other)."""
        if self.inputs is None:
            return 0.5
        eng, inp = self.engine, self.inputs
        raw = inp.raw(x)
        vec = eng.vector(inp.prepare(raw))
        return eng.predict_one(self.state, self.intercept, vec, inp.returned(raw))

    def weight(self, y: bool, weighted: bool, prior: float | None = None) -> float:
        """The sample weight of a label. ``weighted``: up-weight rare positives (abuse).
        ``prior``: correct label-prior shift — weight the classes so the labelled mix matches
        ``prior``, the expected positive share of the *scored* population (delayed labels arrive
        class by class: refunds resolve in days, kept orders only when the return window
        closes)."""
        w = 1.0
        if weighted and y:
            w = min(self.cfg.abuse_weight_cap, max(1.0, self.negatives / max(self.positives, 1)))
        elif prior is not None and self.labels:
            observed = self.positives / self.labels
            if 0.0 < observed < 1.0:
                w = prior / observed if y else (1.0 - prior) / (1.0 - observed)
                w = min(10.0, max(0.1, w))
        return w

    def learn_snapshots(self, xs: list[array], y: bool, weights: list[float]) -> None:
        """Learn, in order, from snapshot inputs (raw, in the inputs' order) with label ``y``."""
        if not xs or self.inputs is None:
            return
        inp = self.inputs
        X = [inp.prepare(list(x)) for x in xs]
        R = [inp.returned(x) for x in xs]
        rates = dense.adam_rates(self.cfg.learning_rate, self.steps, len(xs))
        self.steps += len(xs)
        self.intercept = float(
            self.engine.learn(
                self.state, self.intercept, X, R, [y] * len(xs), weights, rates, self.cfg.l2
            )
        )

    def parameters(self) -> dict[str, dict[str, float]]:
        """Per input slot seen in training (``returned:<name>`` for the crossed ones): the
        logistic regression's weight and the scaler's mean and variance."""
        if self.inputs is None:
            return {}
        rows = np.asarray(self.state, dtype=np.float64)
        return {
            k: {
                "weight": float(rows[dense.W, i]),
                "mean": float(rows[dense.MEAN, i]),
                "var": float(rows[dense.VAR, i]),
            }
            for i, k in enumerate(self.inputs.slot_names())
            if rows[dense.COUNT, i] > 0
        }

    def rules_flag(self, p_rules: float) -> bool:
        """Do the rules flag this case (abuse: likely abuse; recoverability: at risk)?"""
        if self.name == "abuse":
            return p_rules >= self.cfg.abuse_flag
        return p_rules <= self.cfg.recoverability_flag

    def evaluate(self, y: bool, p_model: float, p_rules: float, t: int) -> dict[str, Any] | None:
        """Progressive validation of one labelled prediction; returns a promotion/demotion event.

        The gate (DESIGN §11, "models never make decisions worse"): promotion needs, over at least
        ``min_labels`` labels since the last change, a defined rolling AUC that beats the rules' by
        ``promote_margin`` overall *and* an AUC on the rule-flagged stratum at least the rules' on
        the same cases. An undefined AUC (one-class window) never promotes or demotes: it waits."""
        self.labels += 1
        self.labels_since_change += 1
        if y:
            self.positives += 1
        else:
            self.negatives += 1
        self.model_eval.update(y, p_model)
        self.rules_eval.update(y, p_rules)
        if self.rules_flag(p_rules):
            self.model_flagged.update(y, p_model)
            self.rules_flagged.update(y, p_rules)
        enough = (
            self.labels_since_change >= self.cfg.min_labels and self.positives and self.negatives
        )
        # the rolling AUCs are computed only where a test reads them (each is a pass over the
        # window), in the order the tests read them
        if not self.active:
            if not enough:
                return None
            m, r = self.model_eval.auc_value(), self.rules_eval.auc_value()
            if m is None or r is None or not m >= r + self.cfg.promote_margin:
                return None
            mf, rf = self.model_flagged.auc_value(), self.rules_flagged.auc_value()
            if mf is not None and rf is not None and mf >= rf:
                self.active = True
                self.version += 1
                return self._event(
                    t,
                    "promoted",
                    f"rolling AUC {m:.3f} beats rules {r:.3f}; on rule-flagged cases "
                    f"{mf:.3f} vs {rf:.3f}",
                )
            return None
        before = self.adwin.estimation
        self.adwin.update(abs(float(y) - p_model))
        if self.adwin.drift_detected and self.adwin.estimation > before:
            # a change for the worse (an improvement is no reason to step down)
            return self._demote(
                t, f"ADWIN: error rose from {before:.3f} to {self.adwin.estimation:.3f}"
            )
        if not enough:
            return None
        m, r = self.model_eval.auc_value(), self.rules_eval.auc_value()
        if m is not None and r is not None and m < r - self.cfg.demote_margin:
            return self._demote(t, f"rolling AUC {m:.3f} fell below rules {r:.3f}")
        mf, rf = self.model_flagged.auc_value(), self.rules_flagged.auc_value()
        if mf is not None and rf is not None and mf < rf - self.cfg.demote_margin:
            return self._demote(t, f"AUC on rule-flagged cases {mf:.3f} fell below rules {rf:.3f}")
        return None

    def _demote(self, t: int, reason: str) -> dict[str, Any]:
        self.active = False
        self.adwin = drift.ADWIN(delta=self.cfg.adwin_delta)
        return self._event(t, "demoted", reason)

    def _event(self, t: int, change: str, reason: str) -> dict[str, Any]:
        self.labels_since_change = 0
        return {
            "t": t,
            "model": self.name,
            "change": change,
            "version": f"{self.name}-lr-v{self.version}",
            "reason": reason,
            "labels": self.labels,
            "model_auc": self.model_eval.summary()["auc"],
            "rules_auc": self.rules_eval.summary()["auc"],
            "model_auc_flagged": self.model_flagged.summary()["auc"],
            "rules_auc_flagged": self.rules_flagged.summary()["auc"],
        }


class ScoreBatch:
    """The updates of one model-stage call, scored as :meth:`ModelSet.score` scores them (the
    same floats, snapshots and counts), with the per-update work done once for the whole call
    by the compiled engine (scoring/dense_numba.py): one matrix of raw inputs (``Inputs.raw``)
    read from the feature dicts, the rule baseline over it (``rule_scores``, the
    scoring/baseline.py functions), the model inputs (``prepare_rows``), and both models'
    predictions (``predict_pairs``) for every row up to the next label.

    Learning order is kept: :meth:`score` takes the rows in order, interleaved with the
    stage's ``label`` / ``late_fact`` / ``expire_awaiting`` calls; predictions made ahead are
    used only while neither model has learned since (Adam's step counts are unchanged: every
    learning step moves them), else they are made again from that row on. ``cuts`` (the rows a
    label may precede) only bounds how far ahead they are made.

    The rows' values are those of :meth:`Inputs.raw` as float64 (what the engine's vector was);
    a row whose dict lacks one of the inputs takes :meth:`Inputs.raw`'s own path (0.0 for a
    missing input) and the rules in Python (which need their inputs)."""

    __slots__ = (
        "ab_r",
        "buf",
        "cuts",
        "gen",
        "hi",
        "k",
        "lo",
        "ms",
        "names",
        "preds",
        "rec_r",
        "returned",
        "rounded",
        "row",
        "row_bytes",
        "rows",
        "version",
        "xp",
    )

    def __init__(
        self,
        ms: ModelSet,
        xs: list[dict[str, float]] | list[tuple[float, ...]],
        cuts: list[int],
        row_names: tuple[str, ...] | None = None,
    ) -> None:
        tuples: list[tuple[float, ...]] | None = None  # value tuples in row_names order
        if row_names is not None:
            names = ms.feature_names or tuple(sorted({*row_names, *RULE_INPUTS}))
            if set(names) == {*row_names, *RULE_INPUTS} and set(RULE_FEATURES) <= set(names):
                tuples = cast(list[tuple[float, ...]], xs)
            else:  # inputs fixed otherwise, or rules read elsewhere: as dicts, exactly
                xs = [dict(zip(row_names, cast(tuple[float, ...], x), strict=True)) for x in xs]
        dicts = cast(list[dict[str, float]], xs)
        if tuples is None:
            # the inputs as ModelSet.score fixes them; the set itself takes them at the first row
            names = ms.feature_names or tuple(sorted({*dicts[0], *RULE_INPUTS}))
        inp = ms._inputs
        if inp is None or inp.names != names:
            inp = Inputs(names)
        self.ms = ms
        self.names = names
        self.k = k = ms.recoverability.engine.k
        m, n = len(xs), inp.n
        X = np.zeros((m, n))
        base = [i for i, name in enumerate(names) if name not in RULE_INPUTS]
        slow: list[int] = []  # rows read by Inputs.raw's own path
        if tuples is not None:  # every input in each tuple, in one order
            assert row_names is not None
            index = {name: i for i, name in enumerate(names)}
            values = np.array(tuples, dtype=np.float64)
            if values.shape != (m, len(row_names)):
                raise ValueError(f"value rows of {values.shape[1:]} for {len(row_names)} names")
            X[:, [index[key] for key in row_names]] = values
        elif (
            len(keys := list(dicts[0])) == len(base)
            and set(keys) == {names[i] for i in base}
            and (list(map(list, dicts)).count(keys) == m)
        ):  # every dict has exactly the inputs, in one order: read the values as they are
            index = {name: i for i, name in enumerate(names)}
            flat = np.fromiter(
                chain.from_iterable(map(dict.values, dicts)), np.float64, m * len(keys)
            )
            X[:, [index[key] for key in keys]] = flat.reshape(m, len(keys))
        elif len(base) < 2:  # itemgetter of one name returns the value, not a tuple
            slow = list(range(m))
        else:
            get = itemgetter(*(names[i] for i in base))
            try:
                flat = np.fromiter(chain.from_iterable(map(get, dicts)), np.float64, m * len(base))
                X[:, base] = flat.reshape(m, len(base))
            except KeyError:  # some dict lacks an input: row by row
                for r, x in enumerate(dicts):
                    try:
                        X[r, base] = get(x)
                    except KeyError:
                        slow.append(r)
        for r in slow:
            X[r] = inp.raw(dicts[r])
        index = {name: i for i, name in enumerate(names)}
        if all(f in index for f in RULE_FEATURES):
            cols = np.array([index[f] for f in RULE_FEATURES], dtype=np.int64)
            rec_a, ab_a = k.rule_scores(X, cols)
            python_rules = slow
        else:
            rec_a, ab_a = np.zeros(m), np.zeros(m)
            python_rules = list(range(m))
        if python_rules:
            rec, ab = rec_a.tolist(), ab_a.tolist()
            for r in python_rules:  # scoring/baseline.py on the dict, as RuleScorer.score
                rec[r] = baseline.recoverability(dicts[r])
                ab[r] = baseline.abuse(dicts[r])
            rec_a, ab_a = np.array(rec, dtype=np.float64), np.array(ab, dtype=np.float64)
        # round(x, 6) of each, as RuleScorer.score (bit for bit, see scoring/rounding.py)
        self.rec_r = round6(rec_a)
        self.ab_r = round6(ab_a)
        log_slots = np.array(inp.log_slots, dtype=np.int64)
        self.xp, self.returned = k.prepare_rows(
            X,
            np.array(self.rec_r, dtype=np.float64),
            np.array(self.ab_r, dtype=np.float64),
            inp.i_rec,
            inp.i_abuse,
            log_slots,
            inp.i_returned,
        )
        self.rows = m
        # snapshots keep the raw rows as float32 (Snapshot): one conversion for the call
        self.buf = memoryview(X.astype(np.float32).tobytes())
        self.row_bytes = 4 * n
        self.cuts = cuts
        self.row = 0
        self.lo = self.hi = 0
        self.gen: tuple[int, int, bool, bool] = (-1, -1, False, False)
        self.preds: list[float] = []  # p_rec, p_abuse of rows lo.. (hi excluded), flat
        self.rounded: list[float] = []  # the same, rounded to 6 digits (Scored.shadow)
        self.version = RULES_VERSION

    def _predict(self, r: int) -> None:
        """Both models' predictions from row ``r`` to the next cut, with the models as they are."""
        ms = self.ms
        if r == 0:  # the first update scored fixes the inputs (ModelSet.score) and binds them
            if not ms.feature_names:
                ms.feature_names = self.names
            ms.inputs  # noqa: B018
        i = bisect_right(self.cuts, r)
        hi = self.cuts[i] if i < len(self.cuts) else self.rows
        rec_m, ab_m = ms.recoverability, ms.abuse
        out = self.k.predict_pairs(
            rec_m.state, rec_m.intercept, ab_m.state, ab_m.intercept, self.xp, self.returned, r, hi
        )
        self.preds = out.ravel().tolist()
        self.rounded = round6(out)  # round(p, 6) of each, bit for bit
        self.lo, self.hi = r, hi
        # what can change the models' predictions or tags: learning (Adam's steps move on every
        # step) and promotion / demotion (which flip ``active``)
        self.gen = (rec_m.steps, ab_m.steps, rec_m.active, ab_m.active)
        self.version = ms.version

    def score(
        self, order_id: str, t: int, returned: bool, snapshot: bool = True, risk: bool = False
    ) -> Scored:
        """:meth:`ModelSet.score` of the next row (its rule scores are the batch's)."""
        return self.scored(self.values(order_id, t, returned, snapshot, risk)[2])

    def values(
        self, order_id: str, t: int, returned: bool, snapshot: bool = True, risk: bool = False
    ) -> tuple[float, float, tuple[float, float, float, float]]:
        """What :meth:`score` does for the next row (counts, snapshot), without building its
        :class:`Scored`: ``(recoverability, abuse, row)``, the scores the policy acts on (what
        ``score(...).scores`` holds) and the row's model and rule scores, from which
        :meth:`scored` builds its Scored if wanted (before the models learn again)."""
        r = self.row
        self.row = r + 1
        ms = self.ms
        rec_m, ab_m = ms.recoverability, ms.abuse
        if r >= self.hi or self.gen != (rec_m.steps, ab_m.steps, rec_m.active, ab_m.active):
            self._predict(r)
        j = 2 * (r - self.lo)
        r_rec, r_ab = self.rec_r[r], self.ab_r[r]
        ms.scored += 1
        ms.rules_prior_sum += r_rec
        s_rec, s_ab = self.rounded[j], self.rounded[j + 1]
        if snapshot:
            preds = self.preds
            b = self.row_bytes
            row = self.buf[r * b : r * b + b]
            if not ms._overwrite_latest(
                order_id, t, preds[j], r_rec, preds[j + 1], r_ab, row, returned, risk
            ):
                values = array("f", (preds[j], r_rec, preds[j + 1], r_ab))
                values.frombytes(row)
                ms._keep(order_id, t, values, returned, risk)
        # (the rule scores are rounded already: round is idempotent)
        return (
            s_rec if rec_m.active else r_rec,
            s_ab if ab_m.active else r_ab,
            (s_rec, s_ab, r_rec, r_ab),
        )

    def scored(self, row: tuple[float, float, float, float]) -> Scored:
        """The :class:`Scored` of a ``row`` :meth:`values` returned (its model and rule scores)."""
        s_rec, s_ab, r_rec, r_ab = row
        rules = _score_result(r_rec, r_ab, RULES_VERSION)
        rec_m, ab_m = self.ms.recoverability, self.ms.abuse
        if rec_m.active or ab_m.active:
            scores = _score_result(
                s_rec if rec_m.active else r_rec, s_ab if ab_m.active else r_ab, self.version
            )
        else:  # the rules drive: what ModelSet.score returns equals them (one frozen object)
            scores = rules
        return Scored(scores, {"recoverability": s_rec, "abuse": s_ab}, rules)


@dataclass(slots=True)
class Snapshot:
    """What a case looked like when it was scored, kept until its label arrives. Packed into one
    float32 array (memory per open case is the scaling limit): the four predictions, then the
    feature values in ModelSet.feature_names order (money, counts, rates, durations: float32's 7
    digits are plenty for training and evaluation)."""

    t: int
    v: array  # float32: p_rec, p_rec_rules, p_abuse, p_abuse_rules, *features
    kind: str  # "risk" (first risk signal) | "return" (at the request) | "latest"

    @property
    def x(self) -> array:
        return self.v[4:]

    @property
    def p_rec(self) -> float:
        return self.v[0]

    @property
    def p_rec_rules(self) -> float:
        return self.v[1]

    @property
    def p_abuse(self) -> float:
        return self.v[2]

    @property
    def p_abuse_rules(self) -> float:
        return self.v[3]


@fast_pickle
@dataclass(slots=True)
class Scored:
    scores: ScoreResult  # what the policy acts on
    shadow: dict[str, float]  # model predictions, recorded whether active or not
    rules: ScoreResult


# ScoreResult(...) setting the slots directly (two per case update; the frozen dataclass's
# __init__ costs about twice as much); equal objects (tests/scoring/test_batch.py compares them)
_score_result = slot_maker(ScoreResult)


def recoverability_label(facts: dict[str, Any]) -> bool | None:
    """Retained (True) or lost (False); None when the case says nothing (cancelled, expired)."""
    outcome = facts.get("outcome")
    if outcome in RETAINED:
        return True
    if outcome in LOST:
        return False
    return None


def abuse_label(facts: dict[str, Any], review_verdict: bool | None = None) -> bool | None:
    """Was the return (or claim) abusive? None when there was neither a return nor a claim."""
    claimed = bool(facts.get("return_requested_at")) or facts.get("outcome") == "chargeback"
    if not claimed:
        return None
    if review_verdict is not None:
        return review_verdict
    delivered = bool(facts.get("delivered_at"))
    return bool(
        facts.get("abuse_flags")
        or (facts.get("outcome") == "chargeback" and delivered)
        or (facts.get("return_reason") == "not_received" and delivered)
    )


DECISIVE_VERDICTS = {"abuse_confirmed": True, "approve": False}  # "deny" says nothing on abuse

_CLOSE_FACTS = (
    "return_requested_at",
    "outcome",
    "delivered_at",
    "abuse_flags",
    "return_reason",
    "graded_at",
    "closed_at",
)


def _close_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts an abuse label needs, kept while a case waits for its verdict."""
    return {k: facts.get(k) for k in _CLOSE_FACTS}


def abuse_revealed_at(facts: dict[str, Any], t: int, reviewed: bool = False) -> int | None:
    """The earliest event time at which the case showed its abuse label; only a snapshot taken
    strictly before it may teach or evaluate the abuse model. ``t`` is the close (a chargeback
    closes the case, so it is its own time). ``reviewed``: a decisive review verdict is the label.

    It does not depend on the label's value: grading reveals the flags *or their absence*, a
    verdict is either way, so every graded (reviewed) case is cut at its grade (verdict). Cutting
    only the positives would leave post-grading snapshots that are all negative — the same leak
    with the sign reversed. None: a decisive verdict of unknown time (facts without
    ``reviewed_at``), so no snapshot is provably before it."""
    cut = t
    graded = int(facts.get("graded_at") or 0)
    if graded:
        cut = min(cut, graded)
    if facts.get("outcome") == "chargeback":
        cut = min(cut, int(facts.get("closed_at") or t))
    if reviewed:
        at = int(facts.get("reviewed_at") or 0)
        if not at:
            return None
        cut = min(cut, at)
    return cut


@dataclass
class ModelSet:
    """Both models of one model shard, plus the pending snapshots of its open cases.

    A shadow model is scored and evaluated on every case, but the policy acts on the rules until
    it is promoted. A fresh order, kept, then a late order whose customer asks for a refund:

    >>> from salvage.features.customer import CustomerContext
    >>> from salvage.features.order_case import OrderCase
    >>> from salvage.scoring.baseline import RuleScorer
    >>> models = ModelSet()
    >>> x = OrderCase("o1").features(0) | CustomerContext("c1").features(0)
    >>> rules = RuleScorer().score(x)
    >>> scored = models.score("o1", 10, x, rules, returned=False)
    >>> scored.scores == rules, scored.shadow  # untrained: 0.5 for both
    (True, {'recoverability': 0.5, 'abuse': 0.5})
    >>> models.label("o1", 20, {"outcome": "kept"}), models.pending  # evaluated, learned, gone
    ([], {})
    >>> rec = models.summary()["recoverability"]
    >>> rec["labels"], rec["model"]["auc"], rec["model"]["logloss"]  # one class: no AUC yet
    (1, None, 0.6931)
    >>> late = x | {"slippage_hours": 48.0, "wismo_7d": 2.0, "refund_intent_7d": 1.0}
    >>> _ = models.score("o2", 30, late, RuleScorer().score(late), returned=False)
    >>> models.label("o2", 40, {"outcome": "refund"})
    []
    >>> rec = models.summary()["recoverability"]
    >>> rec["labels"], rec["positives"], rec["model"]["auc"], rec["rules"]["auc"]
    (2, 1, 0.0, 1.0)
    """

    cfg: ModelConfig = field(default_factory=ModelConfig)
    feature_names: tuple[str, ...] = ()
    pending: dict[str, list[Snapshot]] = field(default_factory=dict)
    # order -> (deadline, close time, abuse snapshots, close-time facts): waiting for a verdict
    awaiting: dict[str, tuple[int, int, list[Snapshot], dict[str, Any]]] = field(
        default_factory=dict
    )
    await_heap: list[tuple[int, str]] = field(default_factory=list)
    late_labels: dict[str, int] = field(default_factory=dict)  # source -> abuse labels taken late
    scored: int = 0
    rules_prior_sum: float = 0.0  # sum of the rules' P(retained) over every scored update
    recoverability: OnlineModel = field(init=False)
    abuse: OnlineModel = field(init=False)

    _inputs: Inputs | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        engine(self.cfg.engine)  # an unknown engine fails here; the kernels load now, not mid-batch
        self.recoverability = OnlineModel("recoverability", self.cfg)
        self.abuse = OnlineModel("abuse", self.cfg)

    @property
    def inputs(self) -> Inputs:
        """The inputs' order (``feature_names``, fixed by the first update scored); binds both
        models to it."""
        inp = self._inputs
        if inp is None or inp.names != self.feature_names:
            inp = self._inputs = Inputs(self.feature_names)
            self.recoverability.bind(inp)
            self.abuse.bind(inp)
        return inp

    def configure(self, cfg: ModelConfig) -> None:
        """This run's settings (promotion gates, engine) for the set and both models."""
        self.cfg = cfg
        self.recoverability.configure(cfg)
        self.abuse.configure(cfg)

    @property
    def version(self) -> str:
        r, a = self.recoverability.tag, self.abuse.tag
        return RULES_VERSION if r == a == RULES_VERSION else f"recoverability:{r},abuse:{a}"

    def score(
        self,
        order_id: str,
        t: int,
        x: dict[str, float],
        rules: ScoreResult,
        returned: bool,
        snapshot: bool = True,
        risk: bool = False,
    ) -> Scored:
        """Score one update of an open case. ``risk``: the update carries a risk signal (delay,
        missed promise, contact, return request): its snapshot is kept as the case's "risk"
        snapshot, the moment the policy first has a reason to act."""
        if not self.feature_names:
            self.feature_names = tuple(sorted({*x, *RULE_INPUTS}))
        inp = self.inputs
        self.scored += 1
        self.rules_prior_sum += rules.recoverability
        raw = inp.raw(x, rules)  # one vector in the inputs' order, for both models
        rec_m, ab_m = self.recoverability, self.abuse
        eng = rec_m.engine
        p_rec, p_abuse = eng.predict_pair(
            rec_m.state,
            rec_m.intercept,
            ab_m.state,
            ab_m.intercept,
            eng.vector(inp.prepare(raw)),
            inp.returned(raw),
        )
        rec = p_rec if self.recoverability.active else rules.recoverability
        ab = p_abuse if self.abuse.active else rules.abuse
        if snapshot:
            self._snapshot(
                order_id, t, raw, p_rec, rules.recoverability, p_abuse, rules.abuse, returned, risk
            )
        return Scored(
            scores=ScoreResult(round(rec, 6), round(ab, 6), self.version),
            shadow={"recoverability": round(p_rec, 6), "abuse": round(p_abuse, 6)},
            rules=rules,
        )

    def _snapshot(self, order_id, t, raw, p_rec, r_rec, p_ab, r_ab, returned, risk) -> None:
        values = array("f", (p_rec, r_rec, p_ab, r_ab))
        values.extend(raw)
        self._keep(order_id, t, values, returned, risk)

    def _overwrite_latest(
        self,
        order_id: str,
        t: int,
        p_rec: float,
        r_rec: float,
        p_ab: float,
        r_ab: float,
        row: memoryview,
        returned: bool,
        risk: bool,
    ) -> bool:
        """:meth:`_keep` of a plain update (no return, no risk signal) of a case whose newest
        snapshot is a "latest" of the same inputs: that one is rewritten in place (the same
        values and time :meth:`_keep` would store, without a new array and Snapshot per update:
        most updates are these). False: nothing done, :meth:`_keep` it."""
        if returned or risk:
            return False
        snaps = self.pending.get(order_id)
        if not snaps:
            return False
        last = snaps[-1]
        v = last.v
        if last.kind != "latest" or 4 * len(v) != 16 + len(row):
            return False
        last.t = t
        v[0] = p_rec
        v[1] = r_rec
        v[2] = p_ab
        v[3] = r_ab
        memoryview(v).cast("B")[16:] = row
        return True

    def _keep(self, order_id: str, t: int, values: array, returned: bool, risk: bool) -> None:
        """Keep a snapshot's packed values (see :class:`Snapshot`) as the case's "return",
        "risk" or "latest" snapshot."""
        # an exact-size copy: ``values`` grew by frombytes/extend, which over-allocate (~24 B of
        # slack per snapshot, and a snapshot stays as long as its case is open)
        values = values[:]
        pending = self.pending
        snaps = pending.get(order_id)
        if snaps is None:  # the case's first snapshot
            kind = "return" if returned else "risk" if risk else "latest"
            pending[order_id] = [Snapshot(t, values, kind)]
            return
        kinds = {s.kind for s in snaps}
        if returned and "return" not in kinds:
            kind = "return"
        elif risk and not kinds & {"risk", "return"}:
            kind = "risk"
        else:
            kind = "latest"
        if "latest" in kinds:  # "latest" is only kept while it is the newest
            snaps[:] = [s for s in snaps if s.kind != "latest"]
        snaps.append(Snapshot(t, values, kind))

    @property
    def batched(self) -> bool:
        """Does this set's engine score a model-stage call's updates together (:meth:`batch`)?"""
        return bool(self.recoverability.engine.batched)

    def batch(
        self,
        xs: list[dict[str, float]] | list[tuple[float, ...]],
        cuts: list[int],
        row_names: tuple[str, ...] | None = None,
    ) -> ScoreBatch | None:
        """The updates ``xs`` (feature dicts, or with ``row_names`` tuples of values in that
        order; in the order they will be scored) prepared for :meth:`ScoreBatch.score`, one
        after the other; ``cuts``: the rows before whose score the models may learn (a label).
        None: score them one by one (:meth:`score`)."""
        if not xs or not self.batched:
            return None
        return ScoreBatch(self, xs, cuts, row_names)

    def label(
        self, order_id: str, t: int, facts: dict[str, Any], review: bool | None = None
    ) -> list[dict[str, Any]]:
        """The case closed: evaluate its stored predictions, then learn. Returns model events."""
        snaps = self.pending.pop(order_id, [])
        events: list[dict[str, Any]] = []
        y_rec = recoverability_label(facts)
        if review is None:
            verdict = facts.get("review_verdict")
            review = DECISIVE_VERDICTS.get(verdict) if verdict else None
        y_abuse = abuse_label(facts, review)
        # abuse: only what was scored before the case showed its abuse label (None: nothing)
        revealed = abuse_revealed_at(facts, t, review is not None) if y_abuse is not None else None
        snaps = [s for s in snaps if s.t < t]  # leakage guard: nothing at/after the outcome
        wait = (
            y_abuse is not None
            and review is None
            and self.cfg.verdict_wait_us > 0
            and self._awaits_verdict(snaps, facts)
        )
        if y_rec is not None and snaps:
            rec = self.recoverability
            prior = self.rules_prior_sum / self.scored if self.scored else None
            weights = []
            for snap in snaps:  # evaluated before learning (learning never changes the counts)
                ev = rec.evaluate(y_rec, snap.p_rec, snap.p_rec_rules, t)
                weights.append(rec.weight(y_rec, weighted=False, prior=prior))
                if ev:
                    events.append(ev)
            rec.learn_snapshots([s.x for s in snaps], y_rec, weights)
        if wait:  # "review requested": the abuse label waits for a verdict (or the timeout)
            keep = [s for s in snaps if s.kind != "risk"]
            if keep:
                deadline = t + self.cfg.verdict_wait_us
                self.awaiting[order_id] = (deadline, t, keep, _close_facts(facts))
                heapq.heappush(self.await_heap, (deadline, order_id))
            return events
        if revealed is not None and y_abuse is not None:
            events += self._label_abuse(snaps, y_abuse, revealed, t)
        return events

    def _label_abuse(self, snaps: list[Snapshot], y: bool, revealed: int, t: int) -> list[dict]:
        events = []
        abuse = self.abuse
        xs, weights = [], []
        for snap in snaps:
            if snap.kind != "risk" and snap.t < revealed:
                # abuse is about the claim: learn from the request on, not from the early signal,
                # and only until the grade / verdict / chargeback showed the answer
                ev = abuse.evaluate(y, snap.p_abuse, snap.p_abuse_rules, t)
                xs.append(snap.x)
                weights.append(abuse.weight(y, weighted=True))
                if ev:
                    events.append(ev)
        abuse.learn_snapshots(xs, y, weights)
        return events

    def _awaits_verdict(self, snaps: list[Snapshot], facts: dict[str, Any]) -> bool:
        """Will a verdict or grade still come after the close? The policy routes a claim to human
        review when the abuse score driving it reached ``abuse_flag``; a refund issued before
        grading still has its grade to come (its flags are the label)."""
        flag = self.cfg.abuse_flag
        active = self.abuse.active
        for s in snaps:
            if s.kind != "risk" and (s.p_abuse_rules >= flag or (active and s.p_abuse >= flag)):
                return True
        return bool(
            facts.get("outcome") == "refund"
            and facts.get("return_requested_at")
            and not facts.get("graded_at")
            and facts.get("return_reason") != "not_received"
        )

    def expire_awaiting(self, now: int) -> list[dict[str, Any]]:
        """Cases whose wait for a verdict ran out before ``now``: take the close-time label."""
        events: list[dict[str, Any]] = []
        heap = self.await_heap
        while heap and heap[0][0] < now:
            deadline, order_id = heapq.heappop(heap)
            entry = self.awaiting.get(order_id)
            if entry is None or entry[0] != deadline:
                continue
            del self.awaiting[order_id]
            _, closed, snaps, facts = entry
            y = abuse_label(facts)
            revealed = abuse_revealed_at(facts, closed)
            if y is not None and revealed is not None:
                self._count_late("timeout")
                events += self._label_abuse(snaps, y, revealed, deadline)
        return events

    def late_fact(self, order_id: str, t: int, late: dict[str, Any]) -> list[dict[str, Any]]:
        """A fact for a settled case (see ``salvage.flows.stages.Settled``): a decisive review
        verdict,
        a grade or a chargeback labels a case that waits for one; anything else changes nothing.
        Every snapshot kept predates the close, so none of them saw this fact."""
        entry = self.awaiting.get(order_id)
        if entry is None:
            return []
        _, closed, snaps, facts = entry
        kind = late.get("late")
        if kind == "review_resolved":
            y = DECISIVE_VERDICTS.get(late.get("review_verdict") or "")
            if y is None:
                return []  # "deny" says nothing on abuse: keep waiting
        elif kind == "return_graded":
            y = abuse_label({**facts, "abuse_flags": late.get("abuse_flags") or []})
        elif kind == "chargeback_filed":
            y = abuse_label({**facts, "outcome": "chargeback"})
        else:
            return []
        del self.awaiting[order_id]
        revealed = abuse_revealed_at(facts, closed)
        if y is None or revealed is None:
            return []
        self._count_late(kind)
        return self._label_abuse(snaps, y, revealed, t)

    def _count_late(self, source: str) -> None:
        self.late_labels[source] = self.late_labels.get(source, 0) + 1

    def upgrade(self) -> None:
        """Fill in what a snapshot written before issue 11 lacks (the verdict wait, the
        rule-flagged evaluations, one-class tracking): they start empty, learned weights stay."""
        for name, empty in (("awaiting", dict), ("await_heap", list), ("late_labels", dict)):
            if not hasattr(self, name):
                setattr(self, name, empty())
        for m in (self.recoverability, self.abuse):
            for name in ("model_flagged", "rules_flagged"):
                if not hasattr(m, name):
                    setattr(m, name, RollingEval(m.cfg.window))
            for ev in (m.model_eval, m.rules_eval):
                if not hasattr(ev, "window_positives"):  # old windows hold (logloss, brier)
                    ev.window.clear()
                    ev.window_positives = 0

    def forget(self, order_id: str) -> None:
        self.pending.pop(order_id, None)

    def export(self) -> dict[str, dict[str, Any]]:
        """Each model's parameters and evaluation, as plain JSON-able values (for inspection):
        the logistic regression's weights (largest first) and intercept, and the scaler's means
        and variances, next to :meth:`summary`."""
        out: dict[str, dict[str, Any]] = {}
        summary = self.summary()
        for m in (self.recoverability, self.abuse):
            params = m.parameters()
            weights = sorted(
                ((k, p["weight"]) for k, p in params.items()), key=lambda kv: (-abs(kv[1]), kv[0])
            )
            out[m.name] = {
                **summary[m.name],
                "negatives": m.negatives,
                "labels_since_change": m.labels_since_change,
                "intercept": float(m.intercept),
                "weights": {k: round(w, 6) for k, w in weights},
                "scaler": {
                    k: {"mean": round(p["mean"], 6), "var": round(p["var"], 6)}
                    for k, p in sorted(params.items())
                },
                "config": asdict(self.cfg),
            }
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for m in (self.recoverability, self.abuse):
            out[m.name] = {
                "driving": m.tag,
                "active": m.active,
                "version": m.version,
                "labels": m.labels,
                "positives": m.positives,
                "model": m.model_eval.summary(),
                "rules": m.rules_eval.summary(),
                "model_flagged": m.model_flagged.summary(),
                "rules_flagged": m.rules_flagged.summary(),
            }
        return out
