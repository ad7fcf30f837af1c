import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import EVENT_ADAPTER
from salvage.features.eventtime import DAY_US, HOUR_US, PartitionClock, Reorderer, to_us
from salvage.features.order_case import OrderCase, Outcome, Status
from tests.helpers import event, order_placed

WINDOW = 30 * DAY_US


def _ev(doc):
    return EVENT_ADAPTER.validate_json(json.dumps(doc))


def story(order_id: str = "o1") -> list:
    """A delayed order, a WISMO contact, a size return, then an exchange."""
    docs = [
        order_placed(order_id, "2026-03-02T10:00:00Z", price=120.0, cost=40.0, qty=2),
        event(
            "s1",
            "carrier_scan",
            order_id,
            "2026-03-03T08:00:00Z",
            scan="picked_up",
            courier="dhl",
            estimated_delivery_at="2026-03-04T18:00:00Z",
        ),
        event(
            "s2",
            "carrier_scan",
            order_id,
            "2026-03-04T09:00:00Z",
            scan="delayed",
            courier="dhl",
            estimated_delivery_at="2026-03-06T18:00:00Z",
        ),
        event(
            "c1",
            "support_contact",
            order_id,
            "2026-03-04T12:00:00Z",
            channel="chat",
            intent="where_is_my_order",
            urgency="high",
            sentiment=-0.6,
        ),
        event(
            "s3", "carrier_scan", order_id, "2026-03-06T15:00:00Z", scan="delivered", courier="dhl"
        ),
        event(
            "c2",
            "support_contact",
            order_id,
            "2026-03-07T09:00:00Z",
            channel="email",
            intent="sizing_question",
        ),
        event(
            "r1",
            "return_requested",
            order_id,
            "2026-03-08T10:00:00Z",
            return_id="R1",
            reason="too_small",
            items=[{"sku": "sku-1", "qty": 1}],
            preferred_resolution="exchange",
        ),
        event(
            "r2",
            "return_label_issued",
            order_id,
            "2026-03-08T10:05:00Z",
            return_id="R1",
            courier="dhl",
            label_cost=6.5,
        ),
        event("r3", "return_received", order_id, "2026-03-11T10:00:00Z", return_id="R1"),
        event(
            "r4",
            "return_graded",
            order_id,
            "2026-03-11T16:00:00Z",
            return_id="R1",
            grade="A",
            abuse_flags=[],
        ),
        event("r5", "exchange_completed", order_id, "2026-03-12T10:00:00Z", return_id="R1"),
    ]
    return [_ev(d) for d in docs]


def apply_all(events) -> OrderCase:
    case = OrderCase(events[0].order_id)
    for ev in events:
        case.apply(ev, to_us(ev.occurred_at), WINDOW)
    return case


def test_features_follow_the_story():
    evs = story()
    case = OrderCase("o1")
    snapshots = {}
    for ev in evs:
        t = to_us(ev.occurred_at)
        case.apply(ev, t, WINDOW)
        snapshots[ev.event_id] = case.features(t)
    placed = snapshots["o1-placed"]
    assert placed["order_value"] == 240.0 and placed["margin"] == 160.0
    assert placed["slippage_hours"] == 0.0
    delayed = snapshots["s2"]
    assert delayed["delayed_scans"] == 1.0
    assert delayed["slippage_hours"] == 48.0  # ETA moved two days past the promise
    wismo = snapshots["c1"]
    assert wismo["wismo_7d"] == 1.0 and wismo["contacts_24h"] == 1.0
    assert wismo["urgent_contacts_7d"] == 1.0 and wismo["mean_sentiment_7d"] == -0.6
    delivered = snapshots["s3"]
    assert delivered["delivered"] == 1.0
    assert delivered["slippage_hours"] == 45.0  # delivered 45 h after the promise
    ret = snapshots["r1"]
    assert ret["return_requested"] == 1.0 and ret["reason_fit"] == 1.0
    assert ret["prefers_exchange"] == 1.0 and ret["return_share"] == 0.5
    assert case.status is Status.CLOSED and case.outcome is Outcome.EXCHANGE
    assert case.label_cost == 6.5 and case.grade == "A"


