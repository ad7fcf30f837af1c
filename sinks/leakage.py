"""Refund leakage: which refunded value could have been saved (issue 11 item 5).

An ops user reads "refund leakage" as *money refunded that could have been saved*. Salvage decides
it per closed case from facts it had **when the money went out** (a refund or a chargeback closes
the case, so the case's facts at close are those facts), never from a model score:

1. **Delivered.** A parcel that never arrived (lost, returned to sender: no ``delivered`` scan) is
   refunded because the goods are gone: a carrier claim, not a refund anyone could have avoided.
2. **No abuse evidence.** No abuse flag from grading, no ``abuse_confirmed`` review verdict, no
   abuse flag on any return of this customer so far (``customer_abuse_flags``). Money that went to
   abuse is a loss, but not a customer who could have been kept.
3. **A controllable reason.** The return reason is one the brand can answer with something other
   than cash: a size (``too_small`` / ``too_large``: an exchange), ``damaged`` or ``wrong_item``
   (a replacement), ``quality`` / ``not_as_described`` (a replacement, credit), ``arrived_late``
   (an apology, credit); or, whatever the reason, the customer asked for an exchange or store
   credit (``preferred_resolution``) and got cash. ``changed_mind``, ``other`` and ``not_received``
   (a claim against a delivered scan) are not leakage. A chargeback without a return request has
   no reason: it counts when the parcel arrived more than :data:`LATE_HOURS` after its promise.

Value is the refunded amount (refunds + chargebacks of the case), each payment in its own currency
(one series per currency, never converted nor summed across currencies: a refund in another
currency than the order's counts in that currency, with the case's basis; see
``OrderCase.money_refusal``). A chargeback filed **after** the case settled, within
``SALVAGE_SETTLED_GRACE_DAYS``, adds to the refunded value (basis ``late_chargeback``) but not to
leakage: it disputes a decision already taken. The refund of another return of the order that
comes after the case settled (a second parcel sent back, a return after the window) has the basis
its return's reason gives, as a closed case's; ``late_return`` (not leakage) when that return's
request was never heard. Goodwill refunded while the order was kept (a refund naming no return,
while none was open, of at most ``GOODWILL_MAX_SHARE`` of the order's value: an apology for a
late parcel; ``OrderCase._goodwill``) is refunded value with the basis ``goodwill``, never
leakage: it was paid to keep the order, and the case stays open. More money for what a case
settled with, within the grace period, has the basis the case's facts give at its close, or
``abuse_evidence`` when abuse evidence came in between: a second payment of its refund (the item,
then the shipping fee), a store credit paid out in cash, a cancelled order's refund
(``not_delivered``); the price difference refunded after an exchange is ``exchange_difference``,
never leakage (the customer kept the exchanged goods). Counters never go down, so a
fact that arrives after the refund (a late grade's abuse flag) does not move value out of
leakage: the definition is about what was known at the refund.

It is a share estimate, not a list of cases: on the simulator a refund's latent recoverability is a
coin flip inside every reason (it hinges on the customer's temperament and value tier), so no rule
picks the right cases one by one (README, "On data Salvage was not tuned to").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LATE_HOURS = 24.0
"""A delivery this many hours past its promise is late (the reason of a chargeback without a
return request)."""

CONTROLLABLE: dict[str, str] = {
    "too_small": "fit",
    "too_large": "fit",
    "damaged": "damaged",
    "wrong_item": "wrong_item",
    "quality": "quality",
    "not_as_described": "quality",
    "arrived_late": "late_delivery",
}
ALTERNATIVES = frozenset({"exchange", "store_credit"})
LEAKED = frozenset({*CONTROLLABLE.values(), "asked_for_alternative"})
BASES: tuple[str, ...] = (
    *dict.fromkeys(CONTROLLABLE.values()),
    "asked_for_alternative",
    "changed_mind",
    "other_reason",
    "not_received",
    "no_return_request",
    "not_delivered",
    "abuse_evidence",
    "late_chargeback",
    "late_return",
    "goodwill",
    "exchange_difference",
)
"""Every basis :func:`basis` returns (a closed label vocabulary)."""


def _abuse_evidence(case: Mapping[str, Any], customer: Mapping[str, Any] | None) -> bool:
    """A grade's abuse flag, a confirmed review, or a customer flagged before."""
    return bool(
        case.get("abuse_flags")
        or case.get("review_verdict") == "abuse_confirmed"
        or float((customer or {}).get("customer_abuse_flags") or 0.0) > 0
    )


def later_basis(
    settled: str, case: Mapping[str, Any], customer: Mapping[str, Any] | None = None
) -> str:
    """The basis of more money for what a settled case settled with: ``settled`` (the basis its
    facts gave at the close), or ``abuse_evidence`` when the evidence came since (``case``: the
    late fact, ``flagged``: a grade with abuse flags heard), in :func:`basis`'s order (a parcel
    never delivered first).

    >>> later_basis("fit", {}), later_basis("fit", {"flagged": True})
    ('fit', 'abuse_evidence')
    >>> later_basis("not_delivered", {}, {"customer_abuse_flags": 1.0})
    'not_delivered'
    """
    if settled != "not_delivered" and (case.get("flagged") or _abuse_evidence({}, customer)):
        return "abuse_evidence"
    return settled


