"""Per-customer context: compact aggregates of a customer's history, in event time."""

from __future__ import annotations

from dataclasses import dataclass

from salvage.features.eventtime import DAY_US
from salvage.features.order_case import CASE_FEATURES


@dataclass(slots=True)
class CustomerContext:
    """One customer's history, folded from the case updates of all their orders.

    ``observe`` reads a few fields of the update (a :class:`salvage.flows.messages.CaseView` in
    the flow; any object with those attributes here). Two orders, then a refunded return on the
    second and one unhappy contact:

    >>> from types import SimpleNamespace as View
    >>> ctx = CustomerContext("c1")
    >>> ctx.observe(1 * DAY_US, ("placed",), View(order_value=80.0))
    >>> ctx.observe(2 * DAY_US, ("placed",), View(order_value=40.0))
    >>> ctx.observe(3 * DAY_US, ("contact",), View(features={"last_contact_sentiment": -0.5}))
    >>> refunded = View(outcome="refund", refunded_amount=40.0, returned=True, features={})
    >>> ctx.observe(4 * DAY_US, ("return_requested",), refunded)
    >>> ctx.observe(6 * DAY_US, ("closed",), refunded)
    >>> f = ctx.features(11 * DAY_US)
    >>> f["customer_orders"], f["customer_return_rate"], f["customer_refund_rate"]
    (2.0, 0.5, 0.5)
    >>> f["customer_net_value"], f["customer_mean_sentiment"], f["customer_contacts"]
    (80.0, -0.5, 1.0)
    >>> f["customer_tenure_days"], f["customer_days_since_return"]
    (10.0, 7.0)
    """

    customer_id: str
    first_seen: int = 0
    last_seen: int = 0
    orders: int = 0
    spend: float = 0.0
    returns: int = 0
    refunds: int = 0
    refunded_value: float = 0.0
    retained_returns: int = 0
    abuse_flags: int = 0
    not_received_claims: int = 0
    chargebacks: int = 0
    last_return_at: int = 0
    contacts: int = 0
    sentiment_sum: float = 0.0

    def observe(self, t: int, changes: tuple[str, ...], view) -> None:
        """Fold one case update (see :class:`salvage.flows.stages.CaseView`) into the aggregates."""
        if not self.first_seen:
            self.first_seen = t
        if t > self.last_seen:
            self.last_seen = t
        if _OBSERVED.isdisjoint(changes):  # e.g. a carrier scan: nothing to fold (most updates)
            return
        for change in changes:
            if change == "placed":
                self.orders += 1
                self.spend += view.order_value
            elif change == "return_requested":
                self.returns += 1
                self.last_return_at = t
                if (
                    "not_received_claim" in changes  # another return of an open case's order
                    if "other_return" in changes
                    else _get(view.features, "reason_not_received", _I_NOT_RECEIVED)
                ):
                    self.not_received_claims += 1
            elif change == "contact":
                self.contacts += 1
                self.sentiment_sum += _get(view.features, "last_contact_sentiment", _I_SENTIMENT)
            elif change == "graded" and view.abuse_flags and "clean_grade" not in changes:
                self.abuse_flags += 1
            elif change == "chargeback":  # after the case settled (in its grace period)
                self.chargebacks += 1
                self.refunded_value += view.refunded_amount
            elif change == "late_refund":  # another return's, after the case settled
                self.refunds += 1
                self.refunded_value += view.refunded_amount
            elif change == "topup_refund":  # more money for a refund heard already: money only
                self.refunded_value += view.refunded_amount
            elif change == "goodwill" and view.facts and view.facts.get("kind") == "refund":
                self.refunded_value += view.facts.get("goodwill", 0.0)  # cash: not a refund
            elif change == "late_retained":  # another return exchanged / credited, after it
                self.retained_returns += 1
            elif (
                change == "reviewed"
                and view.status == "settled"
                and view.facts
                and view.facts.get("review_verdict") == "abuse_confirmed"
                and not view.facts.get("flagged")
            ):  # a late verdict confirming abuse counts like a grade's abuse flag
                self.abuse_flags += 1
            elif change == "closed":
                outcome = view.outcome
                if outcome == "refund":
                    self.refunds += 1
                    self.refunded_value += view.refunded_amount
                elif outcome == "chargeback":
                    self.chargebacks += 1
                    self.refunded_value += view.refunded_amount
                elif outcome in ("exchange", "store_credit", "return_cancelled") and view.returned:
                    self.retained_returns += 1

    def merged(self, base: dict[str, float], now: int) -> dict[str, float]:
        """``base | self.features(now)`` (same keys, order and values), without building the
        customer's dict first."""
        f = base.copy()
        f.update(zip(CUSTOMER_FEATURES, self.values(now), strict=True))
        return f

    def features(self, now: int) -> dict[str, float]:
        """The customer's features at ``now`` by name (:data:`CUSTOMER_FEATURES`, in that
        order): :meth:`values` as a dict."""
        return dict(zip(CUSTOMER_FEATURES, self.values(now), strict=True))

    def values(self, now: int) -> tuple[float, ...]:
        """:meth:`features`' values in :data:`CUSTOMER_FEATURES` order (the context stage joins
        them to a case update's values for every update: a tuple, not a dict)."""
        orders = self.orders
        prior_orders = orders if orders > 1 else 1
        refunds = self.refunds
        retained = self.retained_returns
        ended = retained + refunds  # returns that ended
        contacts = self.contacts
        return (
            float(orders),
            self.returns / prior_orders,
            refunds / prior_orders,
            # of the returns that ended, the share the brand kept (exchange, credit, cancelled)
            retained / (ended if ended > 1 else 1),
            # the customer's tone over every contact so far (temperament outlives one order)
            self.sentiment_sum / contacts if contacts else 0.0,
            float(contacts),
            float(self.abuse_flags),
            float(self.not_received_claims),
            float(self.chargebacks),
            self.spend - self.refunded_value,
            (now - self.first_seen) / DAY_US if self.first_seen else 0.0,
            self.days_since_return(now),
        )

    def days_since_return(self, now: int) -> float:
        """``customer_days_since_return`` at ``now``: -1.0 when the customer never returned
        anything."""
        return (now - self.last_return_at) / DAY_US if self.last_return_at else -1.0