def test_contacts_age_out_of_rolling_windows():
    evs = story()
    case = apply_all(evs[:4])
    t = to_us(evs[3].occurred_at)
    assert case.features(t + 23 * HOUR_US)["contacts_24h"] == 1.0
    assert case.features(t + 25 * HOUR_US)["contacts_24h"] == 0.0
    assert case.features(t + 8 * DAY_US)["wismo_7d"] == 0.0


def test_case_closes_when_the_return_window_passes():
    evs = [e for e in story() if not e.event_type.startswith(("return", "exchange"))]
    case = apply_all(evs)
    deadline = case.next_deadline(WINDOW)
    assert deadline == case.delivered_at + WINDOW
    assert case.on_time(deadline, WINDOW) == ["closed"]
    assert case.outcome is Outcome.KEPT


def test_missed_promise_fires_without_any_event():
    case = apply_all(story()[:2])  # placed and picked up, then silence
    deadline = case.next_deadline(WINDOW)
    assert deadline == case.promised_at + 2 * HOUR_US
    assert "promise_missed" in case.on_time(deadline, WINDOW)


def test_a_late_silent_parcel_is_rechecked_then_never_delivered_is_not_kept():
    """Issue 11: after the missed-promise check the case is looked at again at promise + 6 h,
    + 24 h, + 72 h (a case update each, so reassurance can fire at >= 6 h late); an order never
    delivered closes as ``undelivered`` at the hard TTL, not ``kept``."""
    case = apply_all(story()[:2])  # placed and picked up, then silence
    promise = case.promised_at
    fired = []
    while (deadline := case.next_deadline(WINDOW)) and case.status is Status.OPEN:
        changes = case.on_time(deadline, WINDOW)
        fired.append(((deadline - promise) / HOUR_US, changes[0]))
        if len(fired) > 10:
            break
    assert [h for h, _ in fired[:4]] == [2.0, 6.0, 24.0, 72.0]
    assert [c for _, c in fired[:4]] == ["promise_missed"] + ["promise_recheck"] * 3
    assert case.features(promise + 6 * HOUR_US)["slippage_hours"] == 6.0
    assert fired[-1][1] == "closed" and len(fired) == 5
    assert case.outcome is Outcome.UNDELIVERED


def test_rechecks_follow_the_configuration_and_stop_at_delivery():
    case = apply_all(story()[:2])
    promise = case.promised_at
    rechecks = (12 * HOUR_US,)
    assert case.next_deadline(WINDOW, rechecks=rechecks) == promise + 2 * HOUR_US
    case.on_time(promise + 2 * HOUR_US, WINDOW, rechecks)
    assert case.next_deadline(WINDOW, rechecks=rechecks) == promise + 12 * HOUR_US
    # a jump past several checkpoints fires once and consumes them all
    assert case.on_time(promise + 5 * DAY_US, WINDOW, rechecks)[0] == "promise_recheck"
    # then only the hard TTL, 120 days after the promise (later than the placement)
    assert case.next_deadline(WINDOW, rechecks=rechecks) == promise + 120 * DAY_US
    delivered = _ev(
        event(
            "d",
            "carrier_scan",
            case.order_id,
            "2026-03-20T10:00:00Z",
            scan="delivered",
            courier="dhl",
        )
    )
    case.apply(delivered, to_us(delivered.occurred_at), WINDOW)
    assert case.next_deadline(WINDOW) == case.delivered_at + WINDOW  # no more re-checks
    case.on_time(case.delivered_at + WINDOW, WINDOW)
    assert case.outcome is Outcome.KEPT


