import base64
import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import OrderPlaced, Stream
from salvage.connectors.outputs import DeadLetter, DeadLetterKind
from salvage.connectors.parse import MAX_EVENT_BYTES, RawRecord, parse
from tests.helpers import event, line, order_placed


def _parse(value: bytes, stream: Stream | None = None):
    return parse(RawRecord("test", 0, 7, value, stream))


def _kind(value: bytes, stream: Stream | None = None) -> DeadLetterKind:
    result = _parse(value, stream)
    assert isinstance(result, DeadLetter), result
    assert result.offset == 7 and result.source == "test"
    kept = base64.b64decode(result.raw_b64)
    assert kept == value[:4096]  # the original bytes, up to the dead-letter bound
    assert result.raw_truncated == (len(value) > 4096) and not result.raw_redacted
    assert result.raw_len == len(value)
    assert result.raw_sha256 == hashlib.sha256(value).hexdigest()
    return result.kind


GOOD = order_placed("o1", "2026-03-02T10:00:00+01:00")


def test_valid_event_is_normalised_to_utc():
    ev = _parse(line(GOOD))
    assert isinstance(ev, OrderPlaced)
    assert ev.occurred_at.isoformat() == "2026-03-02T09:00:00+00:00"
    assert ev.lines[0].qty == 1


def test_unknown_fields_are_tolerated():
    assert isinstance(_parse(line({**GOOD, "gift_wrap": True, "x": {"y": 1}})), OrderPlaced)


def test_each_corruption_has_its_own_kind():
    cases = {
        b"\xff\xfe{}": DeadLetterKind.INVALID_UTF8,
        b'{"event_id": "e1", ': DeadLetterKind.INVALID_JSON,
        b"[1, 2, 3]": DeadLetterKind.NOT_AN_OBJECT,
        b'"just a string"': DeadLetterKind.NOT_AN_OBJECT,
        line({k: v for k, v in GOOD.items() if k != "event_id"}): DeadLetterKind.MISSING_FIELD,
        line({k: v for k, v in GOOD.items() if k != "event_type"}): DeadLetterKind.MISSING_FIELD,
        line({**GOOD, "event_type": "teleported"}): DeadLetterKind.UNKNOWN_EVENT_TYPE,
        line({**GOOD, "schema_version": 2}): DeadLetterKind.UNSUPPORTED_SCHEMA_VERSION,
        line({**GOOD, "order_id": 12345}): DeadLetterKind.WRONG_TYPE,
        line({**GOOD, "occurred_at": "2026-03-02T10:00:00"}): DeadLetterKind.BAD_TIMESTAMP,
        line({**GOOD, "occurred_at": "2926-03-02T10:00:00Z"}): DeadLetterKind.BAD_TIMESTAMP,
        line({**GOOD, "occurred_at": "yesterday"}): DeadLetterKind.BAD_TIMESTAMP,
        line({**GOOD, "currency": "euro"}): DeadLetterKind.INVALID_VALUE,
        b"x" * (MAX_EVENT_BYTES + 1): DeadLetterKind.TOO_LARGE,
    }
    for value, kind in cases.items():
        assert _kind(value) == kind, value[:80]


def test_absurd_amounts_and_quantities_are_rejected():
    bad_qty = {**GOOD, "lines": [{**GOOD["lines"][0], "qty": 0}]}
    huge = {**GOOD, "lines": [{**GOOD["lines"][0], "unit_price": 1e12}]}
    negative = event(
        "r1", "refund_issued", "o1", "2026-03-09T10:00:00Z", amount=-5.0, currency="EUR"
    )
    nan = line(
        event("r2", "refund_issued", "o1", "2026-03-09T10:00:00Z", currency="EUR", amount=0.0)
    ).replace(b'"amount": 0.0', b'"amount": NaN')
    for doc in (bad_qty, huge, negative):
        assert _kind(line(doc)) == DeadLetterKind.INVALID_VALUE
    assert _kind(nan) == DeadLetterKind.INVALID_VALUE


def test_wrong_topic_is_rejected_in_kafka_mode():
    assert _kind(line(GOOD), Stream.SUPPORT) == DeadLetterKind.WRONG_STREAM
    assert isinstance(_parse(line(GOOD), Stream.ORDERS), OrderPlaced)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(value):
    result = _parse(value)
    assert isinstance(result, DeadLetter) or hasattr(result, "event_type")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), json_values, max_size=6))
def test_mutated_events_are_accepted_or_dead_lettered(mutation):
    doc = {**GOOD, **mutation}
    result = _parse(json.dumps(doc, allow_nan=True).encode())
    if isinstance(result, DeadLetter):
        assert result.kind in set(DeadLetterKind)
        assert result.message
    else:
        assert result.order_id == doc["order_id"]
