"""Shared parts of the keyed stages: shard keys, the stage configuration, metric children
and the watermark base class :class:`_Stage` (buffer, release in event-time order, forward the low
watermark). Plain Python, no Bytewax."""

from __future__ import annotations

import functools
import hashlib
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from salvage.features.anonymous import ANONYMOUS_CUSTOMER_IDS
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


_U64 = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _U64


def _sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _U64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _U64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _U64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _U64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with zero keys: Rust's ``DefaultHasher``, which Bytewax's stateful steps hash
    a key with to pick its worker."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573
    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0 ^= m
    m = (n & 0xFF) << 56 | int.from_bytes(data[end:], "little")
    v3 ^= m
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0 ^= m
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker (0..workers-1, all processes' workers counted) a Bytewax 0.21 stateful step
    routes ``key`` to: the key's hash (a Rust ``String``: its UTF-8 bytes, then 0xFF) modulo the
    worker count. ``tests/flows/test_routing.py`` checks it against Bytewax itself.

    >>> [worker_of(k, 2) for k in ("case-0000", "case-0001", "model-0000", "model-0001")]
    [1, 0, 1, 1]
    """
    return siphash13(key.encode() + b"\xff") % workers


BALANCE = 48  # shard keys spread evenly over any worker count that divides 48 (1-4, 6, 8, 12...)


@functools.cache
def balanced_key(stage: str, slot: int) -> str:
    """The key of a stage's shard ``slot``: ``stage-0007``, or with the smallest suffix ``~n``
    that makes Bytewax route it to worker ``slot % W`` for every worker count W dividing
    :data:`BALANCE`. Plain ``stage-NNNN`` names hash where they happen to: on 2 workers 7 of 8
    customer shards, all 4 lane shards and both model shards of ``SALVAGE_MODEL_SHARDS=2`` went
    to the same worker, so a second process took half the cases and little else.

    >>> [balanced_key("model", i) for i in range(2)]
    ['model-0000~65', 'model-0001~88']
    >>> [worker_of(balanced_key("case", i), 4) for i in range(8)]
    [0, 1, 2, 3, 0, 1, 2, 3]
    """
    base = f"{stage}-{slot:04d}"
    target = slot % BALANCE
    key, n = base, 0
    while worker_of(key, BALANCE) != target:
        n += 1
        key = f"{base}~{n}"
    return key


def case_key(shard: int) -> str:
    return balanced_key("case", shard)


def ctx_key(shard: int) -> str:
    return balanced_key("ctx", shard)


def model_key(shard: int) -> str:
    return balanced_key("model", shard)


def disp_key(shard: int) -> str:
    return balanced_key("disp", shard)


def lane_key(shard: int) -> str:
    return balanced_key("lane", shard)


# the single-key stages, on different workers from the first model shard (slot 0) when there are
# several: the output stage on slot 1, the intent stage on slot 3 (with it on 2 workers)
OUT_KEY = balanced_key("out", 1)
INTENT_KEY = balanced_key("intent", 3)  # one per deployment (whatever SALVAGE_SHARDS says)


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
    # the case stage sends an open case's update on (to context, models and dispatch) only at a
    # decision point: any change but a quiet scan (case.QUIET_CHANGES), or where some policy rule
    # could hold (policy.engine.case_gate); off: every update (README "Decision points")
    decision_points: bool = True
    # placeholder customer ids (lower-cased): an order placed under one is its own customer
    # (features.customer.anonymous_customer; README "Anonymous customers")
    anonymous_customers: frozenset[str] = frozenset(ANONYMOUS_CUSTOMER_IDS)
    # Kafka mode: triggers leave from their dispatch shard (Route.TRIGGER, in the shard's
    # event-time order, which is each customer's) instead of through the total-order output
    # stage, one hop and one watermark wait earlier; file mode keeps the total order
    direct_triggers: bool = False
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
        self._box(route, dest).append((t, tie, payload))

    def _box(self, route: Route, dest: str) -> list[tuple[int, str, Any]]:
        """The list :meth:`send` appends ``dest``'s items of ``route`` to (a caller that sends
        many items may append to it itself)."""
        box = self._outbox.get((route, dest))
        if box is None:
            box = self._outbox[(route, dest)] = []
        return box

    def _push_many(self, items: list[tuple[int, str, Any]]) -> None:
        late = self.reorderer.push_many(items)  # _push on each, in order
        if late:
            metrics.LATE_AFTER_IDLE.inc(late)

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
        runs: list[list[tuple[int, str, Any]]] = []  # the call's batches, not pushed yet
        for item in items:
            kind = type(item)
            if kind is Batch:
                runs.append(item.items)
            elif kind is Event:
                for run in runs:  # pushed in the order they came
                    self._push_many(run)
                runs = []
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
            # nothing else buffered and all of the call's batches released by its tick(s):
            # merged by a sort, as push_many + release would order them (release_runs)
            released = self.reorderer.release_runs(runs) if runs else None
            if released is None:
                for run in runs:
                    self._push_many(run)
                released = self.reorderer.release()
            self.apply(released, self.reorderer.low, out)
            if self._outbox:
                for (route, dest), batch in self._outbox.items():
                    out.append((route, (dest, Batch(batch))))
                self._outbox = {}
            if self.reorderer.low != before:
                out.append((Route.TICK, Tick(self.name, self.reorderer.low, self.seen_t)))
        else:
            for run in runs:
                self._push_many(run)
        _flush_metrics()  # the batch's counter increments, one inc per labelled child
        return out

    @abstractmethod
    def apply(self, released: list[tuple[int, str, Any]], low: int, out: Emit) -> None:
        """Apply the items released below the low watermark ``low``, in order."""


def _id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (Python's own str hash changes between processes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")