def test_refund_closes_as_lost_and_cancel_before_shipping_closes():
    o = _ev(order_placed("o2", "2026-03-02T10:00:00Z"))
    case = OrderCase("o2")
    case.apply(o, to_us(o.occurred_at), WINDOW)
    c = _ev(event("x", "order_cancelled", "o2", "2026-03-02T11:00:00Z"))
    case.apply(c, to_us(c.occurred_at), WINDOW)
    assert case.outcome is Outcome.CANCELLED
    case = OrderCase("o3")
    o3 = _ev(order_placed("o3", "2026-03-02T10:00:00Z"))
    case.apply(o3, to_us(o3.occurred_at), WINDOW)
    r = _ev(event("rf", "refund_issued", "o3", "2026-03-20T10:00:00Z", amount=80.0, currency="EUR"))
    case.apply(r, to_us(r.occurred_at), WINDOW)
    assert case.outcome is Outcome.REFUND and case.refunded_amount == 80.0


def _return_requested(event_id: str, order_id: str, at: str, return_id: str) -> dict:
    return event(
        event_id,
        "return_requested",
        order_id,
        at,
        return_id=return_id,
        reason="too_small",
        items=[{"sku": "sku-1", "qty": 1}],
        preferred_resolution="refund",
    )


def test_a_return_requested_after_a_cancelled_one_opens_the_return_again():
    """Cancelled, then asked for again: the second return is open (decisions, journey alerts, no
    close as kept or cancelled while it is pending) and its refund closes the case."""
    docs = [
        order_placed("o4", "2026-03-02T10:00:00Z"),
        event("d", "carrier_scan", "o4", "2026-03-04T10:00:00Z", scan="delivered", courier="dhl"),
        _return_requested("r1", "o4", "2026-03-05T10:00:00Z", "R1"),
        event("x1", "return_cancelled", "o4", "2026-03-06T10:00:00Z", return_id="R1"),
    ]
    case = apply_all([_ev(d) for d in docs])
    assert case.outcome is Outcome.RETURN_CANCELLED and not case.return_open()
    again = _ev(_return_requested("r2", "o4", "2026-03-10T10:00:00Z", "R2"))
    t = to_us(again.occurred_at)
    case.apply(again, t, WINDOW)
    assert case.return_open() and case.outcome is None and case.status is Status.OPEN
    assert case.return_requested_at == t and case.return_id == "R2" and not case.resolved_at
    received = _ev(event("r3", "return_received", "o4", "2026-03-12T10:00:00Z", return_id="R2"))
    case.apply(received, to_us(received.occurred_at), WINDOW)
    late = _ev(  # past delivery + the return window: still open, the return is pending
        event("t", "carrier_scan", "o4", "2026-04-20T10:00:00Z", scan="in_transit", courier="dhl")
    )
    case.apply(late, to_us(late.occurred_at), WINDOW)
    assert case.status is Status.OPEN
    refund = _ev(
        event("rf", "refund_issued", "o4", "2026-04-21T10:00:00Z", amount=80.0, currency="EUR")
    )
    case.apply(refund, to_us(refund.occurred_at), WINDOW)
    assert case.outcome is Outcome.REFUND and case.status is Status.CLOSED


def test_bracketing_is_seen_in_the_order_lines():
    lines = [
        {
            "sku": f"sku-{s}",
            "sku_family": "apparel_bottoms",
            "qty": 1,
            "unit_price": 60.0,
            "unit_cost": 20.0,
            "size": s,
        }
        for s in ("S", "M", "L")
    ]
    o = _ev(order_placed("o4", "2026-03-02T10:00:00Z", lines=lines))
    case = OrderCase("o4")
    case.apply(o, to_us(o.occurred_at), WINDOW)
    assert case.bracketing_lines == 2


