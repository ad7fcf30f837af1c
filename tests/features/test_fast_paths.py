"""The case stage's fast paths agree with their plain references (issue 15): features(),
core_deadline() and journey.deadline() against the straightforward versions they replaced, and
the generated CaseView constructor against CaseView itself."""

from __future__ import annotations

from dataclasses import fields

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.features import journey
from salvage.features.eventtime import DAY_US, HOUR_US
from salvage.features.order_case import (
    DELAY_INTENTS,
    FIT_INTENTS,
    HARD_TTL_US,
    PROMISE_GRACE_US,
    PROMISE_RECHECKS_US,
    REFUND_INTENTS,
    OrderCase,
    Outcome,
    Status,
)
from salvage.flows.messages import CaseView
from salvage.flows.stages.case import _case_view

T0 = 1_772_000_000_000_000
times = st.one_of(st.just(0), st.integers(T0 - 10 * DAY_US, T0 + 200 * DAY_US))
intents = st.sampled_from(
    sorted(DELAY_INTENTS | REFUND_INTENTS | FIT_INTENTS | {"other", "billing"})
)
reasons = st.sampled_from(
    [
        "",
        "too_small",
        "too_large",
        "arrived_late",
        "damaged",
        "wrong_item",
        "not_received",
        "changed_mind",
        "quality",
        "other",
    ]
)


@st.composite
def cases(draw) -> OrderCase:
    contacts = draw(
        st.lists(
            st.tuples(times, intents, st.booleans(), st.floats(-1, 1, allow_nan=False)),
            max_size=6,
        )
    )
    return OrderCase.of(
        "o1",
        customer_id="c1",
        placed_at=draw(times),
        order_value=draw(st.sampled_from([0.0, 19.99, 80.0, 1234.5])),
        margin=draw(st.sampled_from([0.0, 5.5, 50.0])),
        n_units=draw(st.integers(0, 5)),
        bracketing_lines=draw(st.integers(0, 3)),
        promised_at=draw(times),
        last_scan_at=draw(times),
        carrier_eta=draw(times),
        delivered_at=draw(times),
        exception_count=draw(st.integers(0, 3)),
        delayed_scan_count=draw(st.integers(0, 3)),
        lost=draw(st.booleans()),
        promise_checks=draw(st.integers(0, 5)),
        contacts=contacts,
        wismo_after_delivered=draw(st.integers(0, 2)),
        return_requested_at=draw(times),
        return_reason=draw(reasons),
        preferred_resolution=draw(st.sampled_from(["", "refund", "exchange", "store_credit"])),
        return_units=draw(st.integers(0, 5)),
        received_at=draw(times),
        graded_at=draw(times),
        journey_alerted=draw(st.integers(0, 7)),
        status=draw(st.sampled_from(list(Status))),
        outcome=draw(st.one_of(st.none(), st.sampled_from(list(Outcome)))),
    )


def reference_features(case: OrderCase, now: int) -> dict[str, float]:
    """features() as it was written before the fast path (the reference)."""
    c24 = c7d = wismo7 = refund7 = fit7 = high7 = 0
    sentiment_sum = 0.0
    for t, intent, high, sentiment in case.contacts:
        if t > now:
            continue
        age = now - t
        if age <= 7 * DAY_US:
            c7d += 1
            sentiment_sum += sentiment
            if intent in DELAY_INTENTS:
                wismo7 += 1
            if intent in REFUND_INTENTS:
                refund7 += 1
            if intent in FIT_INTENTS:
                fit7 += 1
            if high:
                high7 += 1
            if age <= DAY_US:
                c24 += 1
    delivered = bool(case.delivered_at)
    days_since_delivery = (now - case.delivered_at) / DAY_US if delivered else 0.0
    return {
        "order_value": case.order_value,
        "margin": case.margin,
        "margin_rate": case.margin / case.order_value if case.order_value else 0.0,
        "units": float(case.n_units),
        "bracketing_lines": float(case.bracketing_lines),
        "slippage_hours": case.slippage_hours(now),
        "exception_count": float(case.exception_count),
        "delayed_scans": float(case.delayed_scan_count),
        "lost": float(case.lost),
        "hours_since_last_scan": (now - case.last_scan_at) / HOUR_US
        if case.last_scan_at and not delivered
        else 0.0,
        "delivered": float(delivered),
        "days_since_delivery": days_since_delivery,
        "contacts_24h": float(c24),
        "contacts_7d": float(c7d),
        "wismo_7d": float(wismo7),
        "refund_intent_7d": float(refund7),
        "fit_intent_7d": float(fit7),
        "urgent_contacts_7d": float(high7),
        "mean_sentiment_7d": sentiment_sum / c7d if c7d else 0.0,
        "last_contact_sentiment": case.contacts[-1][3] if case.contacts else 0.0,
        "wismo_after_delivered": float(case.wismo_after_delivered),
        "return_requested": float(bool(case.return_requested_at)),
        "return_share": case.return_units / case.n_units if case.n_units else 0.0,
        "prefers_exchange": float(case.preferred_resolution == "exchange"),
        "prefers_refund": float(case.preferred_resolution == "refund"),
        "reason_fit": float(case.return_reason in ("too_small", "too_large")),
        "reason_late": float(case.return_reason == "arrived_late"),
        "reason_damaged": float(case.return_reason in ("damaged", "wrong_item")),
        "reason_not_received": float(case.return_reason == "not_received"),
        "reason_changed_mind": float(case.return_reason in ("changed_mind", "quality")),
    }


