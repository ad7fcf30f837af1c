"""The intent stage: the deployment's one support-intent classifier (key ``intent``)."""

from __future__ import annotations

from salvage.flows.messages import Emit, InferredContact, Route
from salvage.flows.stages.base import (
    _INFERRED,
    INTENT_KEY,
    StageConfig,
    _id_hash,
    _Stage,
    case_key,
    shard_of,
)
from salvage.scoring.text import IntentClassifier
from salvage.sinks import metrics


def routes_to_intents(ev) -> bool:
    """Support contacts with text go through the intent stage (to learn from, or to fill in);
    an :class:`~salvage.flows.items.Overdue` event goes straight to its case shard (to be
    deduplicated)."""
    return getattr(ev, "event_type", None) == "support_contact" and bool(ev.text)


class IntentStage(_Stage):
    """The deployment's one intent classifier (key ``intent``): every support contact with text,
    from every input partition, in event-time order, so what is learned and filled in is the
    same with 1 or 8 shards, 1 or 2 workers. Labelled contacts teach it; unlabelled ones get an
    inferred intent (``other`` below the threshold). Forwards each contact to its case shard."""

    RECENT_IDS = 50_000  # event ids remembered to learn from a redelivered contact once

    def __init__(self, cfg: StageConfig) -> None:
        super().__init__(INTENT_KEY, list(cfg.sources))
        self.cfg = cfg
        self.intents = IntentClassifier(threshold=cfg.intent_threshold)
        self.recent: dict[int, None] = {}  # insertion-ordered: the oldest is evicted first

    def apply(self, released, low: int, out: Emit) -> None:
        clf = self.intents
        labelled = False
        for t, tie, ev in released:
            h = _id_hash(ev.event_id)
            fresh = h not in self.recent
            if fresh:
                self.recent[h] = None
                if len(self.recent) > self.RECENT_IDS:
                    del self.recent[next(iter(self.recent))]
            inferred = None
            if ev.intent is not None:
                if fresh:
                    clf.learn(ev.text, ev.intent.value)
                    labelled = True
            else:
                inferred, _confidence = clf.infer(ev.text)
                if fresh:
                    _INFERRED(inferred).inc()
            dest = case_key(shard_of(ev.order_id, self.cfg.case_shards))
            self.send(Route.CASES, dest, t, tie, InferredContact(ev, inferred))
        if labelled:
            metrics.INTENT_ACCURACY.labels("0").set(clf.accuracy)
            metrics.INTENT_COVERAGE.labels("0").set(clf.coverage)