def _final_via_reorder(events, tol_us: int) -> OrderCase:
    clock = PartitionClock(tol_us, 10**15)
    r = Reorderer(["p"])
    for ev in events:
        eff = clock.observe(to_us(ev.occurred_at))
        r.push(eff, ev.event_id, ev)
    r.tick("p", 2**62)
    case = OrderCase(events[0].order_id)
    for t, _, ev in r.release():
        case.apply(ev, t, WINDOW)
    return case


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False))
def test_any_arrival_order_within_tolerance_gives_the_same_case(rng: random.Random):
    tol = 6 * HOUR_US
    evs = story()
    expected = apply_all(evs)
    jittered = sorted(evs, key=lambda e: to_us(e.occurred_at) + rng.randrange(tol))
    got = _final_via_reorder(jittered, tol)
    assert got == expected


def test_duplicates_are_recognised():
    evs = story()
    case = apply_all(evs[:3])
    assert case.is_duplicate(evs[1].event_id)
    assert not case.is_duplicate("never-seen")


def test_dedupe_remembers_the_last_ids_not_the_first():
    """A long-lived case (many scans) still recognises a redelivered recent event."""
    from salvage.features.order_case import MAX_SEEN_IDS

    evs = story()
    case = apply_all(evs[:1])
    placed = evs[0]
    for i in range(MAX_SEEN_IDS + 44):
        scan = _ev(
            event(
                f"scan-{i}",
                "carrier_scan",
                "o1",
                "2026-03-03T10:00:00Z",
                scan="in_transit",
                courier="dhl",
            )
        )
        case.apply(scan, to_us(scan.occurred_at), WINDOW)
    assert case.is_duplicate(f"scan-{MAX_SEEN_IDS + 43}")  # the newest is remembered
    assert case.is_duplicate("scan-50")
    assert not case.is_duplicate(placed.event_id)  # the oldest were forgotten, in order
    assert not case.is_duplicate("scan-42")
    assert len(case.seen) == MAX_SEEN_IDS


def test_the_first_verdict_and_the_first_grade_are_the_label_times():
    """The abuse model's leakage cut reads these facts: a second verdict or a re-grade must not
    move them later (a snapshot between the two would then teach the label it saw)."""
    evs = story()
    case = apply_all(evs)
    graded = case.graded_at
    assert graded and case.facts()["reviewed_at"] == 0
    times = []
    for day, verdict in ((21, "approve"), (25, "abuse_confirmed")):
        at = f"2026-03-{day}T10:00:00Z"
        review = _ev(
            event(f"rv-{day}", "review_resolved", "o1", at, review_id="r1", verdict=verdict)
        )
        times.append(to_us(review.occurred_at))
        case.apply(review, times[-1], WINDOW)
    facts = case.facts()
    assert facts["reviewed_at"] == times[0]
    assert facts["review_verdict"] == "abuse_confirmed"  # the latest verdict is the case's
    regrade = next(e for e in evs if e.event_type == "return_graded")
    case.apply(regrade, graded + HOUR_US, WINDOW)
    assert case.graded_at == graded


