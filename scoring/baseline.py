"""Rule baseline: hand-set logistic scores for recoverability and abuse.

This is the yardstick the online models (scoring/) must beat before they may act. Inputs are the
merged case + customer feature dict; outputs are probabilities in (0, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from salvage.fastpickle import fast_pickle

RULES_VERSION = "rules-v1"

# every feature the rules read, in the order the compiled batch kernel takes their columns
# (scoring/dense_numba.py ``rule_scores``, the same operations as the functions below)
RULE_FEATURES = (
    "return_requested",
    "slippage_hours",
    "refund_intent_7d",
    "wismo_7d",
    "urgent_contacts_7d",
    "mean_sentiment_7d",
    "lost",
    "prefers_exchange",
    "reason_fit",
    "prefers_refund",
    "reason_damaged",
    "reason_late",
    "customer_refund_rate",
    "customer_abuse_flags",
    "customer_not_received_claims",
    "customer_chargebacks",
    "reason_not_received",
    "delivered",
    "wismo_after_delivered",
    "bracketing_lines",
    "reason_changed_mind",
    "days_since_delivery",
    "customer_return_rate",
    "customer_orders",
)


@fast_pickle
@dataclass(frozen=True, slots=True)
class ScoreResult:
    recoverability: float
    abuse: float
    model_version: str


def _sigmoid(z: float) -> float:
    if z < -30:
        return 1e-13
    return 1.0 / (1.0 + math.exp(-z))


def recoverability(f: dict[str, float]) -> float:
    """P(the order is retained | what is known now), by rule."""
    returned = f["return_requested"]
    z = 2.4
    z -= 0.025 * min(f["slippage_hours"], 120.0)
    z -= 0.6 * min(f["refund_intent_7d"], 3.0)
    z -= 0.25 * min(f["wismo_7d"], 4.0)
    z -= 0.3 * min(f["urgent_contacts_7d"], 3.0)
    z += 0.6 * f["mean_sentiment_7d"]
    z -= 1.2 * f["lost"]
    z -= 2.2 * returned
    z += returned * (1.4 * f["prefers_exchange"] + 0.9 * f["reason_fit"])
    z -= returned * (1.0 * f["prefers_refund"] + 0.8 * f["reason_damaged"] + 0.5 * f["reason_late"])
    z -= 0.8 * min(f["customer_refund_rate"], 1.0)
    return _sigmoid(z)


def abuse(f: dict[str, float]) -> float:
    """P(this order's return is abusive), by rule."""
    z = -4.0
    z += 0.9 * min(f["customer_abuse_flags"], 3.0)
    z += 0.8 * min(f["customer_not_received_claims"], 3.0)
    z += 1.0 * min(f["customer_chargebacks"], 2.0)
    z += 2.2 * f["reason_not_received"] * f["delivered"]
    z += 0.8 * min(f["wismo_after_delivered"], 2.0)
    z += 0.9 * min(f["bracketing_lines"], 2.0)
    z += 1.0 * f["reason_changed_mind"] * (f["days_since_delivery"] > 18)
    z += 1.2 * max(f["customer_return_rate"] - 0.4, 0.0) * (f["customer_orders"] >= 3)
    return _sigmoid(z)


class RuleScorer:
    """Both rule scores for one merged case + customer feature dict.

    A fresh order with no history, the same order two days late with a customer asking for it
    and for a refund, and a "never arrived" claim on a delivered parcel from a customer with
    two abuse flags and a chargeback behind them:

    >>> from salvage.features.customer import CustomerContext
    >>> from salvage.features.order_case import OrderCase
    >>> f = OrderCase("o1").features(0) | CustomerContext("c1").features(0)
    >>> RuleScorer().score(f)
    ScoreResult(recoverability=0.916827, abuse=0.017986, model_version='rules-v1')
    >>> late = f | {"slippage_hours": 48.0, "wismo_7d": 2.0, "refund_intent_7d": 1.0}
    >>> RuleScorer().score(late).recoverability
    0.524979
    >>> claim = f | {"return_requested": 1.0, "reason_not_received": 1.0, "delivered": 1.0}
    >>> RuleScorer().score(claim | {"customer_abuse_flags": 2.0, "customer_chargebacks": 1.0})
    ScoreResult(recoverability=0.549834, abuse=0.731059, model_version='rules-v1')
    """

    version = RULES_VERSION

    def score(self, features: dict[str, float]) -> ScoreResult:
        return ScoreResult(
            recoverability=round(recoverability(features), 6),
            abuse=round(abuse(features), 6),
            model_version=self.version,
        )
