"""Baseline intervention policy: eligibility rules and a simple expected-value ranking.

For each case update every eligible action gets an expected value
``lift x P(lost) x value at risk - cost``; the best positive one wins. Abuse risk and value gate
automatic offers: above the abuse threshold no automatic offer is ever made (human review instead).
The full, file-driven policy (issue 4) replaces the constants below; the contract stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.outputs import Action, Priority

POLICY_VERSION = "baseline-v1"

ABUSE_BLOCK = 0.5  # never auto-offer above this abuse score
HIGH_VALUE = 400.0  # human review for ambiguous cases above this order value
AMBIGUOUS = (0.35, 0.65)

# action -> (expected lift on P(retained) among lost-bound cases, cost per trigger, ttl hours)
CATALOGUE: dict[Action, tuple[float, float, int]] = {
    Action.PROACTIVE_REASSURANCE: (0.08, 0.05, 24),
    Action.DELAY_INTERVENTION: (0.20, 3.00, 48),
    Action.EXCHANGE_FIRST_OFFER: (0.30, 4.00, 72),
    Action.PRODUCT_GUIDANCE: (0.12, 0.10, 48),
    Action.HUMAN_REVIEW: (0.0, 6.00, 168),
}
CUSTOMER_FACING = frozenset(a for a in Action if a is not Action.HUMAN_REVIEW)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    expected_value: float
    priority: Priority
    reason_codes: tuple[str, ...]
    ttl_hours: int
    candidates: tuple[tuple[str, float], ...]


def _reasons(f: dict[str, float], scores) -> list[str]:
    r: list[str] = []
    slip = f["slippage_hours"]
    if slip >= 48:
        r.append("slippage_48h")
    elif slip >= 24:
        r.append("slippage_24h")
    elif slip >= 6:
        r.append("slippage_6h")
    if f["delayed_scans"]:
        r.append("carrier_delay_scan")
    if f["exception_count"]:
        r.append("carrier_exception")
    if f["lost"]:
        r.append("parcel_lost")
    if f["wismo_7d"]:
        r.append("wismo_contact")
    if f["refund_intent_7d"]:
        r.append("refund_intent")
    if f["fit_intent_7d"]:
        r.append("fit_question")
    if f["return_requested"]:
        r.append("return_open")
        if f["reason_fit"]:
            r.append("reason_fit")
        if f["reason_damaged"]:
            r.append("reason_damaged")
        if f["reason_late"]:
            r.append("reason_late")
        if f["reason_not_received"]:
            r.append("reason_not_received")
        if f["prefers_exchange"]:
            r.append("prefers_exchange")
    if f["wismo_after_delivered"]:
        r.append("wismo_after_delivered")
    if scores.abuse >= ABUSE_BLOCK:
        r.append("abuse_risk_high")
    if AMBIGUOUS[0] <= scores.recoverability <= AMBIGUOUS[1]:
        r.append("recoverability_ambiguous")
    if f["order_value"] >= HIGH_VALUE:
        r.append("high_value")
    return r


def decide(f: dict[str, float], scores, *, resolved: bool) -> Decision | None:
    """Pick the best action for this case update, or None."""
    if resolved:
        return None
    p_lost = 1.0 - scores.recoverability
    at_risk = f["return_share"] * f["order_value"] if f["return_requested"] else f["order_value"]
    margin_rate = max(f["margin_rate"], 0.0)
    value_at_risk = at_risk * (0.5 + 0.5 * margin_rate)  # revenue plus the margin behind it
    delivered = f["delivered"] > 0
    returned = f["return_requested"] > 0
    delay = f["slippage_hours"] >= 6 or f["delayed_scans"] > 0 or f["exception_count"] > 0
    eligible: list[Action] = []
    if returned:
        ambiguous = AMBIGUOUS[0] <= scores.recoverability <= AMBIGUOUS[1]
        if scores.abuse >= ABUSE_BLOCK or (f["order_value"] >= HIGH_VALUE and ambiguous):
            eligible.append(Action.HUMAN_REVIEW)
        elif (f["reason_fit"] or f["prefers_exchange"] or f["reason_changed_mind"]) and not f[
            "reason_not_received"
        ]:
            eligible.append(Action.EXCHANGE_FIRST_OFFER)
    elif not delivered:
        if f["lost"] or (delay and (f["wismo_7d"] or f["refund_intent_7d"])):
            eligible.append(Action.DELAY_INTERVENTION)
        elif delay:
            eligible.append(Action.PROACTIVE_REASSURANCE)
    else:
        if f["wismo_after_delivered"] and scores.abuse >= ABUSE_BLOCK:
            eligible.append(Action.HUMAN_REVIEW)
        elif f["fit_intent_7d"]:
            eligible.append(Action.PRODUCT_GUIDANCE)
    if not eligible:
        return None
    candidates: list[tuple[str, float]] = []
    best: tuple[float, Action] | None = None
    for action in eligible:
        lift, cost, _ = CATALOGUE[action]
        if action is Action.HUMAN_REVIEW:
            # Review protects the refund itself from abuse, or a high-value ambiguous call.
            ev = scores.abuse * at_risk + 0.1 * p_lost * value_at_risk - cost
        else:
            ev = lift * p_lost * value_at_risk - cost
        ev = round(ev, 2)
        candidates.append((action.value, ev))
        if ev > 0 and (best is None or ev > best[0]):
            best = (ev, action)
    if best is None:
        return None
    ev, action = best
    if action is Action.HUMAN_REVIEW or ev >= 50:
        priority = Priority.HIGH
    elif ev >= 10:
        priority = Priority.NORMAL
    else:
        priority = Priority.LOW
    if f["urgent_contacts_7d"] and priority is not Priority.HIGH:
        priority = Priority.HIGH
    return Decision(
        action=action,
        expected_value=ev,
        priority=priority,
        reason_codes=tuple(_reasons(f, scores)),
        ttl_hours=CATALOGUE[action][2],
        candidates=tuple(candidates),
    )