def test_the_return_fields_live_in_a_return_state_allocated_by_the_first_of_them():
    from salvage.features.order_case import NO_RETURN, RETURN_FIELDS
    from salvage.flows.state import CASE

    case = OrderCase("o1")
    assert case.ret is None  # most open cases: no ReturnState (~160 B each)
    assert {n: getattr(case, n) for n in RETURN_FIELDS} == {
        n: getattr(NO_RETURN, n) for n in RETURN_FIELDS
    }
    case.refunded_amount = 0.0  # a default value allocates nothing
    assert case.ret is None
    case.return_requested_at = 5
    assert case.ret is not None and case.return_requested_at == case.ret.return_requested_at == 5
    assert OrderCase.of("o1", return_requested_at=5) == case
    # recovery state: the same values in the same order as when they were fields of the case
    assert CASE.names == (
        *("order_id", "customer_id", "placed_at", "currency", "order_value", "margin", "n_units"),
        *("n_lines", "sku_family", "bracketing_lines", "campaign", "channel", "courier", "lane"),
        *("promised_at", "shipped_at", "last_scan_at", "last_scan", "carrier_eta"),
        *("delivered_at", "exception_count", "delayed_scan_count", "lost", "returned_to_sender"),
        *("promise_checks", "contacts", "contacts_total", "contacts_after_delivery"),
        *("wismo_after_delivered", "return_id", "return_requested_at", "return_reason"),
        *("preferred_resolution", "return_units", "return_value", "label_issued_at"),
        *("label_cost", "received_at", "graded_at", "grade", "abuse_flags", "refunded_amount"),
        *("refund_at", "review_verdict", "reviewed_at", "resolved_at", "journey_rank"),
        *("journey_sent", "journey_alerted", "other_returns", "other_flags", "other_closed"),
        *("goodwill_refunded", "goodwill_credit", "refunded_other"),
        *("status", "outcome", "closed_at", "events"),
        *("last_event_at", "seen", "digests", "has_order", "lane_noted"),
    )
    for c in (case, OrderCase("o2")):
        assert CASE.decoder(None)(CASE.encode(c)) == c
    # lane_noted (compare=False) is kept; state written before it existed reads False
    case.lane_noted = True
    assert CASE.decoder(None)(CASE.encode(case)).lane_noted is True
    before = CASE.names[:-1]
    assert CASE.decoder(before)(CASE.encode(case)[:-1]).lane_noted is False
    assert CASE.decoder(None)(CASE.encode(OrderCase("o2"))).ret is None


def test_the_carrier_given_at_shipping_sets_the_lane():
    """An order placed with a service level as its courier ("standard") and shipped with a
    carrier: the case's lane is the carrier's (a helper's independent brand: every lane alert was
    attributed to "standard", and a spike on one of two carriers sharing a route never alerted)."""
    case = OrderCase("o1")
    placed = order_placed("o1", "2026-03-02T10:00:00Z", courier="standard")
    case.apply(_ev(placed), to_us(_ev(placed).occurred_at), WINDOW)
    assert (case.courier, case.lane) == ("standard", "standard:DE>FR")
    case.lane_noted = True  # (the monitor heard of the placement's lane)
    shipped = _ev(event("s1", "order_shipped", "o1", "2026-03-02T18:00:00Z", courier="mailhaus"))
    case.apply(shipped, to_us(shipped.occurred_at), WINDOW)
    assert (case.courier, case.lane, case.lane_noted) == ("mailhaus", "mailhaus:DE>FR", False)
    again = _ev(event("s2", "order_shipped", "o1", "2026-03-02T19:00:00Z", courier="mailhaus"))
    case.apply(again, to_us(again.occurred_at), WINDOW)
    assert case.lane == "mailhaus:DE>FR"


def test_a_promise_at_midnight_is_a_date_delivered_any_time_that_day():
    """A brand that promises days sends "2026-03-04T00:00:00Z": a parcel delivered that
    afternoon is on time, and the first promise check is after the end of that day (before, it
    was at 02:00 that morning, and on-time parcels were told "running late")."""
    case = OrderCase("o1")
    placed = _ev(order_placed("o1", "2026-03-02T10:00:00Z", promised="2026-03-04T00:00:00Z"))
    case.apply(placed, to_us(placed.occurred_at), WINDOW)
    assert case.promised_at == to_us(placed.promised_delivery_at) + DAY_US
    assert case.next_deadline(WINDOW) == case.promised_at + 2 * HOUR_US
    morning = _ev(event("s1", "carrier_scan", "o1", "2026-03-04T07:00:00Z", scan="in_transit",
                        courier="dhl"))  # fmt: skip
    case.apply(morning, to_us(morning.occurred_at), WINDOW)
    assert case.features(to_us(morning.occurred_at))["slippage_hours"] == 0.0
    exact = _ev(order_placed("o2", "2026-03-02T10:00:00Z", promised="2026-03-04T18:00:00Z"))
    other = OrderCase("o2")
    other.apply(exact, to_us(exact.occurred_at), WINDOW)
    assert other.promised_at == to_us(exact.promised_delivery_at)
