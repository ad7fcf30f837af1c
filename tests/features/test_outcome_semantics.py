"""What a payment is while a return is open, and a payment of no money (probe 3, defects 7, 15).

* Goodwill naming no return, paid while a return is open and its goods are not received, is
  goodwill up to ``GOODWILL_MAX_SHARE`` of the return's value (an apology while the parcel is on
  its way), and the return goes on to its own settlement; more than that share, or anything
  once the goods are received, is the return's settlement (as before).
* A refund or store credit of 0.00 (a return denied) closes the case kept: no money went back,
  nothing is refunded, the customer is told of no refund.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.features import journey
from salvage.features.order_case import GOODWILL_MAX_SHARE, Outcome, Status
from tests.features.test_split_returns import _apply, _at, _delivered, _refund, _request, _step
from tests.helpers import event


def _unnamed(n: int, hours: float, amount: float, kind: str = "refund_issued") -> dict:
    return event(f"gw-{n}", kind, "o1", _at(hours), amount=amount, currency="EUR")


def test_goodwill_while_a_refund_return_is_on_its_way_does_not_settle_it() -> None:
    """Probe repro goodwill_closes_open_refund_return: a 10 EUR apology naming no return while
    the customer's refund return (100.00) is open; before, it closed the case as a 10.00 refund
    and the return's label, transit and receipt were dead letters."""
    case = _delivered(units=1)  # 40.00: the goodwill cap of the return is 20.00
    _apply(case, _request("R1", 10, 1))
    assert _apply(case, _unnamed(1, 12, 10.0)) == ["goodwill"]
    assert case.status is Status.OPEN and case.return_open()
    assert (case.goodwill_refunded, case.refunded_amount, case.refund_at) == (10.0, 0.0, 0)
    assert _apply(case, _step("R1", "return_received", 30)) == ["return_progress"]
    assert _apply(case, _refund("R1", 40, 40.0)) == ["outcome", "closed"]
    assert (case.outcome, case.refunded_amount, case.goodwill_refunded) == (
        Outcome.REFUND,
        40.0,
        10.0,
    )


def test_goodwill_credit_while_a_refund_return_is_open_is_not_its_store_credit() -> None:
    """Probe repro goodwill_credit_closes_refund_return_as_retained: before, a 10 EUR credit
    closed the case as store_credit (retained) and the real refund came after the close."""
    case = _delivered(units=1)
    _apply(case, _request("R1", 10, 1))
    assert _apply(case, _unnamed(1, 12, 4.0, "store_credit_issued")) == ["goodwill"]
    assert case.goodwill_credit == 4.0 and case.outcome is None
    assert _apply(case, _refund("R1", 40, 40.0)) == ["outcome", "closed"]
    assert case.outcome is Outcome.REFUND


def test_more_than_the_share_or_after_receipt_is_the_returns_settlement() -> None:
    case = _delivered(units=3)  # one unit returned: 40.00, its share 20.00
    _apply(case, _request("R1", 10, 1))
    assert _apply(case, _unnamed(1, 12, 15.0)) == ["goodwill"]
    assert _apply(case, _unnamed(2, 13, 5.01)) == ["outcome", "closed"]  # 20.01 in all
    assert (case.outcome, case.refunded_amount, case.goodwill_refunded) == (
        Outcome.REFUND,
        5.01,
        15.0,
    )
    case = _delivered(units=3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _step("R1", "return_received", 11))
    assert _apply(case, _unnamed(1, 12, 3.0)) == ["outcome", "closed"]  # a partial refund
    assert case.outcome is Outcome.REFUND and case.goodwill_refunded == 0.0


def test_a_zero_refund_closes_the_return_kept_with_no_money() -> None:
    """Probe repro zero_amount_refund: a 0.00 refund of a worn return; before, the case closed
    as a refund (lost) and the customer was told "refund_issued 0.0"."""
    case = _delivered(units=1)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _step("R1", "return_received", 30))
    assert _apply(case, _refund("R1", 40, 0.0)) == ["outcome", "no_money", "closed"]
    assert (case.outcome, case.status, case.refunded_amount, case.refund_at) == (
        Outcome.KEPT,
        Status.CLOSED,
        0.0,
        0,
    )
    assert journey.on_event(
        case, "refund_issued", case.closed_at, 0.0, journey.JourneyConfig()
    ) == ([], [])
    # a store credit of nothing, naming no return, while the return is open: the same
    case = _delivered(units=1)
    _apply(case, _request("R1", 10, 1))
    assert _apply(case, _unnamed(1, 12, 0.0, "store_credit_issued"))[:2] == ["outcome", "no_money"]
    assert case.outcome is Outcome.KEPT and case.goodwill_credit == 0.0


def test_a_zero_payment_naming_no_return_with_none_open_changes_nothing() -> None:
    case = _delivered(units=1)
    assert _apply(case, _unnamed(1, 5, 0.0)) == []
    assert case.status is Status.OPEN and case.outcome is None and case.ret is None


_PAY = st.tuples(
    st.sampled_from(["refund_issued", "store_credit_issued"]),
    st.one_of(st.just(0.0), st.decimals(min_value="0.01", max_value="60", places=2).map(float)),
)


@settings(max_examples=300, deadline=None)
@given(
    units=st.integers(1, 3),
    returned=st.integers(1, 3),
    resolution=st.sampled_from(["refund", "exchange", "store_credit"]),
    received=st.booleans(),
    pays=st.lists(_PAY, min_size=1, max_size=5),
)
def test_payments_naming_no_return_while_one_is_open_property(
    units: int, returned: int, resolution: str, received: bool, pays: list
) -> None:
    """Against a restatement of the rule, payments naming no return while a return of
    ``returned`` units (40.00 each) is open: 0.00 closes it kept; goodwill while the goodwill
    so far with it is at most the share of the return's value and the goods are not received
    (or it is cash and an exchange or store credit was asked for); otherwise it settles the
    case as a refund or store credit of its amount. Nothing after the close is applied."""
    returned = min(returned, units)
    case = _delivered(units=units)
    _apply(case, {**_request("R1", 10, returned), "preferred_resolution": resolution})
    if received:
        _apply(case, _step("R1", "return_received", 11))
    cap = round(GOODWILL_MAX_SHARE * 40.0 * returned, 2)
    goodwill = 0.0
    for i, (kind, amount) in enumerate(pays):
        changes = _apply(case, _unnamed(i, 12 + i, amount, kind))
        if amount == 0.0:
            assert changes == ["outcome", "no_money", "closed"] and case.outcome is Outcome.KEPT
            assert case.refunded_amount == 0.0
            break
        keeping = kind == "refund_issued" and resolution != "refund"
        if (not received or keeping) and round(goodwill + amount, 2) <= cap:
            assert changes == ["goodwill"] and case.return_open()
            goodwill = round(goodwill + amount, 2)
            continue
        assert changes == ["outcome", "closed"]
        cash = kind == "refund_issued"
        assert case.outcome is (Outcome.REFUND if cash else Outcome.STORE_CREDIT)
        assert case.refunded_amount == (amount if cash else 0.0)
        break
    assert round(case.goodwill_refunded + case.goodwill_credit, 2) == goodwill
