import base64
import functools
import hashlib
import itertools
import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from salvage.connectors.events import EVENT_MODELS, OrderPlaced, Stream
from salvage.connectors.fastparse import parse_fast
from salvage.connectors.outputs import DeadLetter, DeadLetterKind
from salvage.connectors.parse import MAX_EVENT_BYTES, RawRecord, content_digest, parse
from salvage.connectors.simulator import SCENARIOS, dumps, generate
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


def _valid_id(value: object) -> str | None:
    if isinstance(value, str) and 1 <= len(value) <= 128:
        return value if all("\x21" <= c <= "\x7e" for c in value) else None
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(sorted(GOOD)), json_values, max_size=6),
    st.sampled_from(["e1", "ord-77/x", "", "a b", "é1", "x" * 128, "x" * 129]),
)
def test_a_dead_letter_names_the_event_and_order_it_could_read(mutation, some_id):
    """A record that fails validation still names its event and order in its dead letter when
    its JSON carries them as valid ids (what ops search for), and never anything else."""
    doc = {**GOOD, **mutation}
    if "order_id" not in mutation:
        doc["order_id"] = some_id
    result = _parse(json.dumps(doc, allow_nan=True).encode())
    if isinstance(result, DeadLetter):
        assert result.event_id == _valid_id(doc.get("event_id"))
        assert result.order_id == _valid_id(doc.get("order_id"))


def test_a_rejected_event_keeps_its_ids():
    bad_amount = event("e9", "refund_issued", "o9", "2026-03-09T10:00:00Z", amount=-5.0)
    letter = _parse(json.dumps(bad_amount).encode())
    assert isinstance(letter, DeadLetter) and letter.kind is DeadLetterKind.INVALID_VALUE
    assert (letter.event_id, letter.order_id) == ("e9", "o9")
    unknown = {**GOOD, "event_type": "order_teleported"}
    letter = _parse(json.dumps(unknown).encode())
    assert isinstance(letter, DeadLetter) and letter.kind is DeadLetterKind.UNKNOWN_EVENT_TYPE
    assert (letter.event_id, letter.order_id) == (GOOD["event_id"], "o1")
    for broken in (b'{"event_id": "e1", "order_id": "o1"', b"[1, 2]", b'{"event_id": ["e1"]}'):
        letter = _parse(broken)
        assert isinstance(letter, DeadLetter) and letter.event_id is None


# ---------------------------------------------------------------- the msgspec fast path


def _simulated_docs() -> list[dict]:
    """Valid events of every type: a few of each from the simulator's scenarios, and a review."""
    by_type: dict[str, list[dict]] = {}
    for scenario in SCENARIOS:
        stream = generate(scenario, 200, 3, variants=("realistic-text", "bracketing-unflagged"))
        for kind, doc in itertools.islice(stream, 4000):
            if kind == "event" and len(by_type.setdefault(doc["event_type"], [])) < 12:
                by_type[doc["event_type"]].append(doc)
    review = event("rv1", "review_resolved", "o1", "2026-03-09T10:00:00Z", review_id="rv-1")
    by_type["review_resolved"] = [
        {**review, "verdict": "approve", "reviewer": "ana.b-2"},
        {**review, "verdict": "abuse_confirmed"},
    ]
    assert set(by_type) == set(EVENT_MODELS)
    return [doc for docs in by_type.values() for doc in docs]


DOCS = _simulated_docs()


def _same(fast: object, slow: object) -> None:
    """The fast path's result is the pydantic path's: the same dead letter, or the same model
    (class, field values with their types and order, fields set, serialisation)."""
    if isinstance(slow, DeadLetter) or isinstance(fast, DeadLetter):
        assert fast == slow
        return
    assert type(fast) is type(slow)
    assert repr(fast.__dict__) == repr(slow.__dict__)  # order, values and types (5 vs 5.0)
    assert fast.__getstate__() == slow.__getstate__()  # fields set, extra, private
    assert fast.model_dump_json() == slow.model_dump_json()
    assert content_digest(fast) == content_digest(slow)  # the duplicate digest
    for name, value in fast.__dict__.items():
        other = slow.__dict__[name]
        if isinstance(value, datetime):
            assert value.tzinfo is other.tzinfo is UTC, name
        if isinstance(value, list):
            for a, b in zip(value, other, strict=True):
                if isinstance(a, BaseModel):
                    _same(a, b)


def _check(value: bytes, stream: Stream | None = None) -> object:
    raw = RawRecord("test", 0, 7, value, stream)
    fast, slow = parse(raw), parse(raw, fast=False)
    _same(fast, slow)
    return fast


def test_fast_path_takes_every_simulated_event():
    for doc in DOCS:
        value = dumps(doc).encode()
        fast = parse_fast(value)
        assert fast is not None, value
        _check(value)


