"""The file source's floor, kept incrementally, against its definition (recomputed on every
clock move), and the stages' fast paths against the slow ones they replace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import STREAM_OF, Stream
from salvage.connectors.parse import RawRecord
from salvage.features.customer import CustomerContext
from salvage.features.eventtime import BEGIN, DAY_US, END, Reorderer
from salvage.flows import sources
from salvage.flows.sources import _KafkaLayout, _Parser

TYPES = sorted(STREAM_OF)


class _Reference(_KafkaLayout):
    """The layout as it was: the floor recomputed over every partition on every clock move."""

    def handle(self, raw, out, mark=None) -> None:
        result = sources.parse(raw)
        slot = sources.partition_of(result.order_id, self._partitions)
        key = (STREAM_OF[result.event_type].value, slot)
        parser = self.parts.get(key) or self._new(key)
        before = parser.clock.max_t
        parser.handle_event(raw, result, out)
        if parser.clock.max_t != before:
            self._raise_floor()


events = st.lists(
    st.tuples(
        st.sampled_from(TYPES),
        st.integers(0, 30),  # order number
        st.integers(0, 200),  # minutes
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    evs=events,
    tol=st.sampled_from([0, 5, 30]),
    jump=st.sampled_from([0, 40, 120]),
    cut=st.integers(0, 120),
)
def test_incremental_floor_matches_the_recomputed_one(evs, tol: int, jump: int, cut: int) -> None:
    fake = {}
    for i, (etype, order, minute) in enumerate(evs):
        fake[b"%d" % i] = SimpleNamespace(
            event_type=etype,
            order_id=f"o{order}",
            event_id=f"e{i}",
            occurred_at=datetime(2026, 3, 2, tzinfo=UTC) + timedelta(minutes=minute),
        )
    with mock.patch.object(sources, "parse", lambda raw: fake[raw.value]):
        _compare(len(evs), tol, jump, cut)


def _compare(n: int, tol: int, jump: int, cut: int) -> None:
    us = 60_000_000
    args = (tol * us, 60 * us, BEGIN, 0, jump * us)
    fast, ref = _KafkaLayout("f", args, 3), _Reference("f", args, 3)
    outs: list[list] = [[], []]
    for i in range(n):
        raw = RawRecord("log", 0, i, b"%d" % i)
        for layout, out in zip((fast, ref), outs, strict=True):
            layout.handle(raw, out)
            if i == cut:  # a batch boundary: tick
                layout.tick(out)
        assert fast.floor == ref.floor
        assert {k: p.floor for k, p in fast.parts.items()} == {
            k: p.floor for k, p in ref.parts.items()
        }
    for layout, out in zip((fast, ref), outs, strict=True):
        layout.release_held(out)
        layout.tick(out, END)
    assert [repr(x) for x in outs[0]] == [repr(x) for x in outs[1]]


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from("abc"), st.integers()), max_size=40
    ),
    low=st.integers(0, 20),
)
def test_push_many_is_push_each_in_order(items, low: int) -> None:
    fast, slow = Reorderer(["u"]), Reorderer(["u"])
    for r in (fast, slow):
        r.low = low
    late = fast.push_many(items)
    refused = 0
    for t, tie, payload in items:  # what _Stage._push does
        if not slow.push(t, tie, payload):
            refused += 1
            slow.push(slow.low, tie, payload)
    assert late == refused
    assert fast._heap == slow._heap and fast._seq == slow._seq
    fast.tick("u", END)
    slow.tick("u", END)
    assert fast.release() == slow.release()


counts = st.integers(0, 5)


@settings(max_examples=200, deadline=None)
@given(
    orders=counts,
    returns=counts,
    refunds=counts,
    retained=counts,
    contacts=counts,
    sentiment=st.floats(-5, 5),
    spend=st.floats(0, 1e4),
    refunded=st.floats(0, 1e4),
    first=st.integers(0, 50 * DAY_US),
    last_return=st.integers(0, 50 * DAY_US),
    now=st.integers(0, 60 * DAY_US),
    base=st.dictionaries(
        st.sampled_from(["order_value", "customer_orders", "margin", "x"]), st.floats(), max_size=4
    ),
)
def test_merged_features_are_the_dict_union(
    orders, returns, refunds, retained, contacts, sentiment, spend, refunded, first,
    last_return, now, base,
) -> None:  # fmt: skip
    ctx = CustomerContext(
        "c",
        first_seen=first,
        orders=orders,
        spend=spend,
        returns=returns,
        refunds=refunds,
        refunded_value=refunded,
        retained_returns=retained,
        last_return_at=last_return,
        contacts=contacts,
        sentiment_sum=sentiment,
    )
    merged, union = ctx.merged(base, now), base | ctx.features(now)
    assert list(merged.items()) == list(union.items()) or repr(merged) == repr(union)  # NaN


# ------------------------------------------------- the file source's line path (handle_line)


def _sample_docs() -> list[dict]:
    import itertools

    from salvage.connectors.simulator import generate

    stream = generate("steady-state", 80, 7, variants=("realistic-text",))
    return list(itertools.islice((doc for kind, doc in stream if kind == "event"), 80))


DOCS = _sample_docs()
T0 = datetime(2026, 3, 2, tzinfo=UTC)
WALL_US = int((T0 + timedelta(days=3)).timestamp() * 1e6)  # the wall clock, fixed

lines = st.lists(
    st.tuples(
        st.integers(0, len(DOCS) - 1),  # which record
        st.integers(-60, 400),  # its occurred_at, minutes after T0 (past 4 days: from the future)
        st.sampled_from(["ok"] * 6 + ["bad-json", "wrong-type", "offset", "too-large"]),
    ),
    max_size=80,
)


def _line(doc: dict, minute: int, how: str) -> bytes:
    from salvage.connectors.parse import MAX_EVENT_BYTES
    from salvage.connectors.simulator import dumps

    doc = dict(doc, occurred_at=(T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if how == "wrong-type":
        doc["order_id"] = 7
    elif how == "offset":  # another form of the same instant (the pydantic path decides)
        doc["occurred_at"] = (
            (T0 + timedelta(minutes=minute)).astimezone(timezone(timedelta(hours=2))).isoformat()
        )
    elif how == "too-large":
        doc["padding"] = "x" * MAX_EVENT_BYTES
    value = dumps(doc).encode()
    return value[:-3] if how == "bad-json" else value


# a partition's clock settings (minutes; future: seconds) and the lines it reads
CLOCKS = {
    "picks": lines,
    "tol": st.sampled_from([0, 5, 30]),
    "late": st.sampled_from([10, 60, 10**6]),
    "jump": st.sampled_from([0, 40, 120]),
    "future": st.sampled_from([0, 3600]),
}


@settings(max_examples=150, deadline=None)
@given(**CLOCKS, cut=st.integers(0, 80))
def test_handle_line_is_handle_of_the_record(picks, tol, late, jump, future, cut) -> None:
    """handle_line (the file source's path: a line, its common case inline) gives the items and
    the state that handle gives for RawRecord(source, 0, line, value)."""
    us = 60_000_000
    args = (tol * us, late * us, BEGIN, future * 1_000_000, jump * us)
    fast, ref = _KafkaLayout("f", args, 3), _KafkaLayout("f", args, 3)
    outs: list[list] = [[], []]
    wall = SimpleNamespace(time_ns=lambda: WALL_US * 1000)
    with mock.patch.object(sources, "time", wall):
        for i, (k, minute, how) in enumerate(picks):
            value = _line(DOCS[k], minute, how)
            fast.handle_line("log", i + 1, value, outs[0])
            ref.handle(RawRecord("log", 0, i + 1, value), outs[1])
            if i == cut:
                fast.tick(outs[0])
                ref.tick(outs[1])
            assert fast.state() == ref.state() and fast._low == ref._low
        for layout, out in zip((fast, ref), outs, strict=True):
            layout.release_held(out)
            layout.tick(out, END)
    assert outs[0] == outs[1]
    assert [repr(x) for x in outs[0]] == [repr(x) for x in outs[1]]


# --------------------------------------------- the Kafka source's message path (handle_value)


@settings(max_examples=150, deadline=None)
@given(**CLOCKS, cut=st.integers(0, 40), stream=st.sampled_from([None, *Stream]))
def test_handle_value_is_handle_of_the_record(picks, tol, late, jump, future, cut, stream) -> None:
    """handle_value (the Kafka source's path: a message, its common case inline) gives the items
    and the parser state that handle gives for RawRecord(topic, partition, offset, value,
    stream), the message's offset as the resume mark: dead letters (a record of another stream
    among them), held events, late ones, a raised floor."""
    us = 60_000_000
    args = (tol * us, late * us, BEGIN, future * 1_000_000, jump * us)
    fast, ref = _Parser("orders:2", *args), _Parser("orders:2", *args)
    outs: list[list] = [[], []]
    wall = SimpleNamespace(time_ns=lambda: WALL_US * 1000)
    with mock.patch.object(sources, "time", wall):
        for i, (k, minute, how) in enumerate(picks):
            value, offset = _line(DOCS[k], minute, how), 1_000 + i
            fast.handle_value("orders", 2, offset, value, stream, outs[0], offset)
            ref.handle(RawRecord("orders", 2, offset, value, stream), outs[1], offset)
            if i == cut:  # a floor: no event leaves before it (what a file's tick promises)
                fast.floor = ref.floor = int((T0 + timedelta(minutes=120)).timestamp() * 1e6)
            assert (fast.clock.max_t, fast.held) == (ref.clock.max_t, ref.held)
        for parser, out in zip((fast, ref), outs, strict=True):
            parser.release_held(out, everything=True)
            parser.tick(out, END)
    assert outs[0] == outs[1]
    assert [repr(x) for x in outs[0]] == [repr(x) for x in outs[1]]


def test_handle_value_builds_no_record_for_an_event_applied_on_time() -> None:
    """The point of handle_value: a valid message of its stream, on time, becomes an Event
    without a RawRecord (one is built only for a dead letter or a held event)."""
    built: list = []

    def counting(*a):
        built.append(a)
        return RawRecord(*a)

    doc = next(d for d in DOCS if STREAM_OF[d["event_type"]] is Stream.DELIVERIES)
    parser, out = _Parser("deliveries:0", 0, 60_000_000, BEGIN), []
    with mock.patch.object(sources, "RawRecord", counting):
        parser.handle_value("deliveries", 0, 5, _line(doc, 0, "ok"), Stream.DELIVERIES, out, 5)
        assert [type(x) for x in out] == [sources.Event] and built == []
        parser.handle_value("deliveries", 0, 6, _line(doc, 0, "ok"), Stream.ORDERS, out, 6)
        assert type(out[-1]).__name__ == "DeadLetter" and len(built) == 1  # wrong stream
