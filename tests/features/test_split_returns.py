"""Two returns of one order (a customer sending back units of one order in two parcels): the case
follows its first return, the other one adds its units, label cost and abuse flags, and the
first settlement of either closes the case under that return's id."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import EVENT_ADAPTER
from salvage.features import journey
from salvage.features.eventtime import DAY_US, HOUR_US, iso, to_us
from salvage.features.order_case import OrderCase, Outcome, Status
from tests.helpers import event, order_placed

WINDOW = 30 * DAY_US
T0 = to_us(datetime(2026, 3, 2, 10, tzinfo=UTC))  # the order's placement


def _at(hours: float) -> str:
    """An ISO time ``hours`` after delivery (2026-03-04 10:00)."""
    return iso(T0 + 2 * DAY_US + int(hours * HOUR_US))


def _apply(case: OrderCase, doc: dict) -> list[str]:
    ev = EVENT_ADAPTER.validate_json(json.dumps(doc))
    return case.apply(ev, to_us(ev.occurred_at), WINDOW)


def _delivered(units: int = 3) -> OrderCase:
    case = OrderCase("o1")
    _apply(case, order_placed("o1", "2026-03-02T10:00:00Z", price=40.0, qty=units))
    _apply(case, event("d1", "carrier_scan", "o1", _at(0), scan="delivered", courier="dhl"))
    return case


def _request(rid: str, hours: float, qty: int) -> dict:
    return event(
        f"{rid}-req",
        "return_requested",
        "o1",
        _at(hours),
        return_id=rid,
        reason="too_small",
        items=[{"sku": "sku-1", "qty": qty}],
        preferred_resolution="refund",
    )


def _step(rid: str, kind: str, hours: float, **fields) -> dict:
    return event(f"{rid}-{kind}", kind, "o1", _at(hours), return_id=rid, **fields)


def _refund(rid: str, hours: float, amount: float) -> dict:
    return _step(rid, "refund_issued", hours, amount=amount, currency="EUR")


def test_a_second_return_adds_to_the_first_and_the_first_settlement_closes_the_case() -> None:
    case = _delivered(3)
    assert _apply(case, _request("R1", 10, 1)) == ["return_requested"]
    assert (case.return_units, case.return_value) == (1, 40.0)
    assert _apply(case, _step("R1", "return_label_issued", 11, courier="dhl", label_cost=4.5))
    assert _apply(case, _step("R1", "return_received", 40))
    received = case.received_at
    # the second parcel: its units and value add up, the case keeps following R1
    assert _apply(case, _request("R2", 50, 2)) == ["return_requested", "other_return"]
    assert (case.return_id, case.return_units, case.return_value) == ("R1", 3, 120.0)
    assert case.other_returns == (("R2", 2, "too_small", "refund"),)
    assert case.return_reason == "too_small" and case.return_open()
    # its label costs money too; its receipt does not move R1's
    _apply(case, _step("R2", "return_label_issued", 51, courier="dhl", label_cost=5.0))
    assert case.label_cost == 9.5
    assert _apply(case, _step("R2", "return_received", 70)) == []
    assert case.received_at == received
    # its grade's abuse flags count (an R1 grade without flags does not clear them)
    graded = _step("R2", "return_graded", 71, grade="refurbish", abuse_flags=["worn"])
    assert _apply(case, graded) == ["graded"]
    assert case.abuse_flags == ("worn",) and case.grade == ""
    clean = _step("R1", "return_graded", 72, grade="A", abuse_flags=[])
    assert _apply(case, clean) == ["graded", "clean_grade"]  # (no abuse flag of its own)
    assert case.abuse_flags == ("worn",) and case.grade == "A"
    # R1's refund settles the case; R2 stays what a settled case hears later
    assert _apply(case, _refund("R1", 80, 40.0)) == ["outcome", "closed"]
    assert (case.status, case.outcome, case.return_id) == (Status.CLOSED, Outcome.REFUND, "R1")
    assert case.refunded_amount == 40.0


def test_the_other_return_settling_first_closes_the_case_under_its_id() -> None:
    """... with its reason and resolution; the first return is then the other one."""
    case = _delivered(3)
    _apply(case, _request("R1", 10, 1))
    second = {**_request("R2", 12, 2), "reason": "damaged", "preferred_resolution": "exchange"}
    _apply(case, second)
    assert _apply(case, _step("R2", "exchange_completed", 60)) == ["outcome", "closed"]
    assert (case.outcome, case.return_id, case.return_reason) == (Outcome.EXCHANGE, "R2", "damaged")
    assert case.preferred_resolution == "exchange" and case.return_units == 3
    assert case.other_returns == (("R1", 1, "too_small", "refund"),)


def test_cancelling_the_other_return_takes_its_units_back() -> None:
    """... exactly (the units are not capped at the order's, so nothing is lost on the way back),
    and its later events change nothing (a second cancellation does not cancel the first)."""
    case = _delivered(2)
    _apply(case, _request("R1", 10, 2))
    _apply(case, _request("R2", 12, 1))
    assert (case.return_units, case.return_value) == (3, 80.0)  # the value is capped
    _apply(case, _step("R2", "return_cancelled", 20))
    assert (case.return_units, case.return_value, case.other_returns) == (2, 80.0, ())
    assert case.return_open() and case.outcome is None
    assert _apply(case, {**_step("R2", "return_cancelled", 21), "event_id": "again"}) == []
    assert _apply(case, _step("R2", "return_received", 22)) == [] and not case.received_at
    assert case.return_open() and case.outcome is None


def test_cancelling_the_first_return_hands_the_case_to_the_other() -> None:
    case = _delivered(3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _step("R1", "return_received", 30))
    _apply(case, _request("R2", 40, 2))
    assert _apply(case, _step("R1", "return_cancelled", 41)) == ["return_cancelled"]
    assert (case.return_id, case.return_units, case.other_returns) == ("R2", 2, ())
    assert case.received_at == 0 and case.journey_rank == -1  # R2's journey starts afresh
    assert case.journey_alerted == journey.ALL_ALERTS  # (no alert on progress it did not follow)
    assert case.return_open() and case.outcome is None
    # the return window passes: the case stays open for R2 (not "cancelled, kept")
    late = T0 + 2 * DAY_US + WINDOW + DAY_US
    assert case.next_deadline(WINDOW) != 0 and case.status is Status.OPEN
    case.on_time(late, WINDOW)
    assert case.status is Status.OPEN
    assert _apply(case, _refund("R2", 24 * 35, 80.0)) == ["outcome", "closed"]
    assert (case.outcome, case.return_id, case.refunded_amount) == (Outcome.REFUND, "R2", 80.0)


def test_repeated_requests_count_once_and_keep_the_other_returns_units() -> None:
    case = _delivered(3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _request("R2", 12, 2))
    assert _apply(case, {**_request("R2", 13, 2), "event_id": "R2-req-again"}) == []
    assert case.return_units == 3
    _apply(case, {**_request("R1", 14, 1), "event_id": "R1-req-again"})  # the first one again
    assert case.return_units == 3 and case.other_returns[0][:2] == ("R2", 2)
    _apply(case, _step("R2", "return_cancelled", 15))
    assert case.return_units == 1 and case.return_open()


_LIFE = ("return_label_issued", "return_in_transit", "return_received", "return_graded")
_ENDS = ("refund_issued", "exchange_completed", "store_credit_issued", "return_cancelled")


def _lifecycle(rid: str, qty: int, steps: int, end: str | None) -> list[tuple[str, str, dict]]:
    """One return's events in their order: (return id, event type, fields)."""
    kinds = ["return_requested", *_LIFE[:steps], *([end] if end else [])]
    return [(rid, kind, {"qty": qty} if kind == "return_requested" else {}) for kind in kinds]


def _doc(rid: str, kind: str, fields: dict, i: int) -> dict:
    hours = 10 + 5 * i
    if kind == "return_requested":
        return _request(rid, hours, fields["qty"])
    extra: dict = {}
    if kind == "return_label_issued":
        extra = {"courier": "dhl", "label_cost": 5.0}
    elif kind == "return_graded":
        extra = {"grade": "B", "abuse_flags": ["worn"] if rid == "R2" else []}
    elif kind in ("refund_issued", "store_credit_issued"):
        extra = {"amount": 40.0, "currency": "EUR"}
    return {**_step(rid, kind, hours, **extra), "event_id": f"{rid}-{kind}-{i}"}


@settings(max_examples=300, deadline=None)
@given(
    units=st.integers(2, 5),
    q1=st.integers(1, 3),
    q2=st.integers(1, 3),
    s1=st.sampled_from((0, 1, 2, 3, 4, 4, 4)),  # (graded, most often: R2's flag must stay)
    s2=st.sampled_from((0, 1, 2, 3, 4, 4, 4)),
    e1=st.sampled_from((None, *_ENDS)),
    e2=st.sampled_from((None, *_ENDS)),
    picks=st.lists(st.booleans(), min_size=12, max_size=12),  # True: R1's next event
)
def test_any_interleaving_of_two_returns_keeps_the_case_consistent(
    units, q1, q2, s1, s2, e1, e2, picks
) -> None:
    """Two returns' lifecycles, interleaved at random (each in its own order, R1 requested
    first), on an open delivered case: the case never fails; it closes exactly at the first
    refund / exchange / store credit (with that outcome, under that return's id); while open,
    its return is open unless every requested return was cancelled, its units are those of the
    open returns, and R2's abuse flag (R1 is graded clean) stays once R2 was graded."""
    one, two = _lifecycle("R1", q1, s1, e1), _lifecycle("R2", q2, s2, e2)
    merged = [one.pop(0)]
    for first in picks + [True] * 6:
        src = one if one and (first or not two) else two
        if src:
            merged.append(src.pop(0))
    case = _delivered(units)
    state: dict[str, str] = {}  # return id -> "open" | "cancelled"
    qty = {"R1": q1, "R2": q2}
    worn = False
    for i, (rid, kind, fields) in enumerate(merged):
        settles = kind in _ENDS[:3]
        changes = _apply(case, _doc(rid, kind, fields, i))
        if kind == "return_requested":
            state[rid] = "open"
        elif kind == "return_cancelled":
            state[rid] = "cancelled"
        worn = worn or (kind == "return_graded" and rid == "R2")
        assert ("worn" in case.abuse_flags) == worn
        if settles:
            outcome = {"refund_issued": "refund", "exchange_completed": "exchange"}
            assert "closed" in changes and case.status is Status.CLOSED
            assert case.outcome is Outcome(outcome.get(kind, "store_credit"))
            assert case.return_id == rid
            return  # what follows is a settled case's (flows/stages/case.py)
        assert case.status is Status.OPEN
        assert case.return_open() == ("open" in state.values())
        assert case.return_id in state
        if case.return_open():
            assert case.return_units == sum(qty[r] for r, v in state.items() if v == "open")


def test_a_cancellation_of_a_return_the_case_does_not_know_changes_nothing() -> None:
    case = _delivered(3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _request("R2", 12, 2))
    assert _apply(case, _step("R9", "return_cancelled", 13)) == []
    assert (case.return_id, case.return_units, case.return_open()) == ("R1", 3, True)
    assert _apply(case, _refund("R1", 20, 40.0)) == ["outcome", "closed"]
    assert (case.return_id, case.refunded_amount) == ("R1", 40.0)


def test_a_cancelled_other_return_still_settles_if_money_moves() -> None:
    """A refund of a cancelled other return is not dropped: it settles the case."""
    case = _delivered(3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _request("R2", 12, 2))
    _apply(case, _step("R2", "return_cancelled", 13))
    assert _apply(case, _refund("R2", 20, 80.0)) == ["outcome", "closed"]
    assert (case.return_id, case.refunded_amount, case.outcome) == ("R2", 80.0, Outcome.REFUND)


def test_asking_again_for_a_cancelled_other_return_after_the_first_was_cancelled_reopens() -> None:
    case = _delivered(3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _request("R2", 12, 2))
    _apply(case, _step("R2", "return_cancelled", 13))
    _apply(case, _step("R1", "return_cancelled", 14))
    assert not case.return_open() and case.outcome is Outcome.RETURN_CANCELLED
    assert _apply(case, {**_request("R2", 15, 2), "event_id": "R2-again"}) == ["return_requested"]
    assert (case.return_id, case.return_units, case.return_open()) == ("R2", 2, True)
    assert case.outcome is None and case.other_closed == ()


def test_three_returns_hand_over_in_turn_with_their_units() -> None:
    case = _delivered(6)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _request("R2", 12, 2))
    _apply(case, _request("R3", 14, 3))
    assert case.return_units == 6
    _apply(case, _step("R1", "return_cancelled", 15))
    assert (case.return_id, case.return_units) == ("R2", 5)
    _apply(case, _step("R2", "return_cancelled", 16))
    assert (case.return_id, case.return_units, case.return_open()) == ("R3", 3, True)


