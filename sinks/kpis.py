"""Business KPIs from closed cases, as Prometheus metrics (bounded labels only).

``observe`` is called once per closed case with a fact dict (see ``CustomerStage``): ``t`` (event
time, µs), ``case`` (:meth:`features.order_case.OrderCase.facts`), ``triggered`` (actions sent),
``holdout`` and ``customer`` (customer-context features at close).
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
    case = fact["case"] or {}
    CASES_RESOLVED.labels(case.get("outcome") or "unknown", case.get("sku_family", "unknown")).inc()
