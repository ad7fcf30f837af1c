"""The case stage: per-order state machines of one case shard (key ``case-NNNN``), with
event-time timers, duplicates, orphans and the settled grace period."""

from __future__ import annotations

import heapq
import time
import zlib
from array import array
from dataclasses import dataclass
from typing import Any

from salvage.connectors.events import STREAM_OF, Stream
from salvage.connectors.outputs import (
    DeadLetterKind,
    JourneyAlert,
    StatusUpdate,
)
from salvage.connectors.parse import TIE_DIGEST_MARK, RawRecord, dead_letter
from salvage.fastpickle import slot_maker
from salvage.features import journey
from salvage.features.anonymous import anonymous_customer
from salvage.features.eventtime import BEGIN, END, from_us, iso
from salvage.features.order_case import (
    CASE_FEATURES,
    MAX_OTHER_RETURNS,
    MONEY_EVENTS,
    NO_RETURN,
    SETTLEMENTS,
    OrderCase,
    Outcome,
    Status,
    own_time,
    shared,
)
from salvage.flows.items import Overdue
from salvage.flows.messages import CaseView, Emit, InferredContact, Route
from salvage.flows.stages.base import (
    _CLOSED,
    _EVENTS,
    _JOURNEY_ALERTS,
    _STATUS_UPDATES,
    INTENT_KEY,
    OUT_KEY,
    TOMBSTONE_US,
    StageConfig,
    _id_hash,
    _Stage,
    case_key,
    ctx_key,
    lane_key,
    shard_of,
)
from salvage.policy.engine import case_gate, values_in_policy_currency
from salvage.sinks import leakage, metrics

# the only change an update may have and still be kept back from the customer's context, the
# models and dispatch: a carrier scan that delivered nothing and signalled no delay (a shipment,
# and a return parcel's transit scan, have none); every other update goes on, and these too where
# some policy rule could hold (see CaseStage._emit_view)
QUIET_CHANGES = frozenset({"scan"})


