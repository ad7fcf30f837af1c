"""Pre-orders: a parcel promised months after the order. The hard TTL (``HARD_TTL_US``, 120 days)
runs from the promise (the later of placement and promise), not from the placement: before, a
pre-order promised 100 days out and delivered on time closed as ``kept`` 20 days into its return
window, and its return became an ``unknown_order`` dead letter (its refund too: money missing
from the KPIs); a silent pre-order closed as ``undelivered`` 20 days after its promise."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from salvage.connectors.events import EVENT_ADAPTER
from salvage.features.eventtime import END, to_us
from salvage.features.order_case import HARD_TTL_US
from salvage.flows.messages import Event, Tick
from salvage.flows.stages import CaseStage, StageConfig
from tests.helpers import event, order_placed

SRC = "src"
PLACED = datetime(2026, 1, 5, 10, tzinfo=UTC)


def _at(days: float) -> str:
    return (PLACED + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(docs: list[dict]) -> tuple[list, list]:
    """The case stage on ``docs`` to the end of input: (the views it sent on, in order, and its
    dead letters)."""
    cfg = StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=(SRC,))
    stage = CaseStage(0, cfg)
    items = []
    for d in docs:
        ev = EVENT_ADAPTER.validate_json(json.dumps(d))
        items.append(Event(to_us(ev.occurred_at), ev.event_id, ev))
    out = stage.on_batch([*items, Tick(SRC, END, items[-1].t)])
    views = [item[2] for r, p in out if r == "ctx" for item in p[1].items]
    dead = [p for r, p in out if r == "dlq"]
    return views, dead


def _preorder(oid: str = "p1") -> list[dict]:
    return [
        order_placed(oid, _at(0), promised=_at(100), price=120.0),
        event(f"{oid}-s", "order_shipped", oid, _at(96), courier="dhl"),
        event(f"{oid}-d", "carrier_scan", oid, _at(99), scan="delivered", courier="dhl"),
    ]


def test_a_pre_orders_return_in_its_window_is_its_own() -> None:
    """Delivered on day 99 (promised for day 100), returned on day 125 (26 days after delivery,
    inside the 30-day window), refunded on day 135: a refund case, no dead letter."""
    docs = [
        *_preorder(),
        event(
            "p1-req",
            "return_requested",
            "p1",
            _at(125),
            return_id="R1",
            reason="too_small",
            items=[{"sku": "sku-1", "qty": 1}],
            preferred_resolution="refund",
        ),
        event(
            "p1-f", "refund_issued", "p1", _at(135), amount=120.0, currency="EUR", return_id="R1"
        ),
    ]
    views, dead = _run(docs)
    assert dead == []
    closing = [v for v in views if v.status == "closed"]
    assert [(v.outcome, v.refunded_amount, v.t) for v in closing] == [
        ("refund", 120.0, to_us(datetime.fromisoformat(_at(135))))
    ]
    assert "return_requested" in [c for v in views for c in v.changes]


def test_a_silent_pre_order_is_undelivered_a_ttl_after_its_promise() -> None:
    """Never delivered: still open on day 219 (placement + 120 days has passed), closed as
    undelivered at its promise + 120 days (day 220), when later events bring time there."""
    placed = [order_placed("p2", _at(0), promised=_at(100), price=60.0)]
    other = [  # another order's events move event time on
        order_placed("o9", _at(day), promised=_at(day + 3)) | {"event_id": f"o9-{day}"}
        for day in (219,)
    ]
    views, dead = _run([*placed, *other])
    assert dead == [] and not [v for v in views if v.order_id == "p2" and v.status == "closed"]
    later = order_placed("o8", _at(221), promised=_at(224), price=50.0)
    views, dead = _run([*placed, *other, later])
    closing = [v for v in views if v.order_id == "p2" and v.status == "closed"]
    ttl = to_us(datetime.fromisoformat(_at(100))) + HARD_TTL_US
    assert [(v.outcome, v.t) for v in closing] == [("undelivered", ttl)]
    assert dead == []
