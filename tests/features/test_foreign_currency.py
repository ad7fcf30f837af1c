"""Money in another currency than the order's (a cross-border store refunding in the shopper's
currency, or a data error). There are no exchange rates in the pipeline, so such money is never
summed with the order's nor compared with its value: a payment whose meaning does not hang on its
amount (a return's refund or store credit, a chargeback, a lost parcel's refund) is applied like
any, its money kept apart by currency (``refunded_other``); one whose meaning does (a payment
naming no return that would be goodwill if small enough) is refused (``money_refusal``: the case
stage dead-letters it, ``currency_mismatch``) and changes nothing. Before, every amount was
added to the order's, whatever its currency said."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import EVENT_ADAPTER
from salvage.features.order_case import (
    MAX_OTHER_CURRENCIES,
    MONEY_EVENTS,
    NO_RETURN,
    RETURN_FIELDS,
    OrderCase,
    Outcome,
    Status,
)
from salvage.flows.state import CASE
from tests.features.test_split_returns import _apply, _at, _delivered, _request, _step
from tests.helpers import event, order_placed


def _pay(eid: str, hours: float, amount: float, currency: str, rid: str | None = "R1", **kw):
    kind = kw.pop("kind", "refund_issued")
    fields = {"return_id": rid} if rid else {}
    return event(eid, kind, "o1", _at(hours), amount=amount, currency=currency, **fields, **kw)


def _ev(doc: dict):
    return EVENT_ADAPTER.validate_json(json.dumps(doc))


def test_a_returns_refund_in_another_currency_settles_it_and_is_kept_apart() -> None:
    """The refund of a return settles it whatever its currency (the outcome is what happened,
    not an amount): the case closes as a refund, as with the order's currency; its money is not
    the order's refunded amount (before: 100 GBP became 100 EUR)."""
    for currency in ("EUR", "GBP"):
        case = _delivered(units=3)  # 120.00 EUR
        _apply(case, _request("R1", 10, 1))
        assert _apply(case, _pay("f1", 30, 100.0, currency)) == ["outcome", "closed"]
        assert (case.status, case.outcome, case.refund_at > 0) == (
            Status.CLOSED,
            Outcome.REFUND,
            True,
        )
        facts = case.facts()
        if currency == "EUR":
            assert (case.refunded_amount, case.refunded_other) == (100.0, ())
            assert facts["refunded_other"] == {}
        else:
            assert (case.refunded_amount, case.refunded_other) == (0.0, (("GBP", 100.0),))
            assert (facts["currency"], facts["refunded_amount"]) == ("EUR", 0.0)
            assert facts["refunded_other"] == {"GBP": 100.0}


def test_a_chargeback_in_another_currency_closes_the_case_with_its_money_apart() -> None:
    case = _delivered(units=3)
    cb = event("cb", "chargeback_filed", "o1", _at(50), amount=120.0, currency="USD")
    assert _apply(case, cb) == ["outcome", "closed"]
    assert case.outcome is Outcome.CHARGEBACK
    assert (case.refunded_amount, case.refunded_other) == (0.0, (("USD", 120.0),))


def test_goodwill_in_the_orders_currency_then_a_foreign_refund_of_the_return() -> None:
    """Goodwill (EUR), then a return refunded in GBP: each sum in its own currency."""
    case = _delivered(units=3)
    assert _apply(case, _pay("gw", 5, 12.0, "EUR", rid=None)) == ["goodwill"]
    _apply(case, _request("R1", 10, 1))
    assert _apply(case, _pay("f1", 30, 35.0, "GBP")) == ["outcome", "closed"]
    assert (case.goodwill_refunded, case.refunded_amount) == (12.0, 0.0)
    assert case.refunded_other == (("GBP", 35.0),)