def _case_gate_of(cfg: StageConfig) -> Any:
    """The case stage's test for updates to keep back (None: send every update)."""
    return case_gate(cfg.policy, CASE_FEATURES) if cfg.decision_points else None


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
        # (limit, seen): the closed cases whose retention ended before limit are forgotten once
        # the watermark has passed seen (see _expire_tombstones)
        self.tomb_sweep: tuple[int, int] = (BEGIN, BEGIN)
        # a closed case's event ids, as 64-bit hashes (8 B each, not the strings): a redelivered
        # event of a closed case is a duplicate, not a dead letter
        self.tomb_ids: dict[str, array] = {}
        # and their content digests (same positions): a conflicting copy is inconsistent
        self.tomb_digests: dict[str, bytes] = {}
        # the digests are of the events' content (False: raw-byte crc32s, from a snapshot taken
        # before content digests; flows/state.py forgets those on load)
        self.content_digests = True
        # events of orders not seen yet, waiting for their order_placed (order id -> items)
        self.orphans: dict[str, list[tuple[int, str, Any]]] = {}
        self.orphan_heap: list[tuple[int, str]] = []
        # settled cases in their grace period: order id -> compact record (see Settled)
        self.settled: dict[str, Settled] = {}
        # derived from the config (not state): the customer stage's shard keys, by shard, and
        # each lane's lane-monitor key (lanes are few)
        self._ctx_keys = [ctx_key(i) for i in range(cfg.cust_shards)]
        self._lane_dest: dict[str, str] = {}
        # this call's applied events by type, for the events counter (not state)
        self._kinds: dict[str, int] = {}
        self._configure(cfg)

    def _configure(self, cfg: StageConfig) -> None:
        """The parts of the stage that follow the configuration (at start and on a resume)."""
        self.journey = cfg.policy.journey.config()  # None: journey tracking off
        if self.journey is not None:  # series exist from the start (increase() works)
            for stage in self.journey.stages:
                _STATUS_UPDATES(stage.value)
            for kind in self.journey.alerts:
                _JOURNEY_ALERTS(kind.value)
        # updates nothing downstream would act on are not sent (see _emit_view)
        self._case_gate = _case_gate_of(cfg)
        self._policy_currency = cfg.policy.currency
        self._fx = cfg.policy.fx

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_case_gate", None)  # a compiled function: rebuilt from the policy (it pickles)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._case_gate = _case_gate_of(self.cfg)

    # -- helpers -----------------------------------------------------------------
    def _schedule(self, case: OrderCase) -> None:
        deadline = case.next_deadline(
            self.cfg.return_window_us, self.journey, self.cfg.promise_rechecks_us
        )
        if deadline and deadline != case.timer:  # unchanged: its entry is in the heap already
            case.timer = deadline
            heapq.heappush(self.timers, (deadline, case.order_id))

    def _fire_timers(self, until: int, out: Emit) -> None:
        """Fire every timer with deadline < until, in (deadline, order id) order."""
        timers = self.timers
        window = self.cfg.return_window_us
        rechecks = self.cfg.promise_rechecks_us
        while timers and timers[0][0] < until:
            deadline, order_id = heapq.heappop(timers)
            case = self.cases.get(order_id)
            if case is None:
                continue
            if case.timer == deadline:  # its entry is out of the heap now (see _schedule)
                case.timer = 0
            if case.next_deadline(window, self.journey, rechecks) != deadline:
                continue  # stale timer
            facts = None
            if case.core_deadline(window, rechecks) == deadline:
                changes = case.on_time(deadline, window, rechecks)
                if changes:
                    facts = self._emit_view(case, deadline, f"~timer:{order_id}", changes, out)
            if self.journey is not None and journey.deadline(case, self.journey) == deadline:
                # journey alerts go straight to the output: no case view, so no new decision
                for alert in journey.on_time(case, deadline, self.journey):
                    self._journey_alert(case, alert, f"~timer:{order_id}")
            self._after_update(case, deadline, None, facts)

    def _journey(self, case: OrderCase, ev, t: int) -> None:
        """Status updates and breakage alerts caused by a returns event (after case.apply)."""
        if ev.event_type == "return_graded" and case.received_at and t >= case.received_at:
            metrics.GRADING_DELAY.observe((t - case.received_at) / 1e6)
        if self.journey is None or ev.event_type not in journey.STAGE_OF_EVENT:
            return
        # (from the fields: getattr of a field the model lacks goes through pydantic's
        # __getattr__, ~10 µs for the AttributeError)
        amount = ev.__dict__.get("amount")
        # the money paid, in its own currency (a refund may be in another one than the order's)
        currency = case.currency if amount is None else ev.currency
        statuses, alerts = journey.on_event(case, ev.event_type, t, amount, self.journey)
        for alert in alerts:
            self._journey_alert(case, alert, ev.event_id)
        if statuses:  # when it happened, as the warehouse or the payment system says
            at = own_time(ev, t)
        for notice in statuses:
            update = StatusUpdate(
                update_id=journey.journey_id(case.order_id, case.return_id, notice.stage.value),
                order_id=case.order_id,
                customer_id=case.customer_id,
                return_id=case.return_id,
                stage=notice.stage,
                occurred_at=from_us(at),
                preferred_resolution=case.preferred_resolution,
                expected_refund_date=notice.expected_refund_date,
                amount=notice.amount,
                currency=currency,
                policy_version=self.cfg.policy.version,
                source_event_id=ev.event_id,
            )
            _STATUS_UPDATES(notice.stage.value).inc()
            self.send(Route.OUTPUT, OUT_KEY, t, f"s|{update.update_id}", ("status_update", update))

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
        self.send(Route.OUTPUT, OUT_KEY, notice.t, f"j|{alert.alert_id}", ("journey_alert", alert))

    def _after_update(
        self, case: OrderCase, t: int, ev: Any = None, facts: dict | None = None
    ) -> None:
        """``ev``: the event applied (None: a timer); ``facts``: the closing view's, if it
        closed the case (built once per close)."""
        if case.status is Status.CLOSED:
            del self.cases[case.order_id]
            self.tombstones[case.order_id] = t
            self.tomb_ids[case.order_id] = array("Q", map(_id_hash, case.seen))
            self.tomb_digests[case.order_id] = _digests(case)
            grace = self.cfg.settled_grace_us
            if grace > 0:
                self.settled[case.order_id] = Settled.of(case, ev, facts)
            heapq.heappush(self.tomb_heap, (t + max(TOMBSTONE_US, grace), case.order_id))
            _CLOSED(case.outcome.value if case.outcome else "unknown").inc()
        else:
            self._schedule(case)

    def _lane_fact(self, case: OrderCase, ev, t: int, changes: list[str]) -> None:
        """A shipment cohort fact for the lane monitor: shipped (or first scanned) with a
        promise, a delay signal, or delivered (the monitor judges on time / late itself).

        A "shipped" fact is sent once per lane and promise (``OrderCase.lane_noted``): the
        monitor ignores a repeat, whether it still holds the shipment or has judged and dropped
        it (``LaneMonitor.observe``), so most scans send nothing."""
        # (called for carrier scans and shipments with a lane and a promise; only a scan's
        # changes hold "delivered" or "delay_signal")
        if "delivered" in changes:
            fact = "delivered"
        elif "delay_signal" in changes:
            fact = "late"
        elif case.lane_noted:
            return  # a repeat: the monitor holds this shipment, or judged and dropped it
        else:
            fact = "shipped"
        case.lane_noted = True
        dest = self._lane_dest.get(case.lane)
        if dest is None:
            dest = self._lane_dest[case.lane] = lane_key(shard_of(case.lane, self.cfg.lane_shards))
        # a delivered fact carries the delivery's own time (a scan uploaded late is applied at
        # its partition's watermark: README "Late scans"); the fact is ordered at ``t``
        at = case.delivered_at if fact == "delivered" else 0
        self.send(
            Route.LANES,
            dest,
            t,
            ev.event_id,
            (case.lane, case.order_id, case.promised_at, fact, at),
        )

    def _expire_tombstones(self, horizon: int) -> None:
        """Forget the closed cases whose retention (the longer of :data:`TOMBSTONE_US` and the
        settled grace, from the close) is over, in sweeps: a sweep at ``horizon`` forgets those
        whose retention ended before the previous sweep's horizon, and only once ``horizon`` is
        past the latest event time any upstream had seen at the previous sweep (the next sweep
        is due then). So a closed case is not forgotten while an event of it that was already
        read waits in the reorder buffer: a partition's last event stays there (the watermark
        is its time minus the tolerance, and checked clocks bring the other partitions there)
        until every upstream is idle. Forgotten first, it was taken for an event of an order
        not seen yet and parked for an order_placed that had come long before: in a quiet
        ``--follow`` stream for good (the orphan wait is event time on every input), where a
        file applies it while the case is still remembered (``unknown_order``, case closed)."""
        limit, seen = self.tomb_sweep
        if horizon <= seen:
            return
        heap = self.tomb_heap
        while heap and heap[0][0] < limit:
            _, order_id = heapq.heappop(heap)
            self.tombstones.pop(order_id, None)
            self.tomb_ids.pop(order_id, None)
            self.tomb_digests.pop(order_id, None)
            self.settled.pop(order_id, None)
        self.tomb_sweep = (horizon, self.seen_t)

    def _emit_view(
        self,
        case: OrderCase,
        t: int,
        source_id: str,
        changes,
        out: Emit,
        grade: str | None = None,
        goodwill: tuple[str, float] | None = None,
    ) -> dict | None:
        """The case's update to its customer's context shard, at a decision point (README
        "Decision points": an open case's update with only quiet changes, on which the case gate
        says no rule could hold, is kept back: nothing is sent); returns the view's facts.
        ``goodwill``: the goodwill paid by this update (event type, amount), which the view's
        facts carry for the KPIs and the customer's history (an open case's view has no facts
        otherwise)."""
        status = case.status
        values = case.values(t)
        if status is Status.CLOSED:
            facts = case.facts()
        elif goodwill is not None:
            facts = {"goodwill": goodwill[1], "kind": _GOODWILL_KIND[goodwill[0]]}
        else:
            facts = None
            gate = self._case_gate
            if gate is not None and QUIET_CHANGES.issuperset(changes):
                # the gate reads money in the policy currency: another currency's is converted
                # (an order in a currency without a rate goes on: dispatch decides on it)
                currency = case.currency
                rate = 1.0 if currency == self._policy_currency else self._fx.get(currency)
                if rate is not None and (
                    case.outcome is not None
                    or not gate(
                        values
                        if rate == 1.0
                        else values_in_policy_currency(values, CASE_FEATURES, rate)
                    )
                ):
                    return None
        outcome = case.outcome
        customer_id = case.customer_id
        ret = case.ret or NO_RETURN  # (case.refunded_amount ... without their properties)
        view = _case_view(
            case.order_id,
            customer_id,
            t,
            source_id,
            tuple(changes),
            values,
            status._value_,
            outcome._value_ if outcome else None,
            case.lane,
            case.campaign,
            case.sku_family,
            case.currency,
            case.order_value,
            ret.refunded_amount,
            bool(ret.return_requested_at),
            ret.abuse_flags,
            facts,
            ret.grade if grade is None else grade,
            ret.return_value,
            ret.received_at,
        )
        # ctx_key(shard_of(customer_id, cust_shards))
        ctx_keys = self._ctx_keys
        dest = ctx_keys[zlib.crc32(customer_id.encode()) % len(ctx_keys)]
        self._box(Route.CONTEXT, dest).append((t, f"{source_id}|{case.order_id}", view))
        return facts

    def _settled_fact(self, ev, t: int, tie: str, inferred: str | None = None) -> bool:
        """A late fact for a settled case in its grace period (DESIGN §11: "a case settles, then
        listens"): a grade, support contact, chargeback or review verdict updates the customer's
        history, the abuse label and the KPIs (a ``settled`` case view to the customer stage).
        False: not such a fact, or the grace period is over (the caller dead-letters it)."""
        rec = self.settled.get(ev.order_id)
        kind = ev.event_type
        if rec is None:
            return False
        # an event of another return of the order than the one the case settled with (a second
        # parcel, a return after the window): see Settled.returns
        other = kind in _RETURNS_EVENTS and kind not in SETTLED_FACTS and rec.hears(ev)
        topup = kind == "refund_issued" and not other and rec.tops_up(ev)
        # a cancelled order's parcel still on its way (intercepted, sent back), or an exchanged
        # order's replacement parcel (shipped under the order's id): counted only
        parcel = kind in _PARCEL_EVENTS and rec.outcome in _PARCEL_AFTER
        if not other and not topup and not parcel and kind not in SETTLED_FACTS:
            return False
        if t - rec.closed_at > self.cfg.settled_grace_us:
            return False
        ids = self.tomb_ids.get(ev.order_id)
        if ids is not None:  # a redelivery of this late fact is a duplicate too (or, with
            # another payload, inconsistent: its digest is remembered beside its id)
            ids.append(_id_hash(ev.event_id))
            digests = self.tomb_digests.get(ev.order_id, b"")
            self.tomb_digests[ev.order_id] = _with_digest(digests, len(ids), _tie_digest(tie))
        if parcel:
            metrics.SETTLED_FACTS.labels(STREAM_OF[kind].value).inc()
            return True
        changes: list[str] = []
        features: dict[str, float] = {}
        returned: dict[str, str] = {}
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
            rec.support = shared(intent)
        elif kind == "chargeback_filed":
            amount = float(ev.amount)
            changes.append("chargeback")
        elif topup:  # more money for what the case settled with, not another refund
            amount = float(ev.amount)
            changes.append("topup_refund")
            returned = {"basis": rec.basis}
        elif other:
            entry = rec.other_return(ev)  # (id, reason, preferred resolution) if known
            if kind == "return_requested":
                if entry is None:  # (a repeated request changes nothing)
                    reason = ev.reason.value
                    features = {"reason_not_received": float(reason == "not_received")}
                    changes.append("return_requested")
            elif kind == "refund_issued":
                amount = float(ev.amount)
                # a second payment of a refund heard already is money, not another refund
                changes.append("late_refund" if entry is None or entry[3] else "topup_refund")
                if entry is not None:  # its reason decides the leakage basis (sinks/leakage.py)
                    returned = {"return_reason": entry[1], "preferred_resolution": entry[2]}
            elif kind in SETTLEMENTS:  # an exchange, a store credit
                changes.append("late_retained")
            # (a label, the parcel's progress, a cancellation: counted only)
            rec.heard(ev, entry)
        else:  # review_resolved
            if not rec.verdict:
                rec.verdict = ev.verdict.value
                rec.reviewed_at = t
            rec.flagged = rec.flagged or ev.verdict.value == "abuse_confirmed"
            changes.append("reviewed")
        metrics.SETTLED_FACTS.labels(STREAM_OF[kind].value).inc()
        if not changes:
            return True  # e.g. a clean re-grade: nothing new for history or labels
        money = kind in _PAID_OUT
        # money in another currency than the order's: counted in its own (the KPIs, by the
        # fact's currency), never summed into the customer's refunded value (a record from
        # before Settled.currency: as then)
        history = amount if not money or rec.currency in ("", ev.currency) else 0.0
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
            refunded_amount=history,
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
                "currency": ev.currency if money else "",
                "order_currency": rec.currency,  # "": a record from before Settled.currency
                # the KPI dimensions, as the case's ("": a record from before them: "none")
                "campaign": rec.campaign,
                "sku_family": rec.sku_family,
                "lane": rec.lane,
                "last_contact_intent": rec.support,
                "flagged": flagged,
                **returned,
            },
        )
        dest = ctx_key(shard_of(rec.customer_id, self.cfg.cust_shards))
        self.send(Route.CONTEXT, dest, t, f"{ev.event_id}|{ev.order_id}", view)
        return True

    def _dead(self, raw_event, kind: DeadLetterKind, message: str, out: Emit) -> None:
        raw = RawRecord(f"stage:{self.name}", self.shard, -1, raw_event.model_dump_json().encode())
        letter = dead_letter(raw, kind, message, raw_event.event_id, raw_event.order_id)
        metrics.DEAD_LETTERS.labels(kind.value).inc()
        out.append((Route.DEAD_LETTER, letter))

    def _count_events(self) -> None:
        """The events applied in this call, into the events counter (one inc per type)."""
        for kind, n in self._kinds.items():
            counter = _EVENTS_OF.get(kind)
            if counter is None:
                counter = _EVENTS_OF[kind] = _EVENTS(STREAM_OF[kind].value)
            counter.inc(n)
        self._kinds = {}

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
        cases = self.cases
        timers = self.timers
        while pending:
            t, tie, item = pending.pop()
            inferred = None
            ev = item
            if isinstance(item, InferredContact):  # through the intent stage
                ev, inferred = item.event, item.intent
            if timers and timers[0][0] < t:
                self._fire_timers(t, out)
            if type(ev) is Overdue:
                if not self._duplicate(ev.event, tie, out):
                    metrics.DEAD_LETTERS.labels(ev.letter.kind.value).inc()
                    out.append((Route.DEAD_LETTER, ev.letter))
                continue
            order_id = ev.order_id
            case = cases.get(order_id)
            if case is not None:
                # an open case remembers its event ids: only one of them can be a duplicate
                if ev.event_id in case.seen and self._duplicate(ev, tie, out):
                    continue
                if ev.event_type == "order_placed":
                    self._dead(
                        ev, DeadLetterKind.INCONSISTENT, "second order_placed for order", out
                    )
                    continue
            else:
                if self._duplicate(ev, tie, out):
                    continue
                if order_id in self.tombstones:
                    if self._settled_fact(ev, t, tie, inferred):
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
                case = cases[order_id] = OrderCase(order_id)
                metrics.CASES_OPENED.inc()
                adopted = self.orphans.pop(order_id, None)
                if adopted:  # applied right after their order, at its time, in their order
                    pending.extend((t, a_tie, a_ev) for _t, a_tie, a_ev in reversed(adopted))
            self._apply_event(case, t, tie, ev, inferred, out)
        if self._kinds:
            self._count_events()
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
        cfg = self.cfg
        kind = ev.event_type
        if kind in MONEY_EVENTS and ev.currency != case.currency:
            refusal = case.money_refusal(ev)
            if refusal:  # what it is hinges on its amount, in a currency it cannot be compared in
                self._dead(ev, DeadLetterKind.CURRENCY_MISMATCH, refusal, out)
                return
        # an event of another return than the one the case follows has no journey of its own
        other = kind in _RETURNS_EVENTS and case.is_other_return(ev)
        changes = case.apply(ev, t, cfg.return_window_us, inferred)
        if kind == "order_placed":  # a placeholder customer id: the order is its own customer
            case.customer_id = anonymous_customer(
                case.customer_id, case.order_id, cfg.anonymous_customers
            )
        _remember_digest(case, _tie_digest(tie))
        kinds = self._kinds  # counted per call (_count_events)
        kinds[kind] = kinds.get(kind, 0) + 1
        # (another return's grade: its own grade decides its disposition)
        grade = ev.grade.value if other and kind == "return_graded" else None
        if changes and changes[0] == "goodwill":  # money, not a return's settlement: no journey
            paid = (kind, float(ev.amount))
            facts = self._emit_view(case, t, ev.event_id, changes, out, goodwill=paid)
        else:
            facts = self._emit_view(case, t, ev.event_id, changes, out, grade)
            if kind in _RETURNS_EVENTS and not other:
                self._journey(case, ev, t)
        if (kind == "carrier_scan" or kind == "order_shipped") and (
            case.lane != "unknown" and case.promised_at
        ):
            self._lane_fact(case, ev, t, changes)
        self._after_update(case, t, ev, facts)