LATE_MONEY = frozenset({"chargeback_filed", "refund_issued"})
"""The late facts of a settled case that pay money (``facts["late"]``, flows/stages/case.py)."""


def late_money(case: Mapping[str, Any]) -> float:
    """The money a settled case's late fact paid (``case``: its facts): a chargeback's or a
    refund's amount, 0.0 for any other late fact. What the KPIs add to the refunded value and
    the outcomes stream to the order's refunded amount (``outcome_amended``).

    >>> late_money({"late": "refund_issued", "amount": 20.0})
    20.0
    >>> late_money({"late": "return_graded", "amount": 0.0})
    0.0
    """
    amount = float(case.get("amount") or 0.0)
    return amount if case.get("late") in LATE_MONEY and amount > 0 else 0.0


def keeps_order(case: Mapping[str, Any], outcome: str | None) -> bool:
    """Does a settled case's late payment (:func:`late_money` > 0; ``case``: its facts,
    ``outcome``: the case's outcome at its close) leave the order retained? Retained means no
    refund and no chargeback (DESIGN §11), so money going back after the close ends it: a
    chargeback, another return's refund, a store credit paid out in cash, a cancelled order's
    refund, a refund's second payment. One exception: the price difference refunded after an
    exchange (more money for the exchange the case settled with: ``basis`` set) -- the customer
    kept the exchanged goods, as ``exchange_difference`` is never leakage. (Goodwill paid while
    the case was open never ends it: the order was kept; goodwill after the close is a dead
    letter.)

    >>> keeps_order({"late": "chargeback_filed", "amount": 100.0}, "kept")
    False
    >>> keeps_order({"late": "refund_issued", "amount": 100.0, "return_reason": "quality"},
    ...             "exchange")
    False
    >>> keeps_order({"late": "refund_issued", "amount": 8.0, "basis": "fit"}, "exchange")
    True
    """
    return case.get("late") == "refund_issued" and bool(case.get("basis")) and outcome == "exchange"


def settled_basis(case: Mapping[str, Any], customer: Mapping[str, Any] | None = None) -> str:
    """The basis of the money a settled case's late fact paid (:func:`late_money`; ``case``: its
    facts, ``customer``: the customer's features then): a chargeback is ``late_chargeback``,
    more money for what the case settled with has :func:`later_basis`, another return's refund
    the basis its reason gives a closed case (it was heard: delivered), ``late_return`` when
    its request was never heard.

    >>> settled_basis({"late": "chargeback_filed", "amount": 5.0})
    'late_chargeback'
    >>> settled_basis({"late": "refund_issued", "amount": 5.0, "basis": "fit", "flagged": True})
    'abuse_evidence'
    >>> settled_basis({"late": "refund_issued", "amount": 5.0, "return_reason": "damaged"})
    'damaged'
    >>> settled_basis({"late": "refund_issued", "amount": 5.0})
    'late_return'
    """
    if case.get("late") == "chargeback_filed":
        return "late_chargeback"
    if case.get("basis"):  # more money for what the case settled with
        return later_basis(case["basis"], case, customer)
    if case.get("return_reason"):
        flags = case.get("abuse_flags") or (["flagged"] if case.get("flagged") else [])
        facts = {**case, "delivered_at": 1, "abuse_flags": flags}  # (it heard: delivered)
        return basis(facts, customer)
    return "late_return"


def basis(case: Mapping[str, Any], customer: Mapping[str, Any] | None = None) -> str:
    """Why a closed case's refunded value is (or is not) leakage: one of :data:`BASES`; leakage
    iff the result is in :data:`LEAKED`. ``case``: :meth:`OrderCase.facts` at close; ``customer``:
    the customer-context features at close.

    >>> basis({"delivered_at": 1, "return_reason": "too_small"})
    'fit'
    >>> basis({"delivered_at": 1, "return_reason": "too_small", "abuse_flags": ["worn"]})
    'abuse_evidence'
    >>> basis({"delivered_at": 1, "return_reason": "changed_mind",
    ...        "preferred_resolution": "store_credit"})
    'asked_for_alternative'
    >>> basis({"delivered_at": 0, "return_reason": "damaged"})
    'not_delivered'
    >>> basis({"delivered_at": 1, "slippage_hours": 30.0}), basis({"delivered_at": 1})
    ('late_delivery', 'no_return_request')
    """
    if not case.get("delivered_at"):
        return "not_delivered"
    if _abuse_evidence(case, customer):
        return "abuse_evidence"
    reason = case.get("return_reason") or ""
    if not reason:
        late = float(case.get("slippage_hours") or 0.0) > LATE_HOURS
        return "late_delivery" if late else "no_return_request"
    if reason == "not_received":
        return "not_received"
    if reason in CONTROLLABLE:
        return CONTROLLABLE[reason]
    if case.get("preferred_resolution") in ALTERNATIVES:
        return "asked_for_alternative"
    return "changed_mind" if reason == "changed_mind" else "other_reason"