def test_a_foreign_payment_naming_no_return_is_refused_and_changes_nothing() -> None:
    """40 EUR of goodwill on a 120 EUR order, then 30 GBP naming no return: goodwill (at most
    60 EUR in all) or the order's settlement? Without a rate nobody can say: refused, the case
    as it was. Before, 40 + 30 = 70 > 60 closed the case as a refund (a kept order counted
    lost) with 30.00 "EUR" refunded."""
    case = _delivered(units=3)
    assert _apply(case, _pay("gw", 5, 40.0, "EUR", rid=None)) == ["goodwill"]
    foreign = _pay("gw2", 6, 30.0, "GBP", rid=None)
    reason = case.money_refusal(_ev(foreign))
    assert "GBP" in reason and "EUR" in reason and "exchange rate" in reason
    before = {n: getattr(case, n) for n in RETURN_FIELDS}
    assert _apply(case, foreign) == []
    assert {n: getattr(case, n) for n in RETURN_FIELDS} == before
    assert case.status is Status.OPEN and case.outcome is None
    # the return window still closes it kept, with its goodwill
    assert case.on_time(case.next_deadline(30 * 86_400_000_000), 30 * 86_400_000_000)
    assert case.outcome is Outcome.KEPT and case.goodwill_refunded == 40.0


@pytest.mark.parametrize(
    ("setup", "doc", "refused"),
    [
        # no return open, naming none: goodwill or settlement, by its amount
        ("delivered", _pay("p", 20, 5.0, "GBP", rid=None), True),
        ("delivered", _pay("p", 20, 5.0, "GBP", rid=None, kind="store_credit_issued"), True),
        # an exchange asked for: a small cash refund naming no return may be goodwill
        ("exchange", _pay("p", 20, 5.0, "GBP", rid=None), True),
        # a return open, its goods not received: goodwill or its settlement, by its amount
        ("refund", _pay("p", 20, 5.0, "GBP", rid=None), True),
        ("exchange", _pay("p", 20, 5.0, "GBP", rid=None, kind="store_credit_issued"), True),
        # its goods received: a payment naming no return is its settlement, whatever its size
        ("refund+received", _pay("p", 20, 5.0, "GBP", rid=None), False),
        ("exchange+received", _pay("p", 20, 5.0, "GBP", rid=None, kind="store_credit_issued"), 0),
        # naming a return, a chargeback, a lost parcel: never goodwill
        ("delivered", _pay("p", 20, 5.0, "GBP"), False),
        ("delivered", event("p", "chargeback_filed", "o1", _at(20), amount=5.0, currency="GBP"), 0),
        ("lost", _pay("p", 20, 5.0, "GBP", rid=None), False),
        # the order's currency: never refused
        ("delivered", _pay("p", 20, 5.0, "EUR", rid=None), False),
    ],
)
def test_what_is_refused(setup: str, doc: dict, refused: bool) -> None:
    if setup == "lost":
        case = OrderCase("o1")
        _apply(case, order_placed("o1", "2026-03-02T10:00:00Z", price=40.0, qty=3))
        _apply(case, event("s1", "carrier_scan", "o1", _at(-20), scan="lost", courier="dhl"))
    else:
        case = _delivered(units=3)
        if setup != "delivered":
            resolution, _, received = setup.partition("+")
            _apply(case, {**_request("R1", 10, 1), "preferred_resolution": resolution})
            if received:
                _apply(case, event("R1-r", "return_received", "o1", _at(15), return_id="R1"))
    assert bool(case.money_refusal(_ev(doc))) is bool(refused)
    changes = _apply(case, doc)
    assert (changes == []) is bool(refused)


def test_another_returns_foreign_refund_settles_the_case() -> None:
    case = _delivered(units=3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _request("R2", 20, 2))
    assert _apply(case, _pay("f2", 40, 70.0, "GBP", rid="R2")) == ["outcome", "closed"]
    assert case.return_id == "R2" and case.refunded_other == (("GBP", 70.0),)
    assert case.refunded_amount == 0.0


def test_money_in_too_many_other_currencies_is_refused() -> None:
    others = tuple((c, 1.0) for c in ("GBP", "USD", "CHF", "SEK", "PLN")[:MAX_OTHER_CURRENCIES])
    case = OrderCase.of("o1", currency="EUR", refunded_other=others)
    cb = _ev(event("cb", "chargeback_filed", "o1", _at(1), amount=1.0, currency="NOK"))
    assert "other currencies" in case.money_refusal(cb)
    again = _ev(event("cb", "chargeback_filed", "o1", _at(1), amount=1.0, currency="GBP"))
    assert case.money_refusal(again) == ""  # a currency it has money in already