def test_other_returns_are_bounded() -> None:
    from salvage.features.order_case import MAX_OTHER_RETURNS

    case = _delivered(3)
    _apply(case, _request("R1", 10, 1))
    for i in range(MAX_OTHER_RETURNS + 5):
        _apply(case, {**_request(f"X{i}", 11, 1), "event_id": f"x{i}"})
    assert len(case.other_returns) == MAX_OTHER_RETURNS
    assert case.return_units == 1 + MAX_OTHER_RETURNS


def test_the_other_returns_survive_the_recovery_codec_as_they_were() -> None:
    """Open and cancelled other returns, and their flags, round-trip through recovery state
    (msgpack) as the same tuples: a restored case equals the original."""
    import msgpack

    from salvage.flows.state import CASE

    case = _delivered(3)
    _apply(case, _request("R1", 10, 1))
    _apply(case, _request("R2", 12, 1))
    _apply(case, _request("R3", 13, 1))
    _apply(case, _step("R2", "return_graded", 14, grade="B", abuse_flags=["worn"]))
    _apply(case, _step("R2", "return_cancelled", 15))
    assert case.other_returns and case.other_closed and case.other_flags
    stored = msgpack.unpackb(msgpack.packb(CASE.encode(case)))
    restored = CASE.decoder(None)(stored)
    assert restored == case
    assert restored.other_closed == (("R2", 1, "too_small", "refund"),)