_RETURNS_EVENTS = frozenset(k for k, s in STREAM_OF.items() if s is Stream.RETURNS)
_EVENTS_OF: dict[str, Any] = {}  # event type -> its events counter (by stream)


MAX_ORPHANS_PER_ORDER = 256


def _event_of(item):
    """The event inside an item (the intent stage wraps support contacts)."""
    return item.event if isinstance(item, InferredContact) else item


MAX_ORPHAN_ORDERS = 50_000  # per case shard: orders with events waiting for their order_placed


def _tie_digest(tie: str) -> int:
    """The content digest a source put at the end of an event's tiebreak (``id|v<crc32 hex>``,
    see :func:`salvage.connectors.parse.event_tie`); 0 (unknown) for a tie from before content
    digests (``id|<crc32 hex>`` of the raw bytes: an event in flight in a restored snapshot)."""
    digest = tie.rpartition("|")[2]
    if digest[:1] != TIE_DIGEST_MARK:
        return 0
    try:
        return int(digest[1:], 16) or 1
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
    case.digests = _with_digest(_digests(case), len(case.seen), digest)


def _with_digest(digests: bytes, n_ids: int, digest: int) -> bytes:
    """``digests`` with ``digest`` added for the newest of ``n_ids`` remembered ids, kept
    parallel to them: the oldest dropped, or unknown ones (0) put first for ids remembered
    without a digest."""
    n = 4 * n_ids
    digests += digest.to_bytes(4, "little")
    if len(digests) > n:
        digests = digests[-n:]
    elif len(digests) < n:
        digests = bytes(n - len(digests)) + digests
    return digests