def reference_core_deadline(case: OrderCase, window: int, rechecks: tuple[int, ...]) -> int:
    if case.status is Status.CLOSED:
        return 0
    anchor = max(case.placed_at, case.promised_at)  # the TTL runs from when it was due
    candidates = [anchor + HARD_TTL_US] if case.placed_at else []
    if case.promised_at and not case.delivered_at:
        k = case.promise_checks
        offsets = [o for o in rechecks if o > PROMISE_GRACE_US]
        if k == 0:
            check = case.promised_at + PROMISE_GRACE_US
        else:
            check = case.promised_at + offsets[k - 1] if k - 1 < len(offsets) else 0
        if check:
            candidates.append(check)
    if case.delivered_at and not case.return_open():
        candidates.append(case.delivered_at + window)
    return min(candidates) if candidates else 0


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal keys in the same order, and values of the same type and bits."""
    return list(a) == list(b) and all(
        type(a[k]) is type(b[k]) and repr(a[k]) == repr(b[k]) for k in a
    )


@settings(max_examples=400, deadline=None)
@given(case=cases(), now=times)
def test_features_agree_with_the_reference(case: OrderCase, now: int) -> None:
    assert same(case.features(now), reference_features(case, now))


@settings(max_examples=400, deadline=None)
@given(
    case=cases(),
    window=st.sampled_from([0, 14 * DAY_US, 30 * DAY_US]),
    rechecks=st.sampled_from([PROMISE_RECHECKS_US, (), (HOUR_US, 12 * HOUR_US)]),
)
def test_deadlines_agree_with_the_reference(
    case: OrderCase, window: int, rechecks: tuple[int, ...]
) -> None:
    assert case.core_deadline(window, rechecks) == reference_core_deadline(case, window, rechecks)
    cfg = journey.JourneyConfig()
    due = journey._due(case, cfg)
    assert journey.deadline(case, cfg) == (min(d for d, _, _ in due) if due else 0)
    for alerts in (frozenset(), frozenset([journey.JourneyAlertKind.REFUND_OVERDUE])):
        cfg = journey.JourneyConfig(alerts=alerts)
        due = journey._due(case, cfg)
        assert journey.deadline(case, cfg) == (min(d for d, _, _ in due) if due else 0)


def test_the_generated_case_view_constructor_makes_the_same_view() -> None:
    values = [
        "o1",
        "c1",
        5,
        "e1",
        ("scan",),
        {"a": 1.0},
        "open",
        None,
        "dhl:DE>FR",
        "none",
        "tops",
        "EUR",
        80.0,
        0.0,
        False,
        (),
        None,
        "",
        0.0,
        0,
    ]
    assert len(values) == len(fields(CaseView))
    made, reference = _case_view(*values), CaseView(*values)
    assert type(made) is CaseView
    assert made == reference and repr(made) == repr(reference)


def test_observe_skips_only_changes_it_has_no_branch_for() -> None:
    """CustomerContext.observe returns early when no change is in ``_OBSERVED``: that set must be
    exactly the change codes its loop has a branch for (read from its source), or an update
    would be skipped that the loop folds in."""
    import inspect
    import re

    from salvage.features import customer

    source = inspect.getsource(customer.CustomerContext.observe)
    handled = set(re.findall(r'change == "([a-z_]+)"', source))
    assert handled == customer._OBSERVED
    ctx = customer.CustomerContext("c1")
    view = type("View", (), {"order_value": 80.0})()
    ctx.observe(5, ("scan", "delay_signal"), view)  # nothing to fold: first and last seen only
    assert (ctx.first_seen, ctx.last_seen, ctx.orders, ctx.spend) == (5, 5, 0, 0.0)
    ctx.observe(7, ("scan", "placed"), view)  # one handled code among others is folded
    assert (ctx.last_seen, ctx.orders, ctx.spend) == (7, 1, 80.0)
