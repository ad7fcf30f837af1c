"""Business KPIs from closed cases, as Prometheus metrics (bounded labels only).

``observe`` receives fact dicts from ``CustomerStage``:

* ``kind="case"``, once per closed case: ``t`` (event time, µs), ``case``
  (:meth:`features.order_case.OrderCase.facts`), ``first_recoverability`` (the first score the case
  got), ``scores`` (at close), ``triggered`` (actions sent), ``holdout``, ``customer``
  (customer-context features at close);
* ``kind="order"``, once per order placed: ``t`` and ``customer`` (features *before* this order,
  incl. ``customer_days_since_return``, -1 when the customer never returned anything).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

CASES_RESOLVED = Counter(
    "salvage_cases_resolved_total",
    "Closed cases by outcome and SKU family",
    ["outcome", "sku_family"],
)


def observe(fact: dict[str, Any]) -> None:
    if fact.get("kind") != "case":
        return
    case = fact["case"] or {}
    CASES_RESOLVED.labels(case.get("outcome") or "unknown", case.get("sku_family", "unknown")).inc()
