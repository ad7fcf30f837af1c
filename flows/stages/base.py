"""Shared parts of the keyed stages: shard keys, the stage configuration, metric children
and the watermark base class :class:`_Stage` (buffer, release in event-time order, forward the low
watermark). Plain Python, no Bytewax."""

from __future__ import annotations

import hashlib
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from salvage.features.eventtime import BEGIN, DAY_US, END, HOUR_US, Reorderer
from salvage.features.lane import LaneConfig
from salvage.features.order_case import PROMISE_RECHECKS_US
from salvage.flows.messages import Batch, Emit, Event, Route, Tick
from salvage.flows.metric_batch import cached as _cached
from salvage.flows.metric_batch import flush as _flush_metrics
from salvage.policy.config import Policy, load_policy
from salvage.scoring.models import ModelConfig
from salvage.sinks import metrics

_EVENTS = _cached(metrics.EVENTS)
_CLOSED = _cached(metrics.CASES_CLOSED)
_TRIGGERS = _cached(metrics.TRIGGERS)
_SUPPRESSED = _cached(metrics.SUPPRESSED)
_HOLDOUT = _cached(metrics.HOLDOUT)
_DISPOSITIONS = _cached(metrics.DISPOSITIONS)
_INFERRED = _cached(metrics.INTENTS_INFERRED)
_STATUS_UPDATES = _cached(metrics.STATUS_UPDATES)
_JOURNEY_ALERTS = _cached(metrics.JOURNEY_ALERTS)
_MODEL_CHANGES = {
    "promoted": _cached(metrics.MODEL_PROMOTIONS),
    "demoted": _cached(metrics.MODEL_DEMOTIONS),
}

TOMBSTONE_US = 30 * DAY_US  # closed cases are remembered (for dedupe / diagnostics) this long
CUSTOMER_IDLE_US = 400 * DAY_US  # customer context evicted after this long without activity
RISK_SIGNALS = frozenset({"delay_signal", "promise_missed", "contact", "return_requested"})


def shard_of(key: str, shards: int) -> int:
    """Stable across processes and runs (unlike ``hash``)."""
    return zlib.crc32(key.encode()) % shards


def case_key(shard: int) -> str:
    return f"case-{shard:04d}"


def ctx_key(shard: int) -> str:
    return f"ctx-{shard:04d}"


def model_key(shard: int) -> str:
    return f"model-{shard:04d}"


def disp_key(shard: int) -> str:
    return f"disp-{shard:04d}"


def lane_key(shard: int) -> str:
    return f"lane-{shard:04d}"


OUT_KEY = "out"
INTENT_KEY = "intent"  # the one intent stage of a deployment (whatever SALVAGE_SHARDS says)


@dataclass(frozen=True, slots=True)
class StageConfig:
    case_shards: int
    cust_shards: int
    lane_shards: int
    sources: tuple[str, ...]
    return_window_us: int = 30 * DAY_US
    # an event whose order is not known yet waits this long (event time, on every input) for its
    # order_placed before it is an unknown_order dead letter (README "Reliability")
    orphan_wait_us: int = 6 * HOUR_US
    settled_grace_us: int = 45 * DAY_US  # a settled case still listens this long (see Settled)
    lane: LaneConfig = field(default_factory=LaneConfig)
    # re-checks of a late, undelivered parcel, after its promise (features/order_case.py)
    promise_rechecks_us: tuple[int, ...] = PROMISE_RECHECKS_US
    case_records: bool = True  # emit case-store records (off when no store is configured)
    model_shards: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    infer_intents: bool = True
    # the flow has an IntentStage in front of the case shards (build_flow: when infer_intents);
    # case shards then wait for it. Off for a case stage driven on its own (tests, tools).
    intent_stage: bool = False
    intent_threshold: float = 0.6
    score_log: bool = False  # emit a "score" record per risk-signal update (benchmarks)
    model_exports: bool = False  # model shards emit checkpoints (flows/model_sink.py)
    # dispatch skips decide() when policy.engine.could_decide says no rule or guardrail can hold
    # (same decisions: see could_decide); off: decide() on every update (the equality tests)
    decide_gate: bool = True
    policy: Policy = field(default_factory=load_policy)

    def case_keys(self) -> list[str]:
        return [case_key(i) for i in range(self.case_shards)]

    def cust_keys(self, kind: str = "ctx") -> list[str]:
        make = ctx_key if kind == "ctx" else disp_key
        return [make(i) for i in range(self.cust_shards)]

    def model_keys(self) -> list[str]:
        return [model_key(i) for i in range(self.model_shards)]

    def model_shard_of(self, view) -> int:
        return shard_of(view.customer_id, self.model_shards)

    def lane_keys(self) -> list[str]:
        return [lane_key(i) for i in range(self.lane_shards)]


class _Stage(ABC):
    """Shared watermark handling: buffer, release in order, forward the low watermark."""

    def __init__(self, name: str, upstreams: list[str]) -> None:
        self.name = name
        self.reorderer = Reorderer(upstreams)
        self.seen_t = BEGIN  # latest event time any upstream has seen (carried by ticks)
        self._outbox: dict[tuple[Route, str], list[tuple[int, str, Any]]] = {}

    def send(self, route: Route, dest: str, t: int, tie: str, payload: Any) -> None:
        """Queue a data item for ``dest``; one batch item per destination leaves per call."""
        box = self._outbox.get((route, dest))
        if box is None:
            box = self._outbox[(route, dest)] = []
        box.append((t, tie, payload))

    def _push(self, t: int, tie: str, payload: Any) -> None:
        if not self.reorderer.push(t, tie, payload):
            # Only possible after an idle upstream wakes up (live mode): apply at the watermark.
            metrics.LATE_AFTER_IDLE.inc()
            self.reorderer.push(self.reorderer.low, tie, payload)

    def horizon(self, low: int) -> int:
        """How far time may advance for timers and windows: the watermark, except that the end of
        input (watermark +inf) only advances time to the last event seen anywhere upstream. The
        end of a replayed log is not the end of time; what is still open stays open, in state."""
        return self.seen_t + 1 if low >= END else low

    def on_batch(self, items: list) -> Emit:
        """Take a list of :class:`Batch`, :class:`Event` and :class:`Tick` items; when a tick
        came, apply what the new low watermark releases and return what the stage emits."""
        out: Emit = []
        ticked = False
        for item in items:
            kind = type(item)
            if kind is Batch:
                late = self.reorderer.push_many(item.items)  # _push on each, in order
                if late:
                    metrics.LATE_AFTER_IDLE.inc(late)
            elif kind is Event:
                self._push(item.t, item.tie, item.payload)
            elif kind is Tick:
                self.reorderer.tick(item.source, item.watermark, item.seen)
                if item.seen > self.seen_t:
                    self.seen_t = item.seen
                ticked = True
            else:
                raise TypeError(f"{self.name}: not a stage item: {item!r:.200}")
        if ticked:
            before = self.reorderer.low
            released = self.reorderer.release()
            self.apply(released, self.reorderer.low, out)
            if self._outbox:
                for (route, dest), batch in self._outbox.items():
                    out.append((route, (dest, Batch(batch))))
                self._outbox = {}
            if self.reorderer.low != before:
                out.append((Route.TICK, Tick(self.name, self.reorderer.low, self.seen_t)))
        _flush_metrics()  # the batch's counter increments, one inc per labelled child
        return out

    @abstractmethod
    def apply(self, released: list[tuple[int, str, Any]], low: int, out: Emit) -> None:
        """Apply the items released below the low watermark ``low``, in order."""


def _id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (Python's own str hash changes between processes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")
