"""The model stage: rule baseline and online models for one model shard."""

from __future__ import annotations

import time
from typing import Any

from salvage.features.customer import JOINED_FEATURES
from salvage.features.eventtime import END
from salvage.flows.messages import Emit, Route
from salvage.flows.model_sink import checkpoint
from salvage.flows.stages.base import (
    _MODEL_CHANGES,
    RISK_SIGNALS,
    StageConfig,
    _Stage,
    disp_key,
    model_key,
    shard_of,
)
from salvage.flows.stages.dispatch import DispatchStage
from salvage.policy.engine import gate_of, row_gate
from salvage.scoring.baseline import RuleScorer
from salvage.scoring.models import ModelSet
from salvage.sinks import metrics

# the models' gauges are exported at most this often (wall time) while labels come: each export
# is a pass over every rolling window, and a scrape every 15 s reads one value of them
METRICS_EVERY_S = 1.0


class ModelStage(_Stage):
    """Rule baseline + online models for one model shard: score, learn on labels, promote."""

    def __init__(self, shard: int, cfg: StageConfig) -> None:
        super().__init__(model_key(shard), cfg.cust_keys("ctx"))
        self.shard = shard
        self.cfg = cfg
        self.rules = RuleScorer()
        self.models = ModelSet(cfg.model)
        self._unexported = False  # labels since the gauges' last export (not state)
        self._exported_at = 0.0
        for name in ("recoverability", "abuse"):  # series exist from the start (increase() works)
            _MODEL_CHANGES["promoted"](name)
            _MODEL_CHANGES["demoted"](name)

    def apply(self, released, low: int, out: Emit) -> None:
        labelled = False
        models = self.models
        batch = None
        cfg = self.cfg
        # updates dispatch would do nothing with are not sent (DispatchStage.ignores): the gate
        # on feature dicts, and the same on value tuples (JOINED_FEATURES order)
        gate = gate_of(cfg.policy) if cfg.decide_gate else None
        rgate = row_gate(cfg.policy, JOINED_FEATURES) if cfg.decide_gate else None
        if models.batched:  # the compiled engine: the call's updates prepared together
            xs: list = []
            cuts: list[int] = []  # the rows before whose score the models may learn (a label)
            cut = False
            dicts = False  # some update's features are a dict (a view made elsewhere)
            for _, _, (view, features) in released:
                if features is None:
                    cut = True
                    continue
                if cut or view.status == "closed":
                    cuts.append(len(xs))
                cut = False
                if type(features) is not tuple:
                    dicts = True
                xs.append(features)
            if dicts:
                xs = [_as_dict(x) for x in xs]
            batch = models.batch(xs, cuts, None if dicts else JOINED_FEATURES)
        ignores = DispatchStage.ignores
        shards = cfg.cust_shards
        dests = [disp_key(i) for i in range(shards)]
        outbox: dict[str, list] = {}  # this call's dispatch boxes, by key
        for t, tie, (view, features) in released:
            # ModelSet.expire_awaiting, called only when a wait ran out before t
            heap = models.await_heap
            events: list[dict] = models.expire_awaiting(t) if heap and heap[0][0] < t else []
            if features is None:  # a settled case's late fact: a label, maybe (see ModelSet)
                assert view.facts is not None
                events += models.late_fact(view.order_id, t, view.facts)
                for ev in events:
                    _MODEL_CHANGES[ev["change"]](ev["model"]).inc()
                labelled = True
                dest = dests[shard_of(view.customer_id, shards)]
                self.send(Route.DISPATCH, dest, t, tie, (view, None, None, events))
                continue
            closed = view.status == "closed"
            if closed:
                labelled = True
                assert view.facts is not None  # a closing update carries the facts
                events += models.label(view.order_id, t, view.facts)
            if events:
                for ev in events:
                    _MODEL_CHANGES[ev["change"]](ev["model"]).inc()
            risk = not RISK_SIGNALS.isdisjoint(view.changes)
            if batch is not None:  # (its Scored is built only if it is sent)
                rec, ab, row = batch.values(view.order_id, t, view.returned, not closed, risk)
                scored = None
            else:  # the python engine reads dicts
                features = _as_dict(features)
                rules = self.rules.score(features)
                scored = models.score(
                    view.order_id, t, features, rules, view.returned, not closed, risk
                )
                rec, ab = scored.scores.recoverability, scored.scores.abuse
            by_position = type(features) is tuple
            if not events and not risk:
                if ignores(cfg, rgate if by_position else gate, view, features, rec, ab):
                    continue
            if by_position:
                features = _as_dict(features)  # dispatch reads a dict
            if scored is None:
                assert batch is not None
                scored = batch.scored(row)
            disp = dests[shard_of(view.customer_id, shards)]
            box = outbox.get(disp)  # self.send(Route.DISPATCH, disp, ...), inline
            if box is None:
                box = outbox[disp] = self._box(Route.DISPATCH, disp)
            box.append((t, tie, (view, features, scored, events)))
        if labelled:
            self._unexported = True
        if self._unexported and (
            low >= END or time.monotonic() - self._exported_at >= METRICS_EVERY_S
        ):
            self._export_metrics()
        if self.cfg.model_exports:  # for `salvage models export` (flows/model_sink.py)
            checkpoint(self, low, out)

    def _export_metrics(self) -> None:
        """The models' gauges (rolling AUC, log loss, Brier over their windows: a pass over
        each window), at most every METRICS_EVERY_S of wall time while labels come, and at the
        end of the input."""
        self._unexported = False
        self._exported_at = time.monotonic()
        shard = str(self.shard)
        for m in (self.models.recoverability, self.models.abuse):
            name = m.name
            metrics.MODEL_ACTIVE.labels(name, shard).set(1 if m.active else 0)
            for scorer, rolling in (("model", m.model_eval), ("rules", m.rules_eval)):
                s: dict[str, Any] = rolling.summary()
                # one-class window: NaN, Prometheus' "no value" (never 0)
                auc = s["auc"]
                metrics.MODEL_AUC.labels(name, scorer, shard).set(
                    float("nan") if auc is None else auc
                )
                metrics.MODEL_LOGLOSS.labels(name, scorer, shard).set(s["logloss"])
                metrics.MODEL_BRIER.labels(name, scorer, shard).set(s["brier"])
            metrics.MODEL_LABELS.labels(name, shard).set(m.labels)


def _as_dict(x: dict[str, float] | tuple[float, ...]) -> dict[str, float]:
    """An update's features as a dict (value tuples are in JOINED_FEATURES order)."""
    if isinstance(x, tuple):
        return dict(zip(JOINED_FEATURES, x, strict=True))
    return x