def test_fast_path_leaves_what_it_cannot_decide_to_pydantic():
    doc = order_placed("o1", "2026-03-02T10:00:00Z")
    cases = {
        # msgspec rounds a 7th fractional digit where pydantic truncates
        "fraction": {**doc, "occurred_at": "2026-03-02T10:00:00.9999999Z"},
        # pydantic's Literal[1] takes these
        "version": {**doc, "schema_version": 1.0},
        "version_bool": {**doc, "schema_version": True},
        # Python's `$` matches before a final newline; pydantic's does not
        "newline": {**doc, "currency": "EUR\n"},
        # pydantic refuses nesting deeper than 200 even in an ignored field
        "deep": {**doc, "junk": functools.reduce(lambda acc, _: [acc], range(250), [])},
        "offset": {**doc, "occurred_at": "2026-03-02T10:00:00.5+05:30"},
        "space": {**doc, "occurred_at": "2026-03-02 10:00:00Z"},
    }
    for name, case in cases.items():
        value = json.dumps(case).encode()
        if name in ("offset", "space", "version", "version_bool"):
            assert hasattr(_check(value), "event_type"), name
        else:
            _check(value)
        if name not in ("offset",):
            assert parse_fast(value) is None, name
    dup = dumps(doc)[:-1] + ',"order_id":"o2"}'
    assert _check(dup.encode()).order_id == "o2"  # the last of duplicate keys, both paths
    assert isinstance(_check(dumps(doc).replace("EUR", "\\u0045UR").encode()), OrderPlaced)
    assert isinstance(_check(b'{"x": "\\ud800", ' + dumps(doc).encode()[1:]), DeadLetter)


def _timestamps() -> st.SearchStrategy[str]:
    """Near-ISO timestamps: every separator, fraction length, offset and range variant."""
    return st.builds(
        lambda y, mo, d, sep, h, mi, s, frac, tz: (
            f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}{s}{frac}{tz}"
        ),
        st.sampled_from([1999, 2000, 2026, 2099, 2100, 9999, 0]),
        st.integers(0, 13),
        st.integers(0, 32),
        st.sampled_from(["T", "t", " ", "_", ""]),
        st.integers(0, 25),
        st.integers(0, 61),
        st.sampled_from([":00", ":59", ":60", "", ":5"]),
        st.sampled_from(["", ".", ".5", ".123456", ".1234567", ".9999999", ",5"]),
        st.sampled_from(
            ["Z", "z", "", "+00:00", "-00:00", "+05:30", "+23:59", "-24:00", "+0100", "+01"]
        ),
    )


_junk = st.one_of(
    json_values,
    _timestamps(),
    st.text(max_size=5000),
    st.text(st.characters(codec="ascii"), max_size=130),
    st.sampled_from(
        [
            "",
            " ",
            "EUR",
            "eur",
            "EUR\n",
            "a b",
            "x" * 129,
            "x" * 65,
            "\x7f",
            "é",
            "other",
            "delivered",
            "DELIVERED",
            "approve",
            "worn",
            "A",
            "refurbish",
            "email",
            "high",
        ]
    ),
    st.integers(-(2**70), 2**70),
    st.sampled_from(
        [0, 1, 1000, 1001, 1.0, 2.0, 2.5, 1000.0, 1001.0, -0.0, 1e6, 1e6 + 1, 1e400, True, None]
    ),
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    doc = json.loads(json.dumps(draw(st.sampled_from(DOCS))))
    for _ in range(draw(st.integers(1, 3))):
        # a field at the top or inside a line / item / flag list
        target = doc
        nested = [d for v in doc.values() if isinstance(v, list) for d in v if isinstance(d, dict)]
        if nested and draw(st.booleans()):
            target = draw(st.sampled_from(nested))
        keys = sorted(target)
        key = draw(st.sampled_from([*keys, "extra", "event_type", "currency", "scan"]))
        action = draw(st.sampled_from(["set", "set", "delete", "time", "list"]))
        if action == "delete":
            target.pop(key, None)
        elif action == "time":
            target[key] = draw(_timestamps())
        elif action == "list":
            target[key] = draw(st.lists(_junk, max_size=4))
        else:
            target[key] = draw(_junk)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)
    value = text.encode("utf-8", "surrogatepass")
    match draw(st.sampled_from(["none", "none", "bytes", "cut", "dup"])):
        case "bytes":  # non-UTF-8, control characters, stray bytes
            at = draw(st.integers(0, len(value)))
            value = value[:at] + draw(st.binary(min_size=1, max_size=4)) + value[at:]
        case "cut":
            value = value[: draw(st.integers(0, len(value)))]
        case "dup":  # a duplicate key at the end
            key = draw(st.sampled_from(sorted(doc)))
            value = (
                value[:-1]
                + b', "'
                + key.encode()
                + b'": '
                + json.dumps(draw(_junk)).encode()
                + b"}"
            )
    return value


@settings(max_examples=800, deadline=None)
@given(_mutated(), st.sampled_from([None, *Stream]))
def test_fast_path_and_pydantic_agree_on_mutated_events(value, stream):
    _check(value, stream)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fast_path_and_pydantic_agree_on_arbitrary_bytes(value):
    _check(value)
