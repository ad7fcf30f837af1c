"""Money that is not a return's settlement: goodwill (a refund or store credit naming no return,
while none is open, of at most ``GOODWILL_MAX_SHARE`` of the order's value) keeps the case open
and is remembered as goodwill; anything more settles the case as before."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import EVENT_ADAPTER
from salvage.features.order_case import GOODWILL_MAX_SHARE, OrderCase, Outcome, Status
from salvage.flows.state import CASE
from tests.features.test_split_returns import (
    WINDOW,
    _apply,
    _at,
    _delivered,
    _refund,
    _request,
)
from tests.helpers import event, order_placed


def _goodwill(n: int, hours: float, amount: float, kind: str = "refund_issued") -> dict:
    return event(f"gw-{n}", kind, "o1", _at(hours), amount=amount, currency="EUR")


def test_a_small_refund_naming_no_return_is_goodwill_and_the_case_stays_open() -> None:
    case = _delivered(units=3)  # 120.00
    assert _apply(case, _goodwill(1, 5, 12.0)) == ["goodwill"]
    assert _apply(case, _goodwill(2, 6, 8.5, "store_credit_issued")) == ["goodwill"]
    assert case.status is Status.OPEN and case.outcome is None
    assert (case.goodwill_refunded, case.goodwill_credit, case.refunded_amount) == (12.0, 8.5, 0)
    assert (case.refund_at, case.resolved_at) == (0, 0)
    # the return window still closes it kept (the order was kept), with its goodwill
    assert case.on_time(case.next_deadline(WINDOW), WINDOW) == ["closed"]
    assert case.outcome is Outcome.KEPT and case.goodwill_refunded == 12.0


def test_goodwill_is_capped_by_its_share_of_the_order_value_together() -> None:
    case = _delivered(units=3)  # 120.00: at most 60.00 of goodwill in all
    assert _apply(case, _goodwill(1, 5, 40.0)) == ["goodwill"]
    assert _apply(case, _goodwill(2, 6, 20.0, "store_credit_issued")) == ["goodwill"]  # 60.00
    # one cent more settles the case as a refund (a lost parcel refunded in full, say)
    assert _apply(case, _goodwill(3, 7, 0.01)) == ["outcome", "closed"]
    assert case.outcome is Outcome.REFUND and case.refunded_amount == 0.01
    assert (case.goodwill_refunded, case.goodwill_credit) == (40.0, 20.0)


def test_a_full_refund_naming_no_return_still_settles_the_case() -> None:
    case = _delivered(units=3)
    assert _apply(case, _goodwill(1, 5, 120.0)) == ["outcome", "closed"]
    assert case.outcome is Outcome.REFUND and case.refunded_amount == 120.0
    assert case.goodwill_refunded == 0.0


def test_while_a_return_is_open_a_refund_naming_no_return_is_its_refund() -> None:
    """Plausibly the return's money: more than half the return's value before its goods are
    received (one unit: 40.00), any amount once they are (a partial refund after grading)."""
    case = _delivered(units=3)
    _apply(case, _request("R1", 10, 1))
    assert _apply(case, _goodwill(1, 20, 20.01)) == ["outcome", "closed"]
    assert case.outcome is Outcome.REFUND and case.refunded_amount == 20.01
    case = _delivered(units=3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, event("R1-r", "return_received", "o1", _at(15), return_id="R1"))
    assert _apply(case, _goodwill(1, 20, 10.0)) == ["outcome", "closed"]
    assert case.outcome is Outcome.REFUND and case.refunded_amount == 10.0


def test_goodwill_then_a_return_then_its_refund() -> None:
    """Goodwill does not stand in the way of the return that comes later: the return is the
    case's, its refund settles it, and the goodwill stays apart from the refunded amount."""
    case = _delivered(units=3)
    _apply(case, _goodwill(1, 5, 10.0))
    assert _apply(case, _request("R1", 10, 1)) == ["return_requested"]
    assert case.return_open()
    assert _apply(case, _refund("R1", 30, 40.0)) == ["outcome", "closed"]
    assert (case.outcome, case.refunded_amount, case.goodwill_refunded) == (
        Outcome.REFUND,
        40.0,
        10.0,
    )


def test_after_a_cancelled_return_a_small_refund_is_goodwill() -> None:
    case = _delivered(units=3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, event("R1-c", "return_cancelled", "o1", _at(12), return_id="R1"))
    assert _apply(case, _goodwill(1, 20, 15.0)) == ["goodwill"]
    assert case.outcome is Outcome.RETURN_CANCELLED and case.status is Status.OPEN


def test_an_exchange_or_a_refund_naming_a_return_is_never_goodwill() -> None:
    case = _delivered(units=3)
    # a refund of a return never requested: it settles with that return, as before
    assert _apply(case, _refund("R7", 5, 5.0)) == ["outcome", "closed"]
    case = _delivered(units=3)
    swap = event("x1", "exchange_completed", "o1", _at(5), return_id="R7")
    assert _apply(case, swap) == ["outcome", "closed"]
    assert case.outcome is Outcome.EXCHANGE


def test_an_order_never_placed_has_no_value_to_measure_goodwill_by() -> None:
    case = OrderCase("o1")
    assert _apply(case, _goodwill(1, 5, 1.0)) == ["outcome", "closed"]