CUSTOMER_FEATURES: tuple[str, ...] = (
    "customer_orders",
    "customer_return_rate",
    "customer_refund_rate",
    "customer_retained_return_rate",
    "customer_mean_sentiment",
    "customer_contacts",
    "customer_abuse_flags",
    "customer_not_received_claims",
    "customer_chargebacks",
    "customer_net_value",
    "customer_tenure_days",
    "customer_days_since_return",
)
"""The names of :meth:`CustomerContext.values`, in order (the keys of its features)."""

JOINED_FEATURES: tuple[str, ...] = CASE_FEATURES + CUSTOMER_FEATURES
"""The names of a case update's joined values (the case's, then its customer's), in order: what
the context stage sends the model stage (``case.values(t) + customer.values(t)``), and the keys,
in order, of ``CustomerContext.merged(case.features(t), t)``."""


_I_NOT_RECEIVED = CASE_FEATURES.index("reason_not_received")
_I_SENTIMENT = CASE_FEATURES.index("last_contact_sentiment")


def _get(features: dict[str, float] | tuple[float, ...], name: str, i: int) -> float:
    """A case feature of an update: its values (:data:`CASE_FEATURES` order) or a dict of some
    of them (a settled case's late fact; 0.0 when absent)."""
    return features[i] if isinstance(features, tuple) else features.get(name, 0.0)


# the change codes observe() folds into a customer's history (any other changes nothing)
_OBSERVED = frozenset(
    {
        "placed",
        "return_requested",
        "contact",
        "graded",
        "chargeback",
        "late_refund",
        "topup_refund",
        "goodwill",
        "late_retained",
        "reviewed",
        "closed",
    }
)
