"""Probe defect 13: a quantity given as an integral float (``2.0``, ``2e0``), which the published
JSON Schema's ``integer`` accepts, is the quantity (it was a ``wrong_type`` dead letter, and the
whole order with it); other non-integers stay wrong. The fast path leaves integral floats to
pydantic, so both paths agree (tests/connectors/test_parse.py's property tests)."""

from __future__ import annotations

import json

from salvage.connectors.events import OrderPlaced, ReturnRequested
from salvage.connectors.fastparse import parse_fast
from salvage.connectors.outputs import DeadLetter, DeadLetterKind
from salvage.connectors.parse import RawRecord, parse
from tests.helpers import event, line, order_placed


def _both(value: bytes):
    raw = RawRecord("test", 0, 0, value)
    fast, slow = parse(raw), parse(raw, fast=False)
    assert not isinstance(fast, DeadLetter) and not isinstance(slow, DeadLetter), (fast, slow)
    return fast, slow


def test_an_integral_float_quantity_is_the_quantity():
    """Probe defect 13: ``"qty": 2.0`` passed the published schema but was a ``wrong_type``
    dead letter, and the whole order with it. Now it is the quantity 2 (pydantic's path: the
    fast path leaves integral floats to it), with the digest of ``"qty": 2``."""
    doc = order_placed("q1", "2026-10-01T08:00:00Z")
    doc["lines"] = [{**doc["lines"][0], "qty": 2}]
    as_float = line({**doc, "lines": [{**doc["lines"][0], "qty": 2.0}]})
    assert parse_fast(as_float) is None  # left to pydantic
    fast, slow = _both(as_float)
    assert isinstance(fast, OrderPlaced) and fast.lines[0].qty == 2
    assert type(fast.lines[0].qty) is int and slow == fast
    returned = event(
        "q1-req",
        "return_requested",
        "q1",
        "2026-10-05T10:00:00Z",
        return_id="RQ",
        reason="too_small",
        preferred_resolution="refund",
    )
    for qty, expect in ((1.0, 1), (1e3, 1000), ("2e0", 2)):
        value = line({**returned, "items": [{"sku": "S", "qty": 7}]}).replace(
            b'"qty": 7', f'"qty": {qty}'.encode()
        )
        req = parse(RawRecord("test", 0, 0, value))
        assert isinstance(req, ReturnRequested) and req.items[0].qty == expect, value


def test_other_non_integers_stay_wrong():
    doc = order_placed("q1", "2026-10-01T08:00:00Z")
    kinds = {}
    for qty in (2.5, "2", True, 0.0, 1001.0, 1e400):
        text = json.dumps(qty).encode() if qty != 1e400 else b"1e400"
        value = line({**doc, "lines": [{**doc["lines"][0], "qty": 7}]}).replace(
            b'"qty": 7', b'"qty": ' + text
        )
        result = parse(RawRecord("test", 0, 0, value))
        assert isinstance(result, DeadLetter), qty
        kinds[qty] = result.kind
    assert kinds == {
        2.5: DeadLetterKind.WRONG_TYPE,
        "2": DeadLetterKind.WRONG_TYPE,
        True: DeadLetterKind.WRONG_TYPE,
        0.0: DeadLetterKind.INVALID_VALUE,
        1001.0: DeadLetterKind.INVALID_VALUE,
        1e400: DeadLetterKind.WRONG_TYPE,
    }