def test_goodwill_survives_the_recovery_codec() -> None:
    case = _delivered(units=3)
    _apply(case, _goodwill(1, 5, 12.0))
    _apply(case, _goodwill(2, 6, 3.0, "store_credit_issued"))
    back = CASE.decoder(None)(CASE.encode(case))
    assert back == case and (back.goodwill_refunded, back.goodwill_credit) == (12.0, 3.0)
    # state written before goodwill existed: none
    before = tuple(n for n in CASE.names if not n.startswith("goodwill"))
    values = dict(zip(CASE.names, CASE.encode(case), strict=True))
    old = CASE.decoder(before)([values[n] for n in before])
    assert (old.goodwill_refunded, old.goodwill_credit) == (0.0, 0.0)


_PAY = st.tuples(
    st.sampled_from(["refund_issued", "store_credit_issued"]),
    st.decimals(min_value="0.01", max_value="150", places=2).map(float),
    st.booleans(),  # names the return R1
)


@settings(max_examples=300, deadline=None)
@given(
    units=st.integers(1, 4),
    returned=st.sampled_from([None, "open", "cancelled"]),
    pays=st.lists(_PAY, min_size=1, max_size=6),
)
def test_goodwill_property(units: int, returned: str | None, pays: list) -> None:
    """Against a direct restatement of the rule: each payment is goodwill iff it names no
    return and the goodwill with it is at most the share of the order's value (no return open)
    or of the open return's value (its goods not received: 40.00, one unit); the first one
    that is not settles the case (nothing after it is applied: the case stage settles it);
    goodwill is the sum of the goodwill payments by kind, to the cent."""
    case = OrderCase("o1")
    _apply(case, order_placed("o1", "2026-03-02T10:00:00Z", price=40.0, qty=units))
    _apply(case, event("d1", "carrier_scan", "o1", _at(0), scan="delivered", courier="dhl"))
    if returned:
        _apply(case, _request("R1", 1, 1))
        if returned == "cancelled":
            _apply(case, event("R1-c", "return_cancelled", "o1", _at(2), return_id="R1"))
    value = 40.0 if returned == "open" else 40.0 * units
    cap = round(GOODWILL_MAX_SHARE * value, 2)
    cash = credit = 0.0
    for i, (kind, amount, named) in enumerate(pays):
        doc = event(f"p{i}", kind, "o1", _at(3 + i), amount=amount, currency="EUR")
        if named:
            doc["return_id"] = "R1"
        expect = not named and round(cash + credit + amount, 2) <= cap
        changes = _apply(case, doc)
        if not expect:
            assert "outcome" in changes and case.status is Status.CLOSED
            break
        assert changes == ["goodwill"] and case.status is Status.OPEN
        if kind == "refund_issued":
            cash = round(cash + amount, 2)
        else:
            credit = round(credit + amount, 2)
    assert (case.goodwill_refunded, case.goodwill_credit) == (cash, credit)


@pytest.mark.parametrize("kind", ["refund_issued", "store_credit_issued"])
def test_the_event_contract_takes_payments_naming_no_return(kind: str) -> None:
    ev = EVENT_ADAPTER.validate_json(json.dumps(_goodwill(1, 5, 2.5, kind)))
    assert ev.return_id is None and ev.amount == 2.5


def test_part_of_a_lost_parcels_refund_is_not_goodwill() -> None:
    case = OrderCase("o1")
    _apply(case, order_placed("o1", "2026-03-02T10:00:00Z", price=60.0, qty=2))
    _apply(case, event("s1", "carrier_scan", "o1", _at(-20), scan="lost", courier="dhl"))
    assert _apply(case, _goodwill(1, 5, 60.0)) == ["outcome", "closed"]
    assert case.outcome is Outcome.REFUND and case.refunded_amount == 60.0


def _exchange_request(rid: str, hours: float, qty: int) -> dict:
    return {**_request(rid, hours, qty), "preferred_resolution": "exchange"}


def test_a_fee_refunded_while_an_exchange_is_on_its_way_is_goodwill() -> None:
    """The customer asked for an exchange; a small cash refund naming no return (the return
    shipping fee, 4.95) is goodwill and the exchange still settles the case (before: the fee
    closed it as a refund, and the receipt and the exchange were dead letters)."""
    case = _delivered(units=3)  # one unit returned: 40.00
    _apply(case, _exchange_request("R1", 10, 1))
    assert _apply(case, _goodwill(1, 12, 4.95)) == ["goodwill"]
    assert case.return_open() and case.goodwill_refunded == 4.95
    swap = event("x1", "exchange_completed", "o1", _at(40), return_id="R1")
    assert _apply(case, swap) == ["outcome", "closed"]
    assert case.outcome is Outcome.EXCHANGE and case.refunded_amount == 0.0


def test_while_an_exchange_is_open_more_than_half_its_value_or_a_credit_settles_it() -> None:
    case = _delivered(units=3)
    _apply(case, _exchange_request("R1", 10, 1))
    assert _apply(case, _goodwill(1, 12, 20.01)) == ["outcome", "closed"]  # > 20.00
    assert case.outcome is Outcome.REFUND
    case = _delivered(units=3)
    _apply(case, _exchange_request("R1", 10, 1))
    _apply(case, event("R1-r", "return_received", "o1", _at(11), return_id="R1"))
    credit = _goodwill(1, 12, 5.0, "store_credit_issued")
    # once the goods are received, a store credit is the return's (a resolution asked for)
    assert _apply(case, credit) == ["outcome", "closed"]
    assert case.outcome is Outcome.STORE_CREDIT
