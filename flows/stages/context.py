"""The context stage: customer history for one customer shard."""

from __future__ import annotations

from salvage.features.customer import CustomerContext
from salvage.features.eventtime import DAY_US, END
from salvage.flows.messages import Emit, Route
from salvage.flows.stages.base import (
    CUSTOMER_IDLE_US,
    StageConfig,
    _Stage,
    ctx_key,
    model_key,
    shard_of,
)


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
                out.append((Route.KPI, {"kind": "order", "t": t, "customer": ctx.features(t)}))
            ctx.observe(t, view.changes, view)
            dest = model_key(shard_of(view.customer_id, self.cfg.model_shards))
            if view.status == "settled":
                # a late fact of a settled case: history (above), KPIs and labels; never scored
                out.append((Route.KPI, {"kind": "settled", "t": t, "case": view.facts}))
                self.send(Route.MODELS, dest, t, tie, (view, None))
                continue
            features = view.features | ctx.features(t)
            self.send(Route.MODELS, dest, t, tie, (view, features))
        if low < END and low - self.last_sweep > DAY_US:
            self.last_sweep = low
            idle = [c for c, x in self.customers.items() if low - x.last_seen > CUSTOMER_IDLE_US]
            for c in idle:
                del self.customers[c]
