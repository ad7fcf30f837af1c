"""The duplicate digest is of an event's content as validated (``content_digest``), not of its
bytes: a re-published event re-serialised (key order, whitespace, escapes, ``+02:00`` for ``Z``,
``10`` for ``10.0``, ``2.0`` for ``2``) has the digest of the original, on the fast path and on
the pydantic path alike; a change of any value changes it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import EVENT_ADAPTER
from salvage.connectors.fastparse import parse_fast
from salvage.connectors.outputs import DeadLetter
from salvage.connectors.parse import RawRecord, content_digest, event_tie, parse
from salvage.connectors.simulator import dumps
from tests.connectors.test_parse import DOCS
from tests.helpers import event, line, order_placed

_TIME_KEYS = ("occurred_at", "promised_delivery_at", "estimated_delivery_at")


def _both(value: bytes):
    """(fast path's event, pydantic's event): both must accept ``value``."""
    raw = RawRecord("test", 0, 0, value)
    fast, slow = parse(raw), parse(raw, fast=False)
    assert not isinstance(fast, DeadLetter) and not isinstance(slow, DeadLetter), (fast, slow)
    return fast, slow


def _same_instant(text: str, offset_minutes: int, fraction: bool) -> str:
    t = datetime.fromisoformat(text).astimezone(timezone(timedelta(minutes=offset_minutes)))
    return t.isoformat(timespec="microseconds" if fraction else "seconds")


@st.composite
def _reserialised(draw: st.DrawFn) -> tuple[dict, bytes]:
    """A valid event, and the same event written another way."""
    doc = json.loads(json.dumps(draw(st.sampled_from(DOCS))))
    copy = json.loads(json.dumps(doc))
    for key in _TIME_KEYS:
        if isinstance(copy.get(key), str) and draw(st.booleans()):
            offset = draw(st.sampled_from([0, 120, -330, 14 * 60 - 1, -(23 * 60 + 59)]))
            copy[key] = _same_instant(copy[key], offset, draw(st.booleans()))
    for target in [copy, *(d for v in copy.values() if isinstance(v, list) for d in v)]:
        if not isinstance(target, dict):
            continue
        for key, value in list(target.items()):
            if key in ("amount", "unit_price", "unit_cost", "label_cost", "sentiment", "qty"):
                if isinstance(value, float) and value.is_integer() and draw(st.booleans()):
                    target[key] = int(value)  # 10 for 10.0
                elif isinstance(value, int) and draw(st.booleans()):
                    target[key] = float(value)  # 10.0 for 10 (a quantity 2.0 for 2)
    if draw(st.booleans()):
        copy["x_unknown"] = draw(st.sampled_from([1, "a", [1, {"b": None}]]))
    keys = draw(st.permutations(sorted(copy)))
    copy = {k: copy[k] for k in keys}
    indent = draw(st.sampled_from([None, 0, 2]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    text = json.dumps(copy, indent=indent, separators=separators, ensure_ascii=True)
    if draw(st.booleans()):
        text = text.replace('"event_id"', '"\\u0065vent_id"')  # an escape: pydantic's path
    return doc, text.encode()


@settings(max_examples=400, deadline=None)
@given(_reserialised())
def test_a_reserialised_event_has_the_digest_of_the_original_on_both_paths(case):
    doc, value = case
    original_fast, original_slow = _both(dumps(doc).encode())
    fast, slow = _both(value)
    digest = content_digest(original_fast)
    assert content_digest(original_slow) == digest
    assert content_digest(fast) == content_digest(slow) == digest
    assert event_tie(fast) == event_tie(original_slow) == f"{doc['event_id']}|v{digest:08x}"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DOCS), st.data())
def test_another_value_is_another_digest(doc, data):
    key = data.draw(st.sampled_from(sorted(k for k in doc if k not in ("event_id", "event_type"))))
    value = doc[key]
    changed = dict(doc)
    if key in _TIME_KEYS and isinstance(value, str):
        changed[key] = (datetime.fromisoformat(value) + timedelta(seconds=1)).isoformat()
    elif key == "lines" or key == "items":
        changed[key] = [{**value[0], "qty": value[0]["qty"] + 1}, *value[1:]]
    elif isinstance(value, float) and not isinstance(value, bool):
        changed[key] = value / 2 if value else 0.5
    elif isinstance(value, str) and key in ("order_id", "customer_id", "return_id", "review_id"):
        changed[key] = value + "x"
    else:
        return  # an enum or a label: not every other value is valid
    before, after = (parse_fast(dumps(d).encode()) for d in (doc, changed))
    assert before is not None and after is not None
    assert content_digest(before) != content_digest(after)


def test_the_probes_reserialised_copies_have_one_digest():
    """The probe's repro: one scan, as published, with its keys reversed and compact, and with
    its time as +02:00: one content, one digest (the raw bytes' crc32s were three)."""
    doc = event("rp-delivered", "carrier_scan", "rp", "2026-10-03T11:00:00Z", scan="delivered") | {
        "courier": "dhl"
    }
    copies = [
        line(doc),
        json.dumps(dict(reversed(doc.items())), separators=(",", ":")).encode(),
        line({**doc, "occurred_at": "2026-10-03T13:00:00+02:00"}),
    ]
    digests = {content_digest(e) for value in copies for e in _both(value)}
    assert len(digests) == 1
    assert content_digest(EVENT_ADAPTER.validate_json(copies[0])) == digests.pop()


def test_an_integral_float_quantity_has_the_digest_of_the_int():
    doc = order_placed("q1", "2026-10-01T08:00:00Z")
    doc["lines"] = [{**doc["lines"][0], "qty": 2}]
    as_float = line({**doc, "lines": [{**doc["lines"][0], "qty": 2.0}]})
    assert {content_digest(e) for value in (as_float, line(doc)) for e in _both(value)} == {
        content_digest(_both(line(doc))[1])
    }