def test_the_other_currencies_survive_the_recovery_codec() -> None:
    case = _delivered(units=3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _pay("f1", 30, 35.5, "GBP"))
    back = CASE.decoder(None)(CASE.encode(case))
    assert back == case and back.refunded_other == (("GBP", 35.5),)
    # state written before this field: none
    before = tuple(n for n in CASE.names if n != "refunded_other")
    values = dict(zip(CASE.names, CASE.encode(case), strict=True))
    assert CASE.decoder(before)([values[n] for n in before]).refunded_other == ()
    assert NO_RETURN.refunded_other == ()


# ----------------------------------------------------------------------------- the property

_CURRENCIES = ("EUR", "GBP", "USD")
_MONEY = st.tuples(
    st.sampled_from(sorted(MONEY_EVENTS)),
    st.decimals(min_value="0.01", max_value="200", places=2).map(float),
    st.sampled_from(_CURRENCIES),
    st.sampled_from([None, "R1", "R2"]),  # the return it names (a chargeback names none)
    st.decimals(min_value="0.01", max_value="200", places=2).map(float),  # another amount
)
_OTHER = st.sampled_from(["req1", "req2", "cancel1", "exchange1", "lost", "none"])


def _story(steps: list, foreign_amounts: bool) -> tuple[OrderCase, dict[str, float], int]:
    """Apply ``steps`` as the case stage does (a refused payment is not applied: dead-lettered);
    ``foreign_amounts``: take each foreign payment's other amount. Returns the case, the money
    applied by currency (refunds and chargebacks, the order's own goodwill cash included) and
    the number refused."""
    case = _delivered(units=3)
    paid: dict[str, float] = {}
    refused = 0
    for i, step in enumerate(steps):
        hours = 1 + i
        if step[0] in MONEY_EVENTS:
            kind, amount, currency, rid, alt = step
            if currency != "EUR" and foreign_amounts:
                amount = alt
            fields = {} if rid is None or kind == "chargeback_filed" else {"return_id": rid}
            doc = event(f"m{i}", kind, "o1", _at(hours), amount=amount, currency=currency, **fields)
            if case.money_refusal(_ev(doc)):
                refused += 1
                continue
            if kind != "store_credit_issued":
                paid[currency] = round(paid.get(currency, 0.0) + amount, 2)
            _apply(case, doc)
        elif step == "req1":
            _apply(case, _request("R1", hours, 1))
        elif step == "req2":
            _apply(case, _request("R2", hours, 1))
        elif step == "cancel1":
            _apply(case, _step("R1", "return_cancelled", hours))
        elif step == "exchange1":
            _apply(case, _step("R1", "exchange_completed", hours))
        elif step == "lost":
            _apply(case, event(f"s{i}", "carrier_scan", "o1", _at(hours), scan="lost", courier="x"))
    return case, paid, refused


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(st.one_of(_MONEY, _OTHER), min_size=1, max_size=8))
def test_no_amount_in_another_currency_decides_anything_nor_is_summed(steps: list) -> None:
    """Any sequence of payments in EUR (the order's), GBP and USD among a return's steps:

    * the case is the same (outcome, status, return, goodwill, the order's refunded amount)
      whatever the foreign payments' amounts: none of them is compared with anything;
    * the order's refunded amount and goodwill cash are exactly its EUR refunds and chargebacks
      applied, and each other currency's money is exactly that currency's: nothing is summed
      across currencies, and nothing applied is lost."""
    case, paid, refused = _story(steps, foreign_amounts=False)
    other, _, refused2 = _story(steps, foreign_amounts=True)
    assert refused == refused2
    for name in ("status", "outcome", "closed_at", *RETURN_FIELDS):
        if name != "refunded_other":
            assert getattr(case, name) == getattr(other, name), name
    assert {c for c, _ in other.refunded_other} == {c for c, _ in case.refunded_other}
    eur = round(case.refunded_amount + case.goodwill_refunded, 2)
    assert eur == paid.pop("EUR", 0.0)
    assert dict(case.refunded_other) == {c: a for c, a in paid.items() if a}
    assert all(c != case.currency for c, _ in case.refunded_other)
