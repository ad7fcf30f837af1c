"""The context stage: customer history for one customer shard."""

from __future__ import annotations

from dataclasses import replace
from zlib import crc32

from salvage.features.customer import CustomerContext
from salvage.features.eventtime import DAY_US, END
from salvage.flows.messages import Emit, Route
from salvage.flows.stages.base import (
    CUSTOMER_IDLE_US,
    StageConfig,
    _Stage,
    ctx_key,
)
from salvage.sinks import leakage


class ContextStage(_Stage):
    """Customer context for one customer shard; forwards each case update, with the joined
    case + customer values (``JOINED_FEATURES`` order; a dict for a view whose features are one),
    to the model shard of its customer."""

    def __init__(self, shard: int, cfg: StageConfig) -> None:
        super().__init__(ctx_key(shard), cfg.case_keys())
        self.shard = shard
        self.cfg = cfg
        self.customers: dict[str, CustomerContext] = {}
        self.last_sweep = 0

    def apply(self, released, low: int, out: Emit) -> None:
        customers = self.customers
        outbox = self._outbox  # self.send, inline
        n_models = self.cfg.model_shards
        model_keys = [(Route.MODELS, k) for k in self.cfg.model_keys()]
        for t, tie, view in released:
            cid = view.customer_id
            ctx = customers.get(cid)
            if ctx is None:
                ctx = customers[cid] = CustomerContext(cid)
            changes = view.changes
            if "placed" in changes:
                # KPI fact: an order, and how long ago this customer last returned something
                # (the one customer feature the repeat-rate KPI reads: sinks/kpis.py)
                since = {"customer_days_since_return": ctx.days_since_return(t)}
                out.append((Route.KPI, {"kind": "order", "t": t, "customer": since}))
            if "goodwill" in changes:  # KPI fact: goodwill paid now (the case stays open)
                paid = view.facts or {}
                case = {
                    "currency": view.currency,
                    "campaign": view.campaign,
                    "sku_family": view.sku_family,
                    "lane": view.lane,
                    "amount": paid.get("goodwill", 0.0),
                    "goodwill_kind": paid.get("kind", ""),
                }
                out.append((Route.KPI, {"kind": "goodwill", "t": t, "case": case}))
            ctx.observe(t, changes, view)
            # model_key(shard_of(customer_id, model_shards))
            key = model_keys[0 if n_models == 1 else crc32(cid.encode()) % n_models]
            box = outbox.get(key)
            if box is None:
                box = outbox[key] = []
            if view.status == "settled":
                # a late fact of a settled case: history (above), KPIs and labels; never scored
                # (with the customer's features: a late refund's leakage basis reads them)
                facts = view.facts
                customer = ctx.features(t)
                fact = {"kind": "settled", "t": t, "case": facts, "customer": customer}
                out.append((Route.KPI, fact))
                if facts and leakage.late_money(facts):
                    # money paid after the close: the basis the KPIs give it goes on, for the
                    # outcome record's amendment (DispatchStage._amend)
                    basis = leakage.settled_basis(facts, customer)
                    view = replace(view, facts={**facts, "refund_basis": basis})
                box.append((t, tie, (view, None)))
                continue
            f = view.features  # the case's values (a view made elsewhere may have a dict)
            box.append(
                (t, tie, (view, f + ctx.values(t) if type(f) is tuple else ctx.merged(f, t)))
            )
        if low < END and low - self.last_sweep > DAY_US:
            self.last_sweep = low
            idle = [c for c, x in self.customers.items() if low - x.last_seen > CUSTOMER_IDLE_US]
            for c in idle:
                del self.customers[c]
