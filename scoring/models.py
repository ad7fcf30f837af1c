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

import math
from array import array
from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import repeat
from typing import Any

from river import compose, drift, linear_model, metrics, optim, preprocessing

from scoring.baseline import RULES_VERSION, ScoreResult
from scoring.fastpath import CLIP, predict_proba

RETAINED = frozenset({"kept", "exchange", "store_credit", "return_cancelled"})
LOST = frozenset({"refund", "chargeback"})


@dataclass(frozen=True, slots=True)
class ModelConfig:
    min_labels: int = 1000  # labels since the last change before a promotion is considered
    promote_margin: float = 0.03  # rolling AUC margin over the rule baseline
    demote_margin: float = 0.0  # active model demoted when its AUC < baseline - this
    window: int = 1000  # rolling window for AUC / log loss / Brier
    learning_rate: float = 0.001  # Adam; 0.01 tracked the delayed label mix (AUC -0.1)
    l2: float = 1e-3
    abuse_weight_cap: float = 10.0  # positives weighted by min(cap, negatives/positives)
    adwin_delta: float = 0.0005


class RollingEval:
    """Rolling ROC AUC, log loss and Brier score over the last ``window`` labelled predictions."""

    def __init__(self, window: int) -> None:
        self.auc = metrics.RollingROCAUC(window_size=window)
        self.window: deque[tuple[float, float]] = deque(maxlen=window)  # (logloss, brier)
        self.n = 0

    def update(self, y: bool, p: float) -> None:
        self.n += 1
        self.auc.update(y, p)
        q = min(max(p, 1e-7), 1 - 1e-7)
        self.window.append((-math.log(q if y else 1 - q), (p - float(y)) ** 2))

    def summary(self) -> dict[str, float]:
        k = len(self.window) or 1
        return {
            "auc": round(self.auc.get(), 4),
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
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        compose.FuncTransformer(clip),
        linear_model.LogisticRegression(optimizer=optim.Adam(cfg.learning_rate), l2=cfg.l2),
    )


class OnlineModel:
    """One binary classifier with its shadow/active state and its evaluation against the rules."""

    def __init__(self, name: str, cfg: ModelConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.pipeline = _pipeline(cfg)
        self.active = False
        self.version = 0  # promotions so far
        self.labels = 0
        self.labels_since_change = 0
        self.model_eval = RollingEval(cfg.window)
        self.rules_eval = RollingEval(cfg.window)
        self.adwin = drift.ADWIN(delta=cfg.adwin_delta)
        self.positives = 0
        self.negatives = 0

    @property
    def tag(self) -> str:
        """What currently drives decisions: the model version, or the rule baseline."""
        return f"{self.name}-lr-v{self.version}" if self.active else RULES_VERSION

    def predict(self, x: dict[str, float]) -> float:
        return self.predict_prepared(prepare(x))

    def predict_prepared(self, xp: dict[str, float]) -> float:
        """P(True) for inputs already passed through :func:`prepare` (one pass, see fastpath)."""
        return predict_proba(self.pipeline, xp)

    def learn(
        self, x: dict[str, float], y: bool, weighted: bool, prior: float | None = None
    ) -> None:
        """``weighted``: up-weight rare positives (abuse). ``prior``: correct label-prior shift —
        weight the classes so the labelled mix matches ``prior``, the expected positive share of
        the *scored* population (delayed labels arrive class by class: refunds resolve in days,
        kept orders only when the return window closes)."""
        w = 1.0
        if weighted and y:
            w = min(self.cfg.abuse_weight_cap, max(1.0, self.negatives / max(self.positives, 1)))
        elif prior is not None and self.labels:
            observed = self.positives / self.labels
            if 0.0 < observed < 1.0:
                w = prior / observed if y else (1.0 - prior) / (1.0 - observed)
                w = min(10.0, max(0.1, w))
        self.pipeline.learn_one(prepare(x), y, w=w)

    def evaluate(self, y: bool, p_model: float, p_rules: float, t: int) -> dict[str, Any] | None:
        """Progressive validation of one labelled prediction; returns a promotion/demotion event."""
        self.labels += 1
        self.labels_since_change += 1
        if y:
            self.positives += 1
        else:
            self.negatives += 1
        self.model_eval.update(y, p_model)
        self.rules_eval.update(y, p_rules)
        m, r = self.model_eval.auc.get(), self.rules_eval.auc.get()
        enough = (
            self.labels_since_change >= self.cfg.min_labels and self.positives and self.negatives
        )
        if not self.active:
            if enough and m >= r + self.cfg.promote_margin:
                self.active = True
                self.version += 1
                return self._event(t, "promoted", f"rolling AUC {m:.3f} beats rules {r:.3f}")
            return None
        before = self.adwin.estimation
        self.adwin.update(abs(float(y) - p_model))
        if self.adwin.drift_detected and self.adwin.estimation > before:
            # a change for the worse (an improvement is no reason to step down)
            return self._demote(
                t, f"ADWIN: error rose from {before:.3f} to {self.adwin.estimation:.3f}"
            )
        if enough and m < r - self.cfg.demote_margin:
            return self._demote(t, f"rolling AUC {m:.3f} fell below rules {r:.3f}")
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
            "model_auc": round(self.model_eval.auc.get(), 4),
            "rules_auc": round(self.rules_eval.auc.get(), 4),
        }


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


