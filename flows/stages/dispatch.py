"""The dispatch stage: policy, guardrails and triggers for one customer shard."""

from __future__ import annotations

from typing import Any

from salvage.connectors.outputs import (
    Action,
)
from salvage.features.eventtime import DAY_US, END, iso
from salvage.flows.messages import CaseView, Emit, Route
from salvage.flows.stages.base import (
    _DISPOSITIONS,
    _HOLDOUT,
    _SUPPRESSED,
    _TRIGGERS,
    OUT_KEY,
    RISK_SIGNALS,
    StageConfig,
    _Stage,
    disp_key,
)
from salvage.policy import guardrails
from salvage.policy.config import MAX_CONTACT_LOG
from salvage.policy.disposition import decide_disposition
from salvage.policy.engine import (
    CUSTOMER_FACING,
    Gate,
    RowGate,
    decide,
    gate_of,
    holdout_unit,
    in_policy_currency,
)
from salvage.policy.triggers import build_trigger, decision_record, held_out, is_forced, trigger_id
from salvage.sinks import leakage, metrics
from salvage.sinks.case_doc import case_json
from salvage.uplift import placed


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
        # assigned orders closed, for the settled grace period: order id -> (close time, its
        # refunded amount so far, retained so far; None: from a snapshot written before it was
        # kept, the close's outcome decides), for the outcome records' amendments (_amend)
        self.amendable: dict[str, tuple[int, float, bool | None]] = {}
        self.spent: dict[tuple[str, int], float] = {}  # (action, event-time day) -> spend
        self.last_sweep = 0
        # this call's latest update per order, for its case-store document (_flush_records);
        # empty between calls (not state)
        self._records: dict[str, tuple] = {}

    def apply(self, released, low: int, out: Emit) -> None:
        # the policy's compiled gate for this call (None: decide() on every update)
        gate = gate_of(self.cfg.policy) if self.cfg.decide_gate else None
        for t, _tie, (view, features, scored, events) in released:
            if events:
                for ev in events:
                    out_ev = {**ev, "at": iso(ev["t"]), "shard": self.cfg.model_shard_of(view)}
                    tie = f"m|{ev['model']}|{ev['change']}|{ev['labels']}|{out_ev['shard']}"
                    self.send(Route.OUTPUT, OUT_KEY, t, tie, ("model_event", out_ev))
            if "placed" in view.changes:  # uplift: customers' orders (repeat-order effects)
                self.send(
                    Route.OUTPUT, OUT_KEY, t, f"p|{view.order_id}", ("order", placed(view, t))
                )
            if scored is not None:  # None: a settled case's late fact (no decision)
                self._update(t, view, features, scored, out, gate)
            elif view.order_id in self.amendable:
                self._amend(t, view)
        if self._records:
            self._flush_records(out)
        if low < END and low - self.last_sweep > DAY_US:
            self.last_sweep = low
            stale = [c for c, ts in self.contacted.items() if ts and low - ts[-1] > 30 * DAY_US]
            for c in stale:
                del self.contacted[c]
            today = low // DAY_US
            for key in [k for k in self.spent if k[1] < today - 1]:
                del self.spent[key]
            # (the case stage hears no late fact of a case after its grace period)
            grace = self.cfg.settled_grace_us
            for order_id in [o for o, (c, *_) in self.amendable.items() if low - c > grace]:
                del self.amendable[order_id]

    @staticmethod
    def ignores(
        cfg: StageConfig,
        gate: Gate | RowGate | None,
        view: CaseView,
        features,
        rec: float,
        abuse: float,
    ) -> bool:
        """Would :meth:`apply` do nothing with this scored update of an open case (no output, no
        state touched)? True when it has no model events (the caller checks), is no placement,
        grade, risk signal or closing, no case-store document is made (``case_records`` off),
        the order is in the policy's currency (the gate reads its money as the policy's: dispatch
        converts another currency's first) and the compiled gate says no rule can hold, or the
        case already has its outcome. The
        model stage then does not send it (most updates: a carrier scan in transit); ``rec``,
        ``abuse``: its scores (``scored.scores``); ``gate``: ``gate_of(cfg.policy)`` (or for
        value tuples ``row_gate(cfg.policy, JOINED_FEATURES)``), None when
        ``cfg.decide_gate`` is off (then nothing is)."""
        changes = view.changes
        return (
            gate is not None
            and not cfg.case_records
            and RISK_SIGNALS.isdisjoint(changes)
            and "placed" not in changes
            and view.status != "closed"
            and not ("graded" in changes and view.grade)
            and view.currency == cfg.policy.currency
            and (view.outcome is not None or not gate(features, rec, abuse))
        )

    def _flush_records(self, out: Emit) -> None:
        """One case-store document per order updated in this call: its latest update's. The
        Redis sink keeps the highest version of each order in a batch
        (``sinks.redis_store.latest_per_order``), so the store ends each call holding what a
        document per update gave; the earlier updates' documents, never stored then either, are
        no longer built and serialised."""
        records, self._records = self._records, {}
        for order_id, (t, view, features, scored, decision, last, triggered) in records.items():
            scores = scored.scores
            record = {
                "order_id": order_id,
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
                "decision": decision,
                "last_decision": last,
                "triggered": triggered,
            }
            other = _refunded_other(view)
            if other:  # as the outcome record: money in other currencies than the order's
                record["currency"] = view.currency
                record["refunded_amount"] = round(view.refunded_amount, 2)
                record["refunded_other"] = other
            out.append((Route.CASE_RECORD, (order_id, t, case_json(record))))

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
        self.send(Route.OUTPUT, OUT_KEY, t, f"d|{doc['disposition_id']}", ("disposition", doc))

    def _update(
        self, t: int, view: CaseView, features, scored, out: Emit, gate: Gate | None
    ) -> None:
        """One scored update of an open case; ``gate``: the policy's compiled gate (None:
        ``decide`` on every update)."""
        changes = view.changes
        if "graded" in changes and view.grade:
            self._disposition(t, view)
        scores = scored.scores
        closed = view.status == "closed"
        if not RISK_SIGNALS.isdisjoint(changes):
            # the score when the case first showed risk: what "recoverable" means for leakage
            self.first_score.setdefault(view.order_id, scores.recoverability)
            if self.cfg.score_log:
                out.append(
                    (
                        Route.SCORE,
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
        cfg = self.cfg
        policy = cfg.policy
        resolved = closed or view.outcome is not None
        # gate: could_decide(policy, features, scores), inline, on the order's money in the
        # policy currency (an order in a currency without a rate: decide() on every update)
        currency = view.currency
        gated = features
        if gate is not None and currency != policy.currency:
            rate = policy.fx.get(currency)
            gated = None if rate is None else in_policy_currency(features, rate)
        if resolved or (
            gated is not None
            and gate is not None
            and not gate(gated, scores.recoverability, scores.abuse)
        ):
            decision = None  # what decide() returns here, without its merged dicts and EVs
        else:
            decision = decide(policy, features, scores, resolved=False, currency=currency)
        decision_doc: dict[str, Any] | None = None
        if decision is not None:
            action = decision.action
            decision_doc = decision_record(decision)
            if "abuse_block" in decision.guardrails:
                _SUPPRESSED("abuse_block").inc()
            if "no_fx_rate" in decision.guardrails:  # no automatic offer: a review instead
                _SUPPRESSED("no_fx_rate").inc()
            forced = is_forced(decision)
            suppressed = self._guardrail(view, action, decision.cost, t, forced)
            self._assign(t, view, features, action, forced, suppressed)
            decision_doc["suppressed_by"] = suppressed
            if suppressed:
                _SUPPRESSED(suppressed).inc()
            else:
                self.sent.setdefault(view.order_id, []).append(action.value)
                holdout = held_out(policy, decision, view.order_id)
                trig = build_trigger(
                    decision,
                    order_id=view.order_id,
                    customer_id=view.customer_id,
                    source_id=view.source_id,
                    currency=policy.currency,  # of its EV and cost
                    recoverability=scores.recoverability,
                    abuse=scores.abuse,
                    model_version=scores.model_version,
                    policy_version=policy.version,
                    holdout=holdout,
                    t=t,
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
                    if cfg.direct_triggers:
                        out.append((Route.TRIGGER, trig))
                    else:
                        self.send(
                            Route.OUTPUT, OUT_KEY, t, f"t|{trig.trigger_id}", ("trigger", trig)
                        )
        if decision_doc is not None and self.cfg.case_records:
            self.last_decision[view.order_id] = decision_doc
        if self.cfg.case_records:
            # the case-store document of the order's latest update in this call, made by
            # _flush_records at the end of the call (what it reads is fixed now: the triggered
            # list gains entries only from later updates of the same order, which replace this)
            records = self._records
            records.pop(view.order_id, None)  # re-inserted last: documents leave in that order
            records[view.order_id] = (
                t,
                view,
                features,
                scored,
                decision_doc,
                decision_doc or self.last_decision.get(view.order_id),
                self.sent.get(view.order_id, []),
            )
        if closed and view.order_id in self.assigned:
            self.assigned.discard(view.order_id)
            refunded, retained = self._outcome(t, view)
            if self.cfg.settled_grace_us > 0:  # (no grace period: no late money is heard)
                self.amendable[view.order_id] = (t, refunded, retained)
        if closed:
            # KPI fact: what happened to the case, and what we did about it (metrics only)
            out.append(
                (
                    Route.KPI,
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
        self.send(Route.OUTPUT, OUT_KEY, t, f"a|{view.order_id}", ("assignment", doc))

    def _outcome(self, t: int, view: CaseView) -> tuple[float, bool]:
        """The closing outcome of an assigned order (orders still open when the log ends have
        none: they count as retained, DESIGN §11), with the money refunded on it up to the
        close in the order's currency: its refunds and chargebacks, and the goodwill cash paid
        while it was open (as the KPIs' refunded value); money in other currencies apart
        (``refunded_other``). Returns the order-currency money and whether the order is retained
        (no refund, no chargeback: goodwill cash paid while it was open does not end it)."""
        goodwill = float((view.facts or {}).get("goodwill_refunded") or 0.0)
        refunded = round(view.refunded_amount + goodwill, 2)
        retained = view.outcome not in _LOST
        doc: dict[str, Any] = {
            "order_id": view.order_id,
            "outcome": view.outcome,
            "retained": retained,
            "refunded_amount": refunded,  # in the order's currency
            "closed_at": iso(t),
        }
        other = _refunded_other(view)
        if other:  # money in other currencies (a cross-border refund): apart, never summed
            doc["refunded_other"] = other
        self.send(Route.OUTPUT, OUT_KEY, t, f"o|{view.order_id}", ("outcome", doc))
        return refunded, retained

    def _amend(self, t: int, view: CaseView) -> None:
        """Money paid after an assigned order's case closed (a late fact of its settled case,
        in the grace period: a refund's second payment, a cancelled order's refund, a store
        credit paid out in cash, an exchange's price difference, another return's refund, a
        chargeback): an ``outcome_amended`` record after its outcome, with the payment, the
        basis the KPIs give it and the order's new refunded total (in the order's currency: a
        payment in another leaves it as it was, and the record names the payment's currency).
        Append-only: the outcome line stays as written, and ``outcome`` is the close's; its
        ``retained`` is the order's after this payment: false once money went back after the
        close (a chargeback, another return's refund, a store credit paid out in cash), except
        an exchange's price difference (``leakage.keeps_order``); once false it stays false."""
        facts = view.facts or {}
        amount = leakage.late_money(facts)
        if not amount:
            return
        closed_at, refunded, retained = self.amendable[view.order_id]
        if retained is None:  # (from a snapshot written before it was kept: the close's)
            retained = view.outcome not in _LOST
        retained = retained and leakage.keeps_order(facts, view.outcome)
        currency, ordered_in = facts.get("currency") or "", facts.get("order_currency") or ""
        if not (currency and ordered_in and currency != ordered_in):  # never summed across
            refunded = round(refunded + amount, 2)
        self.amendable[view.order_id] = (closed_at, refunded, retained)
        doc = {
            "record": "outcome_amended",
            "order_id": view.order_id,
            "outcome": view.outcome,
            "retained": retained,
            "refunded_amount": refunded,
            "closed_at": iso(closed_at),
            "amended_at": iso(t),
            "late": facts["late"],
            "amount": round(amount, 2),
            "currency": facts.get("currency") or "",
            "basis": facts.get("refund_basis") or "",
            "source_event_id": view.source_id,
        }
        tie = f"o|{view.order_id}|{view.source_id}"
        self.send(Route.OUTPUT, OUT_KEY, t, tie, ("outcome_amended", doc))

    def _guardrail(
        self, view: CaseView, action: Action, cost: float, t: int, forced: bool = False
    ) -> str:
        """The stateful guardrails (:func:`salvage.policy.guardrails.check`) on this shard's
        memory; returns the one that suppresses, or ''."""
        return guardrails.check(
            self.cfg.policy,
            action,
            cost,
            t,
            sent=self.sent.get(view.order_id, ()),
            contacts=self.contacted.get(view.customer_id, ()),
            spent_today=self.spent.get((action.value, t // DAY_US), 0.0),
            shards=self.cfg.cust_shards,
            forced=forced,
        )


_LOST = frozenset({"refund", "chargeback"})  # the outcomes that are not retained (DESIGN §11)


def _refunded_other(view: CaseView) -> dict[str, float]:
    """A closing view's money refunded or charged back in other currencies than the order's
    (``OrderCase.refunded_other``), by currency ({}: none, as on a single-currency log)."""
    facts = view.facts
    other = facts.get("refunded_other") if facts else None
    return {c: round(a, 2) for c, a in other.items()} if other else {}
