"""The keyed stages of the recovery dataflow, as plain Python (no Bytewax import).

Each stage instance is one logical shard. It receives data items ``("e", t, tiebreak, payload)``
and watermark ticks ``("w", upstream_id, watermark, latest_event_time)``, holds data in a
:class:`Reorderer`, and applies it in event-time order once every upstream has passed it.
What it emits is a list of ``(route, item)`` pairs; the Bytewax wiring
(:mod:`salvage.flows.recovery`) turns routes into keys.

Routes: ``cust`` / ``lane`` / ``out`` carry data to the next stage (``(dest_key, item)``),
``tick`` a watermark to broadcast downstream, ``dlq`` a dead letter, ``case`` a case-store record.
The case stage also sends the return journey's status updates and alerts on ``out``, straight to
the output stage (service messages: no scoring, policy, holdout or contact caps).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import time
import zlib
from abc import ABC, abstractmethod
from array import array
from dataclasses import dataclass, field
from typing import Any

from salvage.connectors.events import STREAM_OF, Stream
from salvage.connectors.outputs import (
    Action,
    AlertState,
    DeadLetterKind,
    JourneyAlert,
    LaneAlert,
    Scores,
    Severity,
    StatusUpdate,
    Trigger,
)
from salvage.connectors.parse import RawRecord, dead_letter
from salvage.features import journey
from salvage.features.customer import CustomerContext
from salvage.features.eventtime import BEGIN, DAY_US, END, HOUR_US, Reorderer, from_us, iso
from salvage.features.lane import LaneConfig, LaneMonitor, LaneTransition
from salvage.features.order_case import PROMISE_RECHECKS_US, OrderCase, Status
from salvage.flows.items import Overdue
from salvage.policy.config import MAX_CONTACT_LOG, Policy, load_policy
from salvage.policy.disposition import decide_disposition
from salvage.policy.engine import CUSTOMER_FACING, decide, holdout_unit
from salvage.scoring.baseline import RuleScorer
from salvage.scoring.models import ModelConfig, ModelSet
from salvage.scoring.text import IntentClassifier
from salvage.sinks import kpis, metrics

Emit = list[tuple[str, Any]]


def _cached(metric):
    """Memoise ``metric.labels(value)``: the lookup costs more than the increment."""
    children: dict[str, Any] = {}

    def child(value: str):
        c = children.get(value)
        if c is None:
            c = children[value] = metric.labels(value)
        return c

    return child


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


@dataclass(frozen=True, slots=True)
class CaseView:
    """What the case stage tells the customer stage about one update of one order."""

    order_id: str
    customer_id: str
    t: int
    source_id: str
    changes: tuple[str, ...]
    features: dict[str, float]
    status: str
    outcome: str | None
    lane: str
    campaign: str
    sku_family: str
    currency: str
    order_value: float
    refunded_amount: float
    returned: bool
    abuse_flags: tuple[str, ...]
    facts: dict | None = None  # the case's scalar facts, on the closing update only
    grade: str = ""
    return_value: float = 0.0
    received_at: int = 0


class _Stage(ABC):
    """Shared watermark handling: buffer, release in order, forward the low watermark."""

    def __init__(self, name: str, upstreams: list[str]) -> None:
        self.name = name
        self.reorderer = Reorderer(upstreams)
        self.seen_t = BEGIN  # latest event time any upstream has seen (carried by ticks)
        self._outbox: dict[tuple[str, str], list[tuple[int, str, Any]]] = {}

    def send(self, route: str, dest: str, t: int, tie: str, payload: Any) -> None:
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

    def on_batch(self, items: list[tuple]) -> Emit:
        out: Emit = []
        ticked = False
        for item in items:
            kind = item[0]
            if kind == "b":
                for t, tie, payload in item[1]:
                    self._push(t, tie, payload)
            elif kind == "e":
                self._push(item[1], item[2], item[3])
            else:
                _, src, wm, seen = item
                self.reorderer.tick(src, wm, seen)
                if seen > self.seen_t:
                    self.seen_t = seen
                ticked = True
        if ticked:
            before = self.reorderer.low
            released = self.reorderer.release()
            self.apply(released, self.reorderer.low, out)
            if self._outbox:
                for (route, dest), batch in self._outbox.items():
                    out.append((route, (dest, ("b", batch))))
                self._outbox = {}
            if self.reorderer.low != before:
                out.append(("tick", ("w", self.name, self.reorderer.low, self.seen_t)))
        return out

    def rebind(self, cfg: StageConfig) -> None:
        """On a resume from a snapshot: adopt the current run's configuration (policy, thresholds,
        windows) instead of the one pickled with the state; what was learned and buffered stays.
        The manifest (salvage.runner.run_manifest) refuses changes that would move keys."""
        if hasattr(self, "cfg"):
            self.cfg = cfg

    @abstractmethod
    def apply(self, released: list[tuple[int, str, Any]], low: int, out: Emit) -> None:
        """Apply the items released below the low watermark ``low``, in order."""


class CaseStage(_Stage):
    """Per-order case state for the orders of one shard (key ``case-NNNN``)."""

    def __init__(self, shard: int, cfg: StageConfig) -> None:
        super().__init__(case_key(shard), case_upstreams(cfg))
        self.shard = shard
        self.cfg = cfg
        self.cases: dict[str, OrderCase] = {}
        self.timers: list[tuple[int, str]] = []
        self.tombstones: dict[str, int] = {}
        self.tomb_heap: list[tuple[int, str]] = []
        # a closed case's event ids, as 64-bit hashes (8 B each, not the strings): a redelivered
        # event of a closed case is a duplicate, not a dead letter
        self.tomb_ids: dict[str, array] = {}
        # and their payload digests (crc32, same positions): a conflicting copy is inconsistent
        self.tomb_digests: dict[str, bytes] = {}
        # events of orders not seen yet, waiting for their order_placed (order id -> items)
        self.orphans: dict[str, list[tuple[int, str, Any]]] = {}
        self.orphan_heap: list[tuple[int, str]] = []
        # settled cases in their grace period: order id -> compact record (see Settled)
        self.settled: dict[str, Settled] = {}
        self._configure(cfg)

    def _configure(self, cfg: StageConfig) -> None:
        """The parts of the stage that follow the configuration (at start and on a resume)."""
        self.journey = cfg.policy.journey.config()  # None: journey tracking off
        if self.journey is not None:  # series exist from the start (increase() works)
            for stage in self.journey.stages:
                _STATUS_UPDATES(stage.value)
            for kind in self.journey.alerts:
                _JOURNEY_ALERTS(kind.value)

    def rebind(self, cfg: StageConfig) -> None:
        super().rebind(cfg)
        for name, empty in (("tomb_digests", dict), ("orphans", dict), ("orphan_heap", list)):
            if not hasattr(self, name):  # a snapshot from before these existed
                setattr(self, name, empty())
        # input partitions added since the snapshot (a Kafka topic grown by ops): wait for them
        if not hasattr(self, "settled"):  # a snapshot written before the grace period
            self.settled = {}
        for source in case_upstreams(cfg):
            self.reorderer.upstream.setdefault(source, BEGIN)
        if not cfg.intent_stage:  # inference turned off: no intent stage to wait for
            self.reorderer.upstream.pop(INTENT_KEY, None)
        self._configure(cfg)
        # deadlines follow the config (return window, journey thresholds): a timer computed under
        # the old one would be discarded when it fires and the new deadline never scheduled
        self.timers = [
            (d, oid)
            for oid, case in self.cases.items()
            if (
                d := case.next_deadline(cfg.return_window_us, self.journey, cfg.promise_rechecks_us)
            )
        ]
        heapq.heapify(self.timers)

    # -- helpers -----------------------------------------------------------------
    def _schedule(self, case: OrderCase) -> None:
        deadline = case.next_deadline(
            self.cfg.return_window_us, self.journey, self.cfg.promise_rechecks_us
        )
        if deadline:
            heapq.heappush(self.timers, (deadline, case.order_id))

    def _fire_timers(self, until: int, out: Emit) -> None:
        """Fire every timer with deadline < until, in (deadline, order id) order."""
        timers = self.timers
        window = self.cfg.return_window_us
        rechecks = self.cfg.promise_rechecks_us
        while timers and timers[0][0] < until:
            deadline, order_id = heapq.heappop(timers)
            case = self.cases.get(order_id)
            if case is None or case.next_deadline(window, self.journey, rechecks) != deadline:
                continue  # stale timer
            if case.core_deadline(window, rechecks) == deadline:
                changes = case.on_time(deadline, window, rechecks)
                if changes:
                    self._emit_view(case, deadline, f"~timer:{order_id}", changes, out)
            if self.journey is not None and journey.deadline(case, self.journey) == deadline:
                # journey alerts go straight to the output: no case view, so no new decision
                for alert in journey.on_time(case, deadline, self.journey):
                    self._journey_alert(case, alert, f"~timer:{order_id}")
            self._after_update(case, deadline)

    def _journey(self, case: OrderCase, ev, t: int) -> None:
        """Status updates and breakage alerts caused by a returns event (after case.apply)."""
        if ev.event_type == "return_graded" and case.received_at and t >= case.received_at:
            metrics.GRADING_DELAY.observe((t - case.received_at) / 1e6)
        if self.journey is None or ev.event_type not in journey.STAGE_OF_EVENT:
            return
        amount = getattr(ev, "amount", None)
        statuses, alerts = journey.on_event(case, ev.event_type, t, amount, self.journey)
        for alert in alerts:
            self._journey_alert(case, alert, ev.event_id)
        for notice in statuses:
            update = StatusUpdate(
                update_id=journey.journey_id(case.order_id, case.return_id, notice.stage.value),
                order_id=case.order_id,
                customer_id=case.customer_id,
                return_id=case.return_id,
                stage=notice.stage,
                occurred_at=from_us(t),
                preferred_resolution=case.preferred_resolution,
                expected_refund_date=notice.expected_refund_date,
                amount=notice.amount,
                currency=case.currency,
                policy_version=self.cfg.policy.version,
                source_event_id=ev.event_id,
            )
            _STATUS_UPDATES(notice.stage.value).inc()
            self.send("out", OUT_KEY, t, f"s|{update.update_id}", ("status_update", update))

    def _journey_alert(self, case: OrderCase, notice: journey.AlertNotice, source: str) -> None:
        alert = JourneyAlert(
            alert_id=journey.journey_id(case.order_id, case.return_id, notice.kind.value),
            order_id=case.order_id,
            return_id=case.return_id,
            kind=notice.kind,
            detected_at=from_us(notice.t),
            threshold_hours=notice.threshold_hours,
            observed_hours=notice.observed_hours,
            received_at=from_us(case.received_at) if case.received_at else None,
            return_reason=case.return_reason,
            return_value=case.return_value,
            currency=case.currency,
            sku_family=case.sku_family,
            lane=case.lane,
            policy_version=self.cfg.policy.version,
            source_event_id=source,
        )
        _JOURNEY_ALERTS(notice.kind.value).inc()
        self.send("out", OUT_KEY, notice.t, f"j|{alert.alert_id}", ("journey_alert", alert))

    def _after_update(self, case: OrderCase, t: int) -> None:
        if case.status is Status.CLOSED:
            del self.cases[case.order_id]
            self.tombstones[case.order_id] = t
            self.tomb_ids[case.order_id] = array("Q", map(_id_hash, case.seen))
            self.tomb_digests[case.order_id] = _digests(case)
            grace = self.cfg.settled_grace_us
            if grace > 0:
                self.settled[case.order_id] = Settled.of(case)
            heapq.heappush(self.tomb_heap, (t + max(TOMBSTONE_US, grace), case.order_id))
            _CLOSED(case.outcome.value if case.outcome else "unknown").inc()
        else:
            self._schedule(case)

    def _lane_fact(self, case: OrderCase, ev, t: int, changes: list[str]) -> None:
        """A shipment cohort fact for the lane monitor: shipped (or first scanned) with a
        promise, a delay signal, or delivered (the monitor judges on time / late itself)."""
        kind = ev.event_type
        if kind == "carrier_scan":
            if "delivered" in changes:
                fact = "delivered"
            elif "delay_signal" in changes:
                fact = "late"
            else:
                fact = "shipped"
        elif kind == "order_shipped":
            fact = "shipped"
        else:
            return
        dest = lane_key(shard_of(case.lane, self.cfg.lane_shards))
        self.send("lane", dest, t, ev.event_id, (case.lane, case.order_id, case.promised_at, fact))

    def _expire_tombstones(self, low: int) -> None:
        heap = self.tomb_heap
        while heap and heap[0][0] < low:
            _, order_id = heapq.heappop(heap)
            self.tombstones.pop(order_id, None)
            self.tomb_ids.pop(order_id, None)
            self.tomb_digests.pop(order_id, None)
            self.settled.pop(order_id, None)

    def _emit_view(self, case: OrderCase, t: int, source_id: str, changes, out: Emit) -> None:
        view = CaseView(
            order_id=case.order_id,
            customer_id=case.customer_id,
            t=t,
            source_id=source_id,
            changes=tuple(changes),
            features=case.features(t),
            status=case.status.value,
            outcome=case.outcome.value if case.outcome else None,
            lane=case.lane,
            campaign=case.campaign,
            sku_family=case.sku_family,
            currency=case.currency,
            order_value=case.order_value,
            refunded_amount=case.refunded_amount,
            returned=bool(case.return_requested_at),
            abuse_flags=case.abuse_flags,
            facts=case.facts() if case.status is Status.CLOSED else None,
            grade=case.grade,
            return_value=case.return_value,
            received_at=case.received_at,
        )
        dest = ctx_key(shard_of(case.customer_id, self.cfg.cust_shards))
        self.send("ctx", dest, t, f"{source_id}|{case.order_id}", view)

    def _settled_fact(self, ev, t: int, inferred: str | None = None) -> bool:
        """A late fact for a settled case in its grace period (DESIGN §11: "a case settles, then
        listens"): a grade, support contact, chargeback or review verdict updates the customer's
        history, the abuse label and the KPIs (a ``settled`` case view to the customer stage).
        False: not such a fact, or the grace period is over (the caller dead-letters it)."""
        rec = self.settled.get(ev.order_id)
        kind = ev.event_type
        if rec is None or kind not in SETTLED_FACTS:
            return False
        if t - rec.closed_at > self.cfg.settled_grace_us:
            return False
        ids = self.tomb_ids.get(ev.order_id)
        if ids is not None:  # a redelivery of this late fact is a duplicate too
            ids.append(_id_hash(ev.event_id))
        changes: list[str] = []
        features: dict[str, float] = {}
        flags: tuple[str, ...] = ()
        amount = 0.0
        flagged = rec.flagged  # before this fact
        if kind == "return_graded":
            flags = tuple(sorted({f.value for f in ev.abuse_flags}))
            if flags and not rec.flagged:
                rec.flagged = True
                changes.append("graded")
        elif kind == "support_contact":
            intent = ev.intent.value if ev.intent is not None else inferred or "other"
            features = {"last_contact_sentiment": ev.sentiment or 0.0}
            changes += ["contact", f"intent:{intent}"]
        elif kind == "chargeback_filed":
            amount = float(ev.amount)
            changes.append("chargeback")
        else:  # review_resolved
            if not rec.verdict:
                rec.verdict = ev.verdict.value
                rec.reviewed_at = t
            rec.flagged = rec.flagged or ev.verdict.value == "abuse_confirmed"
            changes.append("reviewed")
        metrics.SETTLED_FACTS.labels(STREAM_OF[kind].value).inc()
        if not changes:
            return True  # e.g. a clean re-grade: nothing new for history or labels
        view = CaseView(
            order_id=ev.order_id,
            customer_id=rec.customer_id,
            t=t,
            source_id=ev.event_id,
            changes=tuple(changes),
            features=features,
            status="settled",
            outcome=rec.outcome,
            lane="",
            campaign="",
            sku_family="",
            currency="",
            order_value=0.0,
            refunded_amount=amount,
            returned=True,
            abuse_flags=flags,
            facts={
                "order_id": ev.order_id,
                "outcome": rec.outcome,
                "closed_at": rec.closed_at,
                "abuse_flags": list(flags),
                "review_verdict": rec.verdict,
                "reviewed_at": rec.reviewed_at,
                "late": kind,
                "amount": amount,
                "currency": ev.currency if kind == "chargeback_filed" else "",
                "flagged": flagged,
            },
        )
        dest = ctx_key(shard_of(rec.customer_id, self.cfg.cust_shards))
        self.send("ctx", dest, t, f"{ev.event_id}|{ev.order_id}", view)
        return True

    def _dead(self, raw_event, kind: DeadLetterKind, message: str, out: Emit) -> None:
        raw = RawRecord(f"stage:{self.name}", self.shard, -1, raw_event.model_dump_json().encode())
        letter = dead_letter(raw, kind, message, raw_event.event_id, raw_event.order_id)
        metrics.DEAD_LETTERS.labels(kind.value).inc()
        out.append(("dlq", letter))

    # -- duplicates and orphans ----------------------------------------------------
    def _known_digest(self, order_id: str, event_id: str) -> int | None:
        """The payload digest remembered for ``event_id`` of ``order_id`` (0: remembered without
        a digest, by state from before digests), or None if the event id is not remembered."""
        case = self.cases.get(order_id)
        if case is not None:
            seen = case.seen
            if event_id not in seen:
                return None
            i = seen.index(event_id)
            return _digest_at(_digests(case), i)
        ids = self.tomb_ids.get(order_id)
        if ids is None:
            return None
        h = _id_hash(event_id)
        if h not in ids:
            return None
        i = ids.index(h)
        return _digest_at(self.tomb_digests.get(order_id, b""), i)

    def _duplicate(self, ev, tie: str, out: Emit) -> bool:
        """True if ``ev`` repeats a remembered event id: counted as a duplicate when the payload
        is the same (or its digest is unknown), an ``inconsistent`` dead letter otherwise; the
        first one applied (in event-time order) is kept either way."""
        known = self._known_digest(ev.order_id, ev.event_id)
        if known is None:
            return False
        if known == 0 or known == _tie_digest(tie):
            metrics.DUPLICATES.inc()
        else:
            self._dead(
                ev,
                DeadLetterKind.INCONSISTENT,
                "event_id already applied with a different payload; the first one is kept",
                out,
            )
        return True

    def _park(self, t: int, tie: str, item, out: Emit) -> None:
        """An event of an order with no order_placed yet waits for it (a replay after a quiet
        spell can deliver support, returns and scans before their order: README "Reliability").
        ``item`` is the event, or the intent stage's :class:`InferredContact` wrapping it."""
        ev = _event_of(item)
        waiting = self.orphans.get(ev.order_id)
        if waiting is None:
            waiting = self.orphans[ev.order_id] = []
            heapq.heappush(self.orphan_heap, (t + self.cfg.orphan_wait_us, ev.order_id))
        if len(waiting) >= MAX_ORPHANS_PER_ORDER:
            self._dead(ev, DeadLetterKind.UNKNOWN_ORDER, "no order_placed seen", out)
            return
        waiting.append((t, tie, item))
        metrics.ORPHANS_PARKED.inc()
        while len(self.orphans) > MAX_ORPHAN_ORDERS:  # memory bound: the longest-waiting go
            _, oldest = heapq.heappop(self.orphan_heap)
            for _t, _tie, old in self.orphans.pop(oldest, ()):
                self._dead(
                    _event_of(old), DeadLetterKind.UNKNOWN_ORDER, "no order_placed seen", out
                )

    def _expire_orphans(self, until: int, out: Emit) -> None:
        """Dead-letter the orphans whose wait ended before ``until`` (all of them at the end)."""
        heap = self.orphan_heap
        while heap and (heap[0][0] < until or until >= END):
            _, order_id = heapq.heappop(heap)
            for _t, _tie, item in self.orphans.pop(order_id, ()):
                self._dead(
                    _event_of(item), DeadLetterKind.UNKNOWN_ORDER, "no order_placed seen", out
                )

    # -- the stage ---------------------------------------------------------------
    def apply(self, released, low: int, out: Emit) -> None:
        pending = list(released)
        pending.reverse()  # a stack: orphans adopted by their order_placed are pushed on top
        while pending:
            t, tie, item = pending.pop()
            inferred = None
            ev = item
            if isinstance(item, InferredContact):  # through the intent stage
                ev, inferred = item.event, item.intent
            self._fire_timers(t, out)
            if type(ev) is Overdue:
                if not self._duplicate(ev.event, tie, out):
                    metrics.DEAD_LETTERS.labels(ev.letter.kind.value).inc()
                    out.append(("dlq", ev.letter))
                continue
            if self._duplicate(ev, tie, out):
                continue
            order_id = ev.order_id
            case = self.cases.get(order_id)
            if case is None:
                if order_id in self.tombstones:
                    if self._settled_fact(ev, t, inferred):
                        continue
                    self._dead(
                        ev,
                        DeadLetterKind.UNKNOWN_ORDER,
                        f"case closed at {iso(self.tombstones[order_id])}",
                        out,
                    )
                    continue
                if ev.event_type != "order_placed":
                    self._park(t, tie, item, out)  # with its inferred intent, if any
                    continue
                case = self.cases[order_id] = OrderCase(order_id)
                metrics.CASES_OPENED.inc()
                adopted = self.orphans.pop(order_id, None)
                if adopted:  # applied right after their order, at its time, in their order
                    pending.extend((t, a_tie, a_ev) for _t, a_tie, a_ev in reversed(adopted))
            elif ev.event_type == "order_placed":
                self._dead(ev, DeadLetterKind.INCONSISTENT, "second order_placed for order", out)
                continue
            self._apply_event(case, t, tie, ev, inferred, out)
        horizon = self.horizon(low)
        self._fire_timers(horizon, out)
        self._expire_tombstones(horizon)
        if self.orphan_heap:
            confirmed = min(horizon, self.reorderer.confirmed_low())
            self._expire_orphans(END if low >= END else confirmed, out)
        if BEGIN < low < END:  # a shard without a watermark yet has no position to report
            metrics.EVENT_TIME_LAG.labels(str(self.shard)).set(time.time() - low / 1e6)
        metrics.OPEN_CASES.labels(str(self.shard)).set(len(self.cases))

    def _apply_event(
        self, case: OrderCase, t: int, tie: str, ev, inferred: str | None, out: Emit
    ) -> None:
        window = self.cfg.return_window_us
        changes = case.apply(ev, t, window, inferred)
        _remember_digest(case, _tie_digest(tie))
        _EVENTS(STREAM_OF[ev.event_type].value).inc()
        self._emit_view(case, t, ev.event_id, changes, out)
        if STREAM_OF[ev.event_type] is Stream.RETURNS:
            self._journey(case, ev, t)
        if case.lane != "unknown" and case.promised_at:
            self._lane_fact(case, ev, t, changes)
        self._after_update(case, t)


MAX_ORPHANS_PER_ORDER = 256


def _event_of(item):
    """The event inside an item (the intent stage wraps support contacts)."""
    return item.event if isinstance(item, InferredContact) else item


MAX_ORPHAN_ORDERS = 50_000  # per case shard: orders with events waiting for their order_placed


def _tie_digest(tie: str) -> int:
    """The payload digest a source put at the end of an event's tiebreak (``id|crc32hex``)."""
    try:
        return int(tie.rpartition("|")[2], 16) or 1
    except ValueError:
        return 0


def _digests(case: OrderCase) -> bytes:
    try:
        return case.digests
    except AttributeError:  # a case from a snapshot taken before digests existed
        return b""


def _digest_at(digests: bytes, i: int) -> int:
    """The ``i``-th 4-byte digest (0: unknown)."""
    return int.from_bytes(digests[4 * i : 4 * i + 4], "little") if 4 * i < len(digests) else 0


def _remember_digest(case: OrderCase, digest: int) -> None:
    """Keep ``case.digests`` (4 bytes per id) parallel to ``case.seen`` (which forgets its oldest
    ids)."""
    n = 4 * len(case.seen)
    digests = _digests(case) + digest.to_bytes(4, "little")
    if len(digests) > n:
        digests = digests[-n:]
    elif len(digests) < n:
        digests = bytes(n - len(digests)) + digests
    case.digests = digests


SETTLED_FACTS = frozenset(
    {"return_graded", "support_contact", "chargeback_filed", "review_resolved"}
)


@dataclass(slots=True)
class Settled:
    """What a settled case keeps for its grace period: ~120 B with its dict entry (the id strings
    are shared with the tombstone and the customer context), next to the event-id hashes."""

    customer_id: str
    closed_at: int
    outcome: str
    flagged: bool  # a grade with abuse flags was already counted in the customer's history
    verdict: str = ""
    reviewed_at: int = 0

    @classmethod
    def of(cls, case: OrderCase) -> Settled:
        return cls(
            case.customer_id,
            case.closed_at,
            case.outcome.value if case.outcome else "",
            bool(case.abuse_flags),
            case.review_verdict,
            case.reviewed_at,
        )


def _id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (Python's own str hash changes between processes)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def trigger_id(order_id: str, action: str, source_id: str) -> str:
    """Deterministic: the same action for the same case update has the same id whatever the policy
    version, so a resume that adopts a new policy and replays the updates since its snapshot
    repeats ids (deduped downstream) instead of messaging the customer twice."""
    digest = hashlib.sha256(f"{order_id}|{action}|{source_id}".encode())
    return digest.hexdigest()[:32]


def case_upstreams(cfg: StageConfig) -> list[str]:
    """What a case shard waits for: every input partition, and the intent stage if any."""
    return [*cfg.sources, INTENT_KEY] if cfg.intent_stage else list(cfg.sources)


def routes_to_intents(ev) -> bool:
    """Support contacts with text go through the intent stage (to learn from, or to fill in);
    an :class:`~salvage.flows.items.Overdue` event goes straight to its case shard (to be
    deduplicated)."""
    return getattr(ev, "event_type", None) == "support_contact" and bool(ev.text)


@dataclass(frozen=True, slots=True)
class InferredContact:
    """A support contact on its way from the intent stage to its case shard; ``intent`` is the
    inferred one (None when the contact carries an agent-set intent)."""

    event: Any
    intent: str | None


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

    def rebind(self, cfg: StageConfig) -> None:
        super().rebind(cfg)
        for source in cfg.sources:
            self.reorderer.upstream.setdefault(source, BEGIN)
        self.intents.threshold = cfg.intent_threshold  # a resume keeps what it learned

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
            self.send("case", dest, t, tie, InferredContact(ev, inferred))
        if labelled:
            metrics.INTENT_ACCURACY.labels("0").set(clf.accuracy)
            metrics.INTENT_COVERAGE.labels("0").set(clf.coverage)


class ContextStage(_Stage):
    """Customer context for one customer shard; forwards each case update, with the merged
    case + customer features, to the model shard of its customer."""

    def __init__(self, shard: int, cfg: StageConfig) -> None:
        super().__init__(ctx_key(shard), cfg.case_keys())
        self.shard = shard
        self.cfg = cfg
        self.customers: dict[str, CustomerContext] = {}
        self.last_sweep = 0

    def apply(self, released, low: int, out: Emit) -> None:
        for t, tie, view in released:
            ctx = self.customers.get(view.customer_id)
            if ctx is None:
                ctx = self.customers[view.customer_id] = CustomerContext(view.customer_id)
            if "placed" in view.changes:
                # KPI fact: an order, and how long ago this customer last returned something
                out.append(("kpi", {"kind": "order", "t": t, "customer": ctx.features(t)}))
            ctx.observe(t, view.changes, view)
            dest = model_key(shard_of(view.customer_id, self.cfg.model_shards))
            if view.status == "settled":
                # a late fact of a settled case: history (above), KPIs and labels; never scored
                out.append(("kpi", {"kind": "settled", "t": t, "case": view.facts}))
                self.send("model", dest, t, tie, (view, None))
                continue
            features = view.features | ctx.features(t)
            self.send("model", dest, t, tie, (view, features))
        if low < END and low - self.last_sweep > DAY_US:
            self.last_sweep = low
            idle = [c for c, x in self.customers.items() if low - x.last_seen > CUSTOMER_IDLE_US]
            for c in idle:
                del self.customers[c]


class ModelStage(_Stage):
    """Rule baseline + online models for one model shard: score, learn on labels, promote."""

    def __init__(self, shard: int, cfg: StageConfig) -> None:
        super().__init__(model_key(shard), cfg.cust_keys("ctx"))
        self.shard = shard
        self.cfg = cfg
        self.rules = RuleScorer()
        self.models = ModelSet(cfg.model)
        for name in ("recoverability", "abuse"):  # series exist from the start (increase() works)
            _MODEL_CHANGES["promoted"](name)
            _MODEL_CHANGES["demoted"](name)

    def rebind(self, cfg: StageConfig) -> None:
        super().rebind(cfg)
        # promotion and demotion gates of this run; the models' structure (learning rate, windows)
        # is fixed when they are created
        self.models.cfg = cfg.model
        self.models.recoverability.cfg = self.models.abuse.cfg = cfg.model
        self.models.upgrade()  # a snapshot written before issue 11's fields

    def apply(self, released, low: int, out: Emit) -> None:
        labelled = False
        for t, tie, (view, features) in released:
            events: list[dict] = self.models.expire_awaiting(t)
            if features is None:  # a settled case's late fact: a label, maybe (see ModelSet)
                assert view.facts is not None
                events += self.models.late_fact(view.order_id, t, view.facts)
                for ev in events:
                    _MODEL_CHANGES[ev["change"]](ev["model"]).inc()
                labelled = True
                dest = disp_key(shard_of(view.customer_id, self.cfg.cust_shards))
                self.send("disp", dest, t, tie, (view, None, None, events))
                continue
            closed = view.status == "closed"
            if closed:
                labelled = True
                assert view.facts is not None  # a closing update carries the facts
                events += self.models.label(view.order_id, t, view.facts)
            if events:
                for ev in events:
                    _MODEL_CHANGES[ev["change"]](ev["model"]).inc()
            rules = self.rules.score(features)
            scored = self.models.score(
                view.order_id,
                t,
                features,
                rules,
                view.returned,
                snapshot=not closed,
                risk=not RISK_SIGNALS.isdisjoint(view.changes),
            )
            dest = disp_key(shard_of(view.customer_id, self.cfg.cust_shards))
            self.send("disp", dest, t, tie, (view, features, scored, events))
        if labelled:
            self._export_metrics()

    def _export_metrics(self) -> None:
        shard = str(self.shard)
        for name, summary in self.models.summary().items():
            metrics.MODEL_ACTIVE.labels(name, shard).set(1 if summary["active"] else 0)
            for scorer in ("model", "rules"):
                s = summary[scorer]
                # one-class window: NaN, Prometheus' "no value" (never 0)
                auc = s["auc"]
                metrics.MODEL_AUC.labels(name, scorer, shard).set(
                    float("nan") if auc is None else auc
                )
                metrics.MODEL_LOGLOSS.labels(name, scorer, shard).set(s["logloss"])
                metrics.MODEL_BRIER.labels(name, scorer, shard).set(s["brier"])
            metrics.MODEL_LABELS.labels(name, shard).set(summary["labels"])


class DispatchStage(_Stage):
    """Policy, guardrails and triggers for one customer shard (contact caps live here)."""

    def __init__(self, shard: int, cfg: StageConfig) -> None:
        super().__init__(disp_key(shard), cfg.model_keys())
        self.shard = shard
        self.cfg = cfg
        self.contacted: dict[str, list[int]] = {}  # customer -> our outbound contact times
        self.sent: dict[str, list[str]] = {}  # order id -> actions already triggered
        self.first_score: dict[str, float] = {}  # order id -> first recoverability score
        self.held_out: dict[str, set[str]] = {}  # order -> its held-out actions
        self.last_decision: dict[str, dict] = {}  # order id -> the latest non-empty decision
        self.assigned: set[str] = set()  # orders with an uplift (ITT) assignment, until close
        self.spent: dict[tuple[str, int], float] = {}  # (action, event-time day) -> spend
        self.last_sweep = 0

    def apply(self, released, low: int, out: Emit) -> None:
        for t, _tie, (view, features, scored, events) in released:
            for ev in events:
                out_ev = {**ev, "at": iso(ev["t"]), "shard": self.cfg.model_shard_of(view)}
                tie = f"m|{ev['model']}|{ev['change']}|{ev['labels']}|{out_ev['shard']}"
                self.send("out", OUT_KEY, t, tie, ("model_event", out_ev))
            if scored is not None:  # None: a settled case's late fact (no decision)
                self._update(t, view, features, scored, out)
        if low < END and low - self.last_sweep > DAY_US:
            self.last_sweep = low
            stale = [c for c, ts in self.contacted.items() if ts and low - ts[-1] > 30 * DAY_US]
            for c in stale:
                del self.contacted[c]
            today = low // DAY_US
            for key in [k for k in self.spent if k[1] < today - 1]:
                del self.spent[key]

    def _contacts_within(self, customer: str, t: int, window_us: int) -> int:
        return sum(1 for c in self.contacted.get(customer, ()) if t - window_us < c <= t)

    def _disposition(self, t: int, view: CaseView) -> None:
        """A graded return: recommend restock / open box / refurbish / donate / dispose."""
        waited = (t - view.received_at) / DAY_US if view.received_at else 0.0
        doc = decide_disposition(
            self.cfg.policy.disposition,
            view.grade,
            view.sku_family,
            view.return_value or view.order_value,
            waited,
        )
        doc = {
            "disposition_id": trigger_id(view.order_id, "disposition", view.source_id),
            "order_id": view.order_id,
            "decided_at": iso(t),
            "policy_version": self.cfg.policy.version,
            **doc,
        }
        _DISPOSITIONS(doc["route"]).inc()
        self.send("out", OUT_KEY, t, f"d|{doc['disposition_id']}", ("disposition", doc))

    def _update(self, t: int, view: CaseView, features, scored, out: Emit) -> None:
        if "graded" in view.changes and view.grade:
            self._disposition(t, view)
        scores = scored.scores
        closed = view.status == "closed"
        if RISK_SIGNALS.intersection(view.changes):
            # the score when the case first showed risk: what "recoverable" means for leakage
            self.first_score.setdefault(view.order_id, scores.recoverability)
            if self.cfg.score_log:
                out.append(
                    (
                        "score",
                        {
                            "order_id": view.order_id,
                            "t": t,
                            "returned": view.returned,
                            "model": scored.shadow,
                            "rules": {
                                "recoverability": scored.rules.recoverability,
                                "abuse": scored.rules.abuse,
                            },
                            "driving": scores.model_version,
                        },
                    )
                )
        policy = self.cfg.policy
        decision = decide(policy, features, scores, resolved=closed or view.outcome is not None)
        decision_doc: dict[str, Any] | None = None
        if decision is not None:
            action = decision.action
            decision_doc = {
                "action": action.value,
                "expected_value": decision.expected_value,
                "cost": decision.cost,
                "reason_codes": list(decision.reason_codes),
                "candidates": [list(c) for c in decision.candidates],
                "guardrails": list(decision.guardrails),
            }
            if "abuse_block" in decision.guardrails:
                _SUPPRESSED("abuse_block").inc()
            # a forced review (costly, ambiguous, likely abuse) is never held out or budgeted away:
            # it is the guard against rewarding abuse, not an intervention to measure or ration
            forced = "review_routing" in decision.guardrails
            suppressed = self._guardrail(view, action, decision.cost, t, forced)
            self._assign(t, view, features, action, forced, suppressed)
            decision_doc["suppressed_by"] = suppressed
            if suppressed:
                _SUPPRESSED(suppressed).inc()
            else:
                self.sent.setdefault(view.order_id, []).append(action.value)
                share = policy.actions[action].holdout_share
                holdout = (
                    share > 0 and not forced and holdout_unit(view.order_id, policy.version) < share
                )
                trig = Trigger(
                    trigger_id=trigger_id(view.order_id, action.value, view.source_id),
                    order_id=view.order_id,
                    customer_id=view.customer_id,
                    action=action,
                    priority=decision.priority,
                    reason_codes=list(decision.reason_codes),
                    scores=Scores(recoverability=scores.recoverability, abuse=scores.abuse),
                    expected_value=decision.expected_value,
                    cost=decision.cost,
                    currency=view.currency,
                    policy_version=policy.version,
                    model_version=scores.model_version,
                    holdout=holdout,
                    decided_at=from_us(t),
                    expires_at=from_us(t + decision.ttl_hours * HOUR_US),
                    source_event_id=view.source_id,
                )
                decision_doc["trigger_id"] = trig.trigger_id
                decision_doc["holdout"] = holdout
                if holdout:
                    # the control group: recorded, never published, no contact, no spend
                    self.held_out.setdefault(view.order_id, set()).add(action.value)
                    _HOLDOUT(action.value).inc()
                else:
                    if action in CUSTOMER_FACING:
                        log = self.contacted.setdefault(view.customer_id, [])
                        log.append(t)
                        del log[:-MAX_CONTACT_LOG]
                    key = (action.value, t // DAY_US)
                    self.spent[key] = self.spent.get(key, 0.0) + decision.cost
                    _TRIGGERS(action.value).inc()
                    for reason in decision.reason_codes:
                        metrics.TRIGGER_REASONS.labels(action.value, reason).inc()
                    self.send("out", OUT_KEY, t, f"t|{trig.trigger_id}", ("trigger", trig))
        if decision_doc is not None and self.cfg.case_records:
            self.last_decision[view.order_id] = decision_doc
        if self.cfg.case_records:
            record = {
                "order_id": view.order_id,
                "customer_id": view.customer_id,
                "status": view.status,
                "outcome": view.outcome,
                "updated_at": iso(t),
                "lane": view.lane,
                "campaign": view.campaign,
                "sku_family": view.sku_family,
                "features": features,
                "scores": {
                    "recoverability": scores.recoverability,
                    "abuse": scores.abuse,
                    "model_version": scores.model_version,
                    "rules": {
                        "recoverability": scored.rules.recoverability,
                        "abuse": scored.rules.abuse,
                    },
                    "models": scored.shadow,
                },
                "decision": decision_doc,
                "last_decision": decision_doc or self.last_decision.get(view.order_id),
                "triggered": self.sent.get(view.order_id, []),
            }
            out.append(("case", (view.order_id, t, json.dumps(record))))
        if closed and view.order_id in self.assigned:
            self.assigned.discard(view.order_id)
            self._outcome(t, view)
        if closed:
            # KPI fact: what happened to the case, and what we did about it (metrics only)
            out.append(
                (
                    "kpi",
                    {
                        "kind": "case",
                        "t": t,
                        "case": view.facts,
                        "first_recoverability": self.first_score.pop(view.order_id, None),
                        "scores": {"recoverability": scores.recoverability, "abuse": scores.abuse},
                        "triggered": list(self.sent.get(view.order_id, ())),
                        "held_out": sorted(self.held_out.get(view.order_id, ())),
                        "customer": {
                            k: v for k, v in features.items() if k.startswith("customer_")
                        },
                    },
                )
            )
            self.sent.pop(view.order_id, None)
            self.held_out.pop(view.order_id, None)
            self.last_decision.pop(view.order_id, None)

    def _assign(
        self, t: int, view: CaseView, features, action: Action, forced: bool, suppressed: str
    ) -> None:
        """Intention-to-treat assignment (see :mod:`salvage.uplift`): the first decision point of
        an order whose chosen action is randomised (holdout share > 0, not a forced review) fixes
        its arm, from the same deterministic holdout draw the trigger uses, whatever a guardrail
        or a later decision does to it. Recorded once per order through the output stage."""
        if view.order_id in self.assigned or forced:
            return
        policy = self.cfg.policy
        share = policy.actions[action].holdout_share
        if share <= 0:
            return
        self.assigned.add(view.order_id)
        doc = {
            "order_id": view.order_id,
            "customer_id": view.customer_id,
            "action": action.value,
            "holdout": holdout_unit(view.order_id, policy.version) < share,
            "holdout_share": share,
            "decided_at": iso(t),
            "suppressed_by": suppressed,
            "order_value": round(view.order_value, 2),
            "margin": round(float(features.get("margin", 0.0)), 2),
            "currency": view.currency,
            "policy_version": policy.version,
        }
        self.send("out", OUT_KEY, t, f"a|{view.order_id}", ("assignment", doc))

    def _outcome(self, t: int, view: CaseView) -> None:
        """The closing outcome of an assigned order (orders still open when the log ends have
        none: they count as retained, DESIGN §11)."""
        doc = {
            "order_id": view.order_id,
            "outcome": view.outcome,
            "retained": view.outcome not in ("refund", "chargeback"),
            "refunded_amount": round(view.refunded_amount, 2),
            "closed_at": iso(t),
        }
        self.send("out", OUT_KEY, t, f"o|{view.order_id}", ("outcome", doc))

    def _guardrail(
        self, view: CaseView, action: Action, cost: float, t: int, forced: bool = False
    ) -> str:
        """The stateful guardrails, in order; returns the one that suppresses, or ''. ``forced``:
        a forced review, which no daily budget suppresses (once per order still applies)."""
        policy = self.cfg.policy
        g = policy.guardrails
        if action.value in self.sent.get(view.order_id, ()):
            return "once_per_order"
        if action in CUSTOMER_FACING:
            if self._contacts_within(view.customer_id, t, DAY_US) >= g.contact_cap_24h:
                return "contact_cap_24h"
            if self._contacts_within(view.customer_id, t, 30 * DAY_US) >= g.contact_cap_30d:
                return "contact_cap_30d"
        budget = policy.actions[action].budget_per_day
        if budget is not None and not forced:
            # the daily budget is split evenly over the dispatch shards (deterministic)
            share = budget / self.cfg.cust_shards
            if self.spent.get((action.value, t // DAY_US), 0.0) + cost > share:
                return "daily_budget"
        return ""


class LaneStage(_Stage):
    """Per-courier-lane delay monitors for one lane shard."""

    def __init__(self, shard: int, cfg: StageConfig) -> None:
        super().__init__(lane_key(shard), cfg.case_keys())
        self.shard = shard
        self.cfg = cfg
        self.lanes: dict[str, LaneMonitor] = {}

    def rebind(self, cfg: StageConfig) -> None:
        super().rebind(cfg)
        for lane, monitor in self.lanes.items():  # the gauge of a fresh process starts at 0
            if monitor.alert_open:
                metrics.LANE_ALERT_OPEN.labels(kpis.bucket("lane_monitor", lane)).inc()

    def apply(self, released, low: int, out: Emit) -> None:
        lcfg = self.cfg.lane
        lanes = self.lanes
        for t, _tie, (lane, order_id, promise, fact) in released:
            monitor = lanes.get(lane)
            if monitor is None:
                monitor = lanes[lane] = LaneMonitor(lane)
            # evaluations strictly before this fact's time first: the same alerts whatever the
            # batching of the input
            if monitor.next_eval and monitor.next_eval < t:
                self._advance(monitor, t, out)
            monitor.observe(t, order_id, promise, fact, lcfg)
        horizon = self.horizon(low)
        for lane in sorted(lanes):
            self._advance(lanes[lane], horizon, out)

    def _advance(self, monitor: LaneMonitor, until: int, out: Emit) -> None:
        shipped, delayed_before = monitor.shipments_total, monitor.delayed_total
        # lanes are built from free-text payload fields: bounded labels (top 256, then other);
        # the alert gauge counts open alerts, so "other" adds up its lanes (and shards)
        label = kpis.bucket("lane_monitor", monitor.lane)
        for tr in monitor.advance(until, self.cfg.lane):
            alert = _lane_alert(tr)
            metrics.LANE_ALERT_OPEN.labels(label).inc(1 if tr.opened else -1)
            out.append(
                ("out", (OUT_KEY, ("e", tr.window_end, f"a|{alert.alert_id}", ("alert", alert))))
            )
        if monitor.shipments_total != shipped:
            metrics.LANE_SHIPMENTS.labels(label).inc(monitor.shipments_total - shipped)
            metrics.LANE_DELAYED.labels(label).inc(monitor.delayed_total - delayed_before)


def _lane_alert(tr: LaneTransition) -> LaneAlert:
    courier, _, route = tr.lane.partition(":")
    origin, _, destination = route.partition(">")
    state = AlertState.OPEN if tr.opened else AlertState.CLOSED
    alert_id = hashlib.sha256(f"{tr.lane}|{state}|{tr.window_end}".encode()).hexdigest()[:24]
    return LaneAlert(
        alert_id=alert_id,
        lane=tr.lane,
        courier=courier,
        origin_region=origin,
        destination_region=destination,
        state=state,
        severity=Severity.CRITICAL if tr.critical else Severity.WARNING,
        delay_rate=tr.delay_rate,
        baseline_rate=tr.baseline_rate,
        volume=tr.volume,
        late=tr.late,
        threshold_rate=tr.threshold,
        confidence=tr.confidence,
        window_start=from_us(tr.window_start),
        window_end=from_us(tr.window_end),
    )


class OutputStage(_Stage):
    """Total order over every trigger and alert, so output files are byte-identical. Upstreams:
    dispatch (triggers, model events, dispositions), lanes (lane alerts) and cases (the return
    journey's status updates and alerts, which bypass scoring and policy)."""

    def __init__(self, cfg: StageConfig) -> None:
        super().__init__(OUT_KEY, cfg.cust_keys("disp") + cfg.lane_keys() + cfg.case_keys())

    def apply(self, released, low: int, out: Emit) -> None:
        for _t, _tie, (kind, payload) in released:
            out.append((kind, payload))