# a CaseView constructor that sets the slots directly (the view is made on every case update;
# a frozen dataclass's __init__ costs about twice as much); the same object (a test checks it)
_case_view = slot_maker(CaseView)


_PARCEL_EVENTS = frozenset({"carrier_scan", "order_shipped"})
_PARCEL_AFTER = frozenset({"cancelled", "exchange"})  # outcomes a parcel may still follow
_PAID_OUT = frozenset({"refund_issued", "chargeback_filed"})  # money in the refunded value
SETTLED_FACTS = frozenset(
    {"return_graded", "support_contact", "chargeback_filed", "review_resolved"}
)


# Settled.returns with other returns: (the settled return's id, or None; settlements to come;
# the other returns known, each (id, reason, preferred resolution, still open))
ReturnsHeard = tuple[str | None, int, tuple[tuple[str, str, str, bool], ...]]


@dataclass(slots=True)
class Settled:
    """What a settled case keeps for its grace period: ~150 B with its dict entry (the id strings
    are shared with the tombstone and the customer context, the label strings with the cases:
    interned), next to the event-id hashes."""

    customer_id: str
    closed_at: int
    outcome: str
    flagged: bool  # a grade with abuse flags was already counted in the customer's history
    verdict: str = ""
    reviewed_at: int = 0
    # Which returns of the order it still hears (events of another return than the one it
    # settled with are late facts, see CaseStage._settled_fact), only for a delivered order that
    # closed kept, returned or settled (not cancelled, undelivered, expired or charged back):
    # - None: none (such a close, or a record from before this field: as then, dead letters);
    # - the id of the return it settled with ("": none), when no other one was open;
    # - (that id, or None when the settling refund named no return; how many settlements of
    #   other returns are still to come; the other returns known: (id, reason, preferred
    #   resolution), ...), when there were other returns open, or some were heard since.
    returns: str | ReturnsHeard | None = None
    # A case that closed with a refund, an exchange, a store credit or a cancellation: the leakage
    # basis of money refunded on it later without the customer's history (sinks/leakage.py), for
    # a later refund of the same return in the grace period (a second payment of the refund, the
    # price difference of an exchange, a store credit paid out in cash, a cancelled order's
    # refund). "": none (kept, expired, charged back...; or a record from before this field: as
    # then, such a refund is a dead letter)
    basis: str = ""
    # the order's currency: a later payment in another one is counted in its own, never summed
    # into the customer's refunded value ("": a record from before this field, as then)
    currency: str = ""
    # the case's KPI dimensions (the case's shared strings: 8 B each here): money paid later is
    # counted under them, as money paid before the close ("": a record from before these fields,
    # counted under "none" as then)
    campaign: str = ""
    sku_family: str = ""
    lane: str = ""
    # the intent of the last support contact, the case's or one heard since: the KPIs'
    # support_reason of money paid later, as of money paid before the close
    support: str = ""

    @classmethod
    def of(cls, case: OrderCase, ev: Any = None, facts: dict | None = None) -> Settled:
        """The record of ``case``, closed by the event ``ev`` (None: by a timer); ``facts``:
        its :meth:`~OrderCase.facts` at the close, if already built."""
        return cls(
            case.customer_id,
            case.closed_at,
            case.outcome.value if case.outcome else "",
            bool(case.abuse_flags),
            case.review_verdict,
            case.reviewed_at,
            cls._returns_of(case, ev),
            _later_refund_basis(case, facts),
            case.currency,
            case.campaign,
            case.sku_family,
            case.lane,
            shared(case.contacts[-1][1]) if case.contacts else "",
        )

    @staticmethod
    def _returns_of(case: OrderCase, ev: Any) -> str | ReturnsHeard | None:
        if not case.delivered_at or case.outcome not in _HEARS_RETURNS:
            return None
        settling = ev is not None and ev.event_type in SETTLEMENTS
        ret = case.ret
        if ret is None or not ret.other_returns:
            # (a refund of a return never requested settles with that return's id)
            return case.return_id or (settling and ev.return_id) or ""
        others = tuple((o[0], o[2], o[3], True) for o in ret.other_returns)
        if settling and ev.return_id is None:
            # which return the refund settled is not known: any of them may come again
            own = (ret.return_id, ret.return_reason, ret.preferred_resolution, True)
            return (None, len(others), (own, *others))
        return (ret.return_id, len(others), others)

    def tops_up(self, ev: Any) -> bool:
        """Is ``ev`` (a refund, not of another return: see :meth:`hears`) more money for what the
        case settled with (see ``basis``): a refund naming that return, or none while no other
        return's settlement is to come?"""
        if not self.basis:
            return False
        heard = self._heard()
        if heard is None:  # (an undelivered order: no other returns are heard)
            return True
        rid = getattr(ev, "return_id", None)
        settled, remaining, _ = heard
        return rid == settled if rid is not None else remaining == 0

    def _heard(self) -> ReturnsHeard | None:
        """``returns`` as (settled return id, settlements to come, other returns known)."""
        info = self.returns
        return (info, 0, ()) if isinstance(info, str) else info

    def hears(self, ev: Any) -> bool:
        """Is ``ev`` (a returns event) one of another return than the one the case settled with?
        (A settlement naming no return is, while other returns' settlements are to come.)"""
        heard = self._heard()
        if heard is None:
            return False
        settled, remaining, _ = heard
        rid = getattr(ev, "return_id", None)
        if rid is None:
            return ev.event_type in SETTLEMENTS and remaining > 0
        return rid != settled

    def other_return(self, ev: Any) -> tuple[str, str, str, bool] | None:
        """The known other return ``ev`` is of: (id, reason, preferred resolution, still open),
        or None. A settlement naming no return: the first one still open."""
        heard = self._heard()
        if heard is None:
            return None
        rid = getattr(ev, "return_id", None)
        if rid is None:
            return next((o for o in heard[2] if o[3]), None)
        return next((o for o in heard[2] if o[0] == rid), None)

    def heard(self, ev: Any, entry: tuple[str, str, str, bool] | None) -> None:
        """Keep track of another return's request (its reason), settlement or cancellation (its
        reason is kept: a second refund of it still has its basis); ``entry``: its
        :meth:`other_return`."""
        heard = self._heard()
        if heard is None:
            return
        settled, remaining, known = heard
        kind = ev.event_type
        if kind == "return_requested":
            if entry is None and len(known) < MAX_OTHER_RETURNS:
                new = (ev.return_id, ev.reason.value, ev.preferred_resolution.value, True)
                self.returns = (settled, remaining + 1, (*known, new))
        elif entry is not None and entry[3] and kind in _ENDINGS:
            done = tuple(o if o is not entry else (*o[:3], False) for o in known)
            self.returns = (settled, max(remaining - 1, 0), done)

    @staticmethod
    def decode_returns(v: Any) -> str | ReturnsHeard | None:
        """``returns`` as the recovery codec reads it back (lists to tuples)."""
        if v is None or isinstance(v, str):
            return v
        settled, remaining, known = v
        entries = tuple((o[0], o[1], o[2], len(o) < 4 or bool(o[3])) for o in known)
        return (settled, remaining, entries)


_GOODWILL_KIND = {"refund_issued": "refund", "store_credit_issued": "store_credit"}


def _later_refund_basis(case: OrderCase, facts: dict | None = None) -> str:
    """:attr:`Settled.basis` of a case closing now (``facts``: its facts, if already built)."""
    outcome = case.outcome
    if outcome is Outcome.EXCHANGE:
        return "exchange_difference"  # the customer kept the exchanged goods: never leakage
    if outcome in (Outcome.REFUND, Outcome.STORE_CREDIT, Outcome.CANCELLED):
        # (a cancelled order was never delivered)
        return leakage.basis(facts if facts is not None else case.facts())
    return ""


_HEARS_RETURNS = frozenset(
    {Outcome.KEPT, Outcome.RETURN_CANCELLED, Outcome.REFUND, Outcome.EXCHANGE, Outcome.STORE_CREDIT}
)
_ENDINGS = SETTLEMENTS | {"return_cancelled"}


def case_upstreams(cfg: StageConfig) -> list[str]:
    """What a case shard waits for: every input partition, and the intent stage if any."""
    return [*cfg.sources, INTENT_KEY] if cfg.intent_stage else list(cfg.sources)