@dataclass(slots=True)
class Scored:
    scores: ScoreResult  # what the policy acts on
    shadow: dict[str, float]  # model predictions, recorded whether active or not
    rules: ScoreResult


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
    """Both models of one model shard, plus the pending snapshots of its open cases."""

    cfg: ModelConfig = field(default_factory=ModelConfig)
    feature_names: tuple[str, ...] = ()
    pending: dict[str, list[Snapshot]] = field(default_factory=dict)
    scored: int = 0
    rules_prior_sum: float = 0.0  # sum of the rules' P(retained) over every scored update
    recoverability: OnlineModel = field(init=False)
    abuse: OnlineModel = field(init=False)

    def __post_init__(self) -> None:
        self.recoverability = OnlineModel("recoverability", self.cfg)
        self.abuse = OnlineModel("abuse", self.cfg)

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
        x = with_rules(x, rules)
        if not self.feature_names:
            self.feature_names = tuple(sorted(x))
        self.scored += 1
        self.rules_prior_sum += rules.recoverability
        xp = prepare(x)  # once for both models
        p_rec = self.recoverability.predict_prepared(xp)
        p_abuse = self.abuse.predict_prepared(xp)
        rec = p_rec if self.recoverability.active else rules.recoverability
        ab = p_abuse if self.abuse.active else rules.abuse
        if snapshot:
            self._snapshot(
                order_id, t, x, p_rec, rules.recoverability, p_abuse, rules.abuse, returned, risk
            )
        return Scored(
            scores=ScoreResult(round(rec, 6), round(ab, 6), self.version),
            shadow={"recoverability": round(p_rec, 6), "abuse": round(p_abuse, 6)},
            rules=rules,
        )

    def _snapshot(self, order_id, t, x, p_rec, r_rec, p_ab, r_ab, returned, risk) -> None:
        snaps = self.pending.setdefault(order_id, [])
        values = array("f", (p_rec, r_rec, p_ab, r_ab))
        values.extend(map(x.get, self.feature_names, repeat(0.0)))
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
        names = self.feature_names
        for snap in snaps:
            if snap.t >= t:
                continue  # leakage guard: nothing scored at or after the outcome may teach
            x = dict(zip(names, snap.x, strict=True))
            if y_rec is not None:
                ev = self.recoverability.evaluate(y_rec, snap.p_rec, snap.p_rec_rules, t)
                prior = self.rules_prior_sum / self.scored if self.scored else None
                self.recoverability.learn(x, y_rec, weighted=False, prior=prior)
                if ev:
                    events.append(ev)
            if (
                revealed is not None
                and y_abuse is not None
                and snap.kind != "risk"
                and snap.t < revealed
            ):
                # abuse is about the claim: learn from the request on, not from the early signal,
                # and only until the grade / verdict / chargeback showed the answer
                ev = self.abuse.evaluate(y_abuse, snap.p_abuse, snap.p_abuse_rules, t)
                self.abuse.learn(x, y_abuse, weighted=True)
                if ev:
                    events.append(ev)
        return events

    def forget(self, order_id: str) -> None:
        self.pending.pop(order_id, None)

    def export(self) -> dict[str, dict[str, Any]]:
        """Each model's parameters and evaluation, as plain JSON-able values (for inspection):
        the logistic regression's weights (largest first) and intercept, and the scaler's means
        and variances, next to :meth:`summary`."""
        out: dict[str, dict[str, Any]] = {}
        summary = self.summary()
        for m in (self.recoverability, self.abuse):
            lr = m.pipeline["LogisticRegression"]
            scaler = m.pipeline["StandardScaler"]
            weights = sorted(lr.weights.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
            out[m.name] = {
                **summary[m.name],
                "negatives": m.negatives,
                "labels_since_change": m.labels_since_change,
                "intercept": float(lr.intercept),
                "weights": {k: round(float(w), 6) for k, w in weights},
                "scaler": {
                    k: {"mean": round(float(scaler.means[k]), 6), "var": round(float(v), 6)}
                    for k, v in sorted(scaler.vars.items())
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
            }
        return out
