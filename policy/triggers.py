"""Building the intervention trigger and its audit record from a decision (pure, no I/O).

>>> trigger_id("o-1", "reassurance", "ev-9") == trigger_id("o-1", "reassurance", "ev-9")
True
>>> len(trigger_id("o-1", "reassurance", "ev-9"))
32
"""

from __future__ import annotations

import hashlib
from typing import Any

from salvage.connectors.outputs import Scores, Trigger
from salvage.features.eventtime import HOUR_US, from_us
from salvage.policy.config import Policy
from salvage.policy.engine import Decision, holdout_unit


def trigger_id(order_id: str, action: str, source_id: str) -> str:
    """Deterministic: the same action for the same case update has the same id whatever the policy
    version, so a resume that adopts a new policy and replays the updates since its snapshot
    repeats ids (deduped downstream) instead of messaging the customer twice."""
    digest = hashlib.sha256(f"{order_id}|{action}|{source_id}".encode())
    return digest.hexdigest()[:32]


def decision_record(decision: Decision) -> dict[str, Any]:
    """The audit record of a decision (the case store's ``decision``), before guardrails. EV
    and cost are in the policy currency; an order in another currency adds ``fx``: its
    currency and the rate its value and margin were converted at (None: no rate, not priced)."""
    doc: dict[str, Any] = {
        "action": decision.action.value,
        "expected_value": decision.expected_value,
        "cost": decision.cost,
        "reason_codes": list(decision.reason_codes),
        "candidates": [list(c) for c in decision.candidates],
        "guardrails": list(decision.guardrails),
    }
    if decision.fx is not None:
        doc["fx"] = {"currency": decision.fx[0], "rate": decision.fx[1]}
    return doc


def is_forced(decision: Decision) -> bool:
    """A forced review (costly, ambiguous, likely abuse) is never held out or budgeted away: it is
    the guard against rewarding abuse, not an intervention to measure or ration."""
    return "review_routing" in decision.guardrails


def held_out(policy: Policy, decision: Decision, order_id: str) -> bool:
    """The deterministic holdout draw of this order for the decision's action."""
    share = policy.actions[decision.action].holdout_share
    return share > 0 and not is_forced(decision) and holdout_unit(order_id, policy.version) < share


def build_trigger(
    decision: Decision,
    *,
    order_id: str,
    customer_id: str,
    source_id: str,
    currency: str,
    recoverability: float,
    abuse: float,
    model_version: str,
    policy_version: str,
    holdout: bool,
    t: int,
) -> Trigger:
    """The trigger for ``decision`` on the case update ``source_id`` at event time ``t`` (µs)."""
    action = decision.action
    return Trigger(
        trigger_id=trigger_id(order_id, action.value, source_id),
        order_id=order_id,
        customer_id=customer_id,
        action=action,
        priority=decision.priority,
        reason_codes=list(decision.reason_codes),
        scores=Scores(recoverability=recoverability, abuse=abuse),
        expected_value=decision.expected_value,
        cost=decision.cost,
        currency=currency,
        policy_version=policy_version,
        model_version=model_version,
        holdout=holdout,
        decided_at=from_us(t),
        expires_at=from_us(t + decision.ttl_hours * HOUR_US),
        source_event_id=source_id,
    )
