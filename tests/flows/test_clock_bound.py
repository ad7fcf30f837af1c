"""The clock bound of a source partition (``_Parser``, DESIGN §11): an event far ahead of its
partition's clock is held; the stream either confirms it (three in a row), catches up with it
(an event in between brings it within the bound: applied after it) or moves on without it
(``bad_timestamp``). Nothing read is lost: each event is applied once or dead-lettered once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import EVENT_ADAPTER
from salvage.connectors.outputs import DeadLetter
from salvage.connectors.parse import RawRecord
from salvage.features.eventtime import BEGIN, to_us
from salvage.flows.messages import Event
from salvage.flows.sources import _Parser
from tests.helpers import event

HOUR_US = 3_600_000_000
T0 = datetime(2026, 9, 1, 10, tzinfo=UTC)


def _parser(jump_h: float = 6.0) -> _Parser:
    # tolerance 60 s, lateness 7 days, no wall-clock bound, clock bound jump_h hours
    return _Parser("p0", 60_000_000, 7 * 24 * HOUR_US, BEGIN, 0, int(jump_h * HOUR_US))


def _scan(i: int, hours: float, scan: str = "in_transit") -> tuple[RawRecord, object]:
    at = (T0 + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")
    doc = event(f"e{i}", "carrier_scan", "o1", at, scan=scan, courier="dpd")
    raw = json.dumps(doc).encode()
    return RawRecord("log", 0, i, raw), EVENT_ADAPTER.validate_json(raw)


def _feed(hours: list[float], jump_h: float = 6.0) -> tuple[list[str], list[str], _Parser]:
    """(ids applied, in output order; ids dead-lettered; the parser) after feeding scans at
    these hours after T0, in this order."""
    p = _parser(jump_h)
    out: list = []
    for i, h in enumerate(hours):
        raw, ev = _scan(i, h)
        p.handle_event(raw, ev, out)
    applied = [x.payload.event_id for x in out if isinstance(x, Event)]
    dead = [x.event_id for x in out if isinstance(x, DeadLetter)]
    return applied, dead, p


def test_a_scan_uploaded_late_brings_the_held_one_within_the_bound() -> None:
    """picked_up 13:00, in_transit 15:00, delivered 22:00 (7 h: held), out_for_delivery 19:00
    (uploaded late by the carrier): the delivered scan follows it (before: ``bad_timestamp``,
    and Salvage thought the parcel never arrived)."""
    applied, dead, p = _feed([3, 5, 12, 9])
    assert dead == [] and p.held == []
    assert applied == ["e0", "e1", "e3", "e2"]
    assert p.clock.max_t == int((T0 + timedelta(hours=12)).timestamp() * 1e6)


def test_a_bogus_future_time_is_rejected_when_the_stream_moves_on_without_it() -> None:
    """Held at 5 h; the clock moves on to 6 h and 9 h (not yet a whole bound: still held), then
    to 11 h (6 h since it was held, and it is still beyond the bound): ``bad_timestamp``."""
    applied, dead, p = _feed([3, 5, 24 * 400, 6, 9])
    assert dead == [] and applied == ["e0", "e1", "e3", "e4"] and len(p.held) == 1
    applied, dead, p = _feed([3, 5, 24 * 400, 6, 9, 11])
    assert dead == ["e2"] and applied == ["e0", "e1", "e3", "e4", "e5"] and p.held == []
    out: list = []
    _, _, p = _feed([3, 5, 24 * 400, 6])
    dl = _scan(9, 11)
    p.handle_event(*dl, out)
    assert "moved the clock on 6.0h without reaching it" in out[-1].message


def _drained(hours: list[float], jump_h: float = 6.0) -> tuple[list[str], list[str]]:
    """(ids applied, ids dead-lettered) after feeding these hours and the end of input."""
    applied, dead, p = _feed(hours, jump_h)
    out: list = []
    p.release_held(out, everything=True)
    return applied + [x.payload.event_id for x in out if isinstance(x, Event)], dead


def test_a_straggler_that_moves_the_clock_a_little_does_not_reject_the_held_event() -> None:
    """Probe defect 1 (clock_bound_straggler_drops_delivered): picked_up 20:00, delivered 09:00
    the next day (13 h: held), in_transit 23:00 uploaded late (the clock moves 3 h, the held
    scan is still 10 h ahead). Before: ``bad_timestamp`` for the delivered scan, and the parcel
    counted late on its lane; now it stays held (the stream has not moved on by a whole bound)
    and is applied at the end of input, or once the clock comes within the bound of it."""
    assert _drained([0, 13, 3]) == (["e0", "e2", "e1"], [])
    applied, dead, p = _feed([0, 13, 3, 8])  # the clock reaches 8 h: 5 h from it
    assert (applied, dead, p.held) == (["e0", "e2", "e3", "e1"], [], [])
    # clock_bound_drops_refund: a return at 08:00, a refund export 8 h ahead, a chargeback
    # batch at 09:00 (1 h on: the refund is still 7 h ahead)
    assert _drained([0, 8, 1]) == (["e0", "e2", "e1"], [])


def test_a_future_dated_first_event_does_not_make_its_partition_too_late() -> None:
    """Probe defect 11 (future_first_event_makes_partition_too_late): a partition's first event
    19 days ahead of the rest (a sparse partition: one event a day, each a jump of its own).
    Before: exempt as the first event, it moved the clock and the three valid events after it
    were ``too_late``. Now it is pending until the next event, which is far behind it: that one
    starts the clock, the first is held, and the stream moves on without it."""
    applied, dead = _drained([24 * 19, 0, 24, 48])
    assert dead == ["e0"] and applied == ["e1", "e2", "e3"]
    # a normal start is as before: the first event applied first, the next late behind it
    assert _drained([5, 4.5, 6]) == (["e0", "e1", "e2"], [])
    p = _parser()
    out: list = []
    for i, h in enumerate([5, 4.5]):
        p.handle_event(*_scan(i, h), out)
    assert [x.t for x in out] == [_us(5), _us(5) - 60_000_000]  # e1: at the watermark


def test_a_lone_first_event_is_pending_and_applied_at_the_end() -> None:
    applied, dead, p = _feed([5])
    assert applied == [] and dead == [] and len(p.held) == 1 and p.pending_wm() is not None
    assert _drained([5]) == (["e0"], [])


def test_one_bogus_time_cannot_be_confirmed_by_events_less_far_ahead() -> None:
    """Held events confirm the *earliest* of them: a bogus time 400 days ahead, then a batch
    8-9 h ahead: the batch is applied, and the bogus one, read before it, has seen the stream
    move on 9 h without reaching it: ``bad_timestamp`` (before: three held in a row were
    applied in order, the bogus one first, and every later event was ``too_late``)."""
    applied, dead, p = _feed([0, 1, 24 * 400, 9, 10])
    assert applied == ["e0", "e1", "e3", "e4"] and dead == ["e2"] and p.held == []
    # read after the batch it confirms, it is held afresh from there, and rejected 6 h on
    applied, dead, p = _feed([0, 1, 9, 10, 24 * 400])
    assert applied == ["e0", "e1", "e2", "e3"] and dead == [] and len(p.held) == 1
    applied, dead, p = _feed([0, 1, 9, 10, 24 * 400, 12, 14, 16])
    assert dead == ["e4"] and "e4" not in applied and p.held == []


def test_on_a_sparse_partition_a_held_event_that_later_events_reach_is_not_rejected() -> None:
    """A sparse returns partition (the probe's big log): the clock at 0 h, a refund 24 h ahead
    (held), a chargeback 6.8 h ahead (held: a jump of its own), a scan at 39.3 h (held): three
    held confirm the chargeback; the refund, read before it and 17.2 h ahead of it, is reached
    by the scan read after it, so it is held afresh (not ``bad_timestamp``) and applied later."""
    assert _drained([0, 24, 6.8, 39.3]) == (["e0", "e2", "e1", "e3"], [])
    applied, dead, p = _feed([0, 24, 6.8, 39.3, 30])  # the refund follows what reaches it
    assert (applied, dead, [h[2] for h in p.held]) == (["e0", "e2", "e1", "e4"], [], [_us(39.3)])


def _us(hours: float) -> int:
    return to_us(T0 + timedelta(hours=hours))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0, 2, allow_nan=False), min_size=2, max_size=30),
    st.lists(
        st.tuples(
            st.integers(1, 30),
            st.one_of(st.floats(-72, 6, allow_nan=False), st.floats(6.01, 12, allow_nan=False)),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_a_batched_source_within_twice_the_bound_loses_no_event(
    gaps: list[float], batch: list[tuple[int, float]]
) -> None:
    """Any interleaving of a live stream (in order, gaps up to 2 h) and a batched one (uploads
    up to 3 days behind the live stream or up to twice the bound, 12 h, ahead of it): every
    event is applied exactly once, none is dead-lettered (``bad_timestamp`` or ``too_late``).
    The partition starts with its live source."""
    live: list[float] = []
    for g in gaps:
        live.append((live[-1] if live else 0.0) + g)
    hours: list[float] = []
    at: dict[int, list[float]] = {}
    for pos, ahead in batch:
        at.setdefault(1 + pos % (len(live) - 1), []).append(ahead)
    for i, h in enumerate(live):
        hours.append(h)
        if i >= 1:  # the partition's first two events are live
            hours += [h + a for a in at.get(i, [])]
    applied, dead = _drained(hours)
    assert dead == []
    assert sorted(applied) == sorted(f"e{i}" for i in range(len(hours)))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0, 1, allow_nan=False), min_size=14, max_size=40),
    st.integers(0, 40),
    st.floats(13.01, 24 * 800, allow_nan=False),
)
def test_one_broken_time_anywhere_is_rejected_and_moves_nothing(
    gaps: list[float], at: int, ahead: float
) -> None:
    """A dense live stream (gaps up to 1 h, going on for at least 7 h after it) with one event
    more than twice the bound (and a gap) ahead of it, anywhere, the first event included: that
    one is the only ``bad_timestamp`` and every other event is applied at its own time (none
    late)."""
    live: list[float] = []
    for g in gaps:
        live.append((live[-1] if live else 0.0) + g)
    at = min(at, len(live) - 1)
    # the stream goes on for at least 7 h after the bogus event
    while live[-1] - live[max(at - 1, 0)] < 7:
        live.append(live[-1] + 0.5)
    base = live[max(at - 1, 0)]
    hours = [*live[:at], base + ahead, *live[at:]]
    p = _parser()
    out: list = []
    for i, h in enumerate(hours):
        p.handle_event(*_scan(i, h), out)
    p.release_held(out, everything=True)
    bogus = f"e{at}"
    assert [x.event_id for x in out if isinstance(x, DeadLetter)] == [bogus]
    events = [x for x in out if isinstance(x, Event)]
    assert len(events) == len(hours) - 1
    assert all(x.t == _us(hours[int(x.payload.event_id[1:])]) for x in events)


def test_only_the_held_events_within_the_bound_follow() -> None:
    """Two held (12 h and 40 h); an event at 9 h brings the first within the bound (applied),
    not the second: still held (the events read after it moved the clock 4 h, not a whole
    bound; before: rejected there), rejected once events read after it moved it 6 h (13 h,
    15 h: 7 h). The clock's move by the released event (9 h to 12 h) is not the stream moving
    on without it."""
    applied, dead, p = _feed([3, 5, 12, 40, 9])
    assert applied == ["e0", "e1", "e4", "e2"] and dead == [] and len(p.held) == 1
    applied, dead, p = _feed([3, 5, 12, 40, 9, 13, 15])
    assert applied == ["e0", "e1", "e4", "e2", "e5", "e6"] and dead == ["e3"] and p.held == []


def test_a_late_event_decides_nothing_and_three_jumps_confirm() -> None:
    applied, dead, p = _feed([3, 12, 2])  # 2 h: late, behind the clock
    assert applied == ["e0", "e2"] and dead == [] and len(p.held) == 1
    applied, dead, p = _feed([3, 12, 13, 14])  # three in a row: the partition moved on
    assert applied == ["e0", "e1", "e2", "e3"] and dead == [] and p.held == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 24 * 30, allow_nan=False), min_size=1, max_size=25))
def test_every_event_is_applied_or_dead_lettered_once(hours: list[float]) -> None:
    """Whatever the order of times: at the end of input (``release_held(everything)``) each
    event was applied exactly once or dead-lettered exactly once."""
    applied, dead, p = _feed(hours)
    out: list = []
    p.release_held(out, everything=True)
    applied += [x.payload.event_id for x in out if isinstance(x, Event)]
    ids = [f"e{i}" for i in range(len(hours))]
    assert sorted(applied + dead) == sorted(ids)
    assert len(set(applied)) == len(applied)


def test_a_late_uploaded_scan_in_kafka_follow_mode(
    kafka_broker, unique_name, salvage_cli, tmp_path
):
    """The same on the embedded broker through ``salvage run --follow``: the delivered scan held
    behind a late upload is applied (no ``bad_timestamp``), as in file mode. The log ends with a
    refund after another order's grace period (an ``unknown_order`` dead letter once every
    partition is idle): the drain's signal."""
    from tests.helpers import (
        dead_letter_ids,
        dead_letters_at_drain,
        kafka_settings,
        order_placed,
        prom_total,
        start_follow,
    )

    def scan(eid: str, at: str, code: str) -> dict:
        return event(eid, "carrier_scan", "d1", at, scan=code, courier="dpd")

    def refund(eid: str, at: str) -> dict:
        return event(eid, "refund_issued", "o9", at, amount=80.0, currency="EUR")

    docs = [
        order_placed("d1", "2026-09-01T08:00:00Z", promised="2026-09-02T18:00:00Z"),
        scan("s1", "2026-09-01T13:00:00Z", "picked_up"),
        scan("s2", "2026-09-01T15:00:00Z", "in_transit"),
        scan("s3", "2026-09-01T22:00:00Z", "delivered"),  # 7 h: held
        scan("s4", "2026-09-01T19:00:00Z", "out_for_delivery"),  # uploaded late
        order_placed("o9", "2026-09-01T09:00:00Z", customer="c9"),
        refund("o9-f1", "2026-09-01T12:00:00Z"),
        refund("o9-late", "2026-11-30T12:00:00Z"),
    ]
    settings = kafka_settings(kafka_broker.bootstrap, unique_name("clock"))
    log = tmp_path / "late-upload.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in docs))
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, log, tmp_path / "out")
    dead = dead_letters_at_drain(proc, settings)
    assert dead_letter_ids(dead) == [("unknown_order", "o9-late")]
    prom = (tmp_path / "out" / "metrics.prom").read_text()
    assert prom_total(prom, "salvage_events_total", stream="deliveries") == 4.0


def _probe_logs() -> dict[str, list[dict]]:
    """The probe's repros (/tmp/probe3/repro, written from the contracts alone), by hand: with
    one partition per topic, each puts its events on one partition."""
    from tests.helpers import order_placed

    def scan(eid: str, order: str, at: str, code: str) -> dict:
        return event(eid, "carrier_scan", order, at, scan=code, courier="gls")

    return {
        # a refund export 8 h ahead of the returns partition; a chargeback batch 1 h on
        "refund": [
            order_placed("y", "2026-10-01T08:00:00Z", promised="2026-10-04T21:59:59Z"),
            scan("y-del", "y", "2026-10-03T11:00:00Z", "delivered"),
            event(
                "y-rr", "return_requested", "y", "2026-10-06T08:00:00Z", return_id="RY",
                reason="changed_mind", items=[{"sku": "sku-1", "qty": 1}],
                preferred_resolution="refund",
            ),
            order_placed("x", "2026-10-06T14:00:00Z", promised="2026-10-09T21:59:59Z"),
            event("x-cancel", "order_cancelled", "x", "2026-10-06T14:30:00Z"),
            event("x-refund", "refund_issued", "x", "2026-10-06T16:00:00Z", amount=80.0,
                  currency="EUR"),
            event("y-cb", "chargeback_filed", "y", "2026-10-06T09:00:00Z", amount=80.0,
                  currency="EUR"),
        ],
        # delivered 13 h after picked_up; in_transit uploaded late moves the clock 3 h
        "straggler": [
            order_placed("k2", "2026-10-01T08:00:00Z", promised="2026-10-02T21:59:59Z",
                         courier="gls"),
            scan("k2-s1", "k2", "2026-10-01T20:00:00Z", "picked_up"),
            scan("k2-s3", "k2", "2026-10-02T09:00:00Z", "delivered"),
            scan("k2-s2", "k2", "2026-10-01T23:00:00Z", "in_transit"),
        ],
        # the orders partition's first event 19 days ahead of the rest (one order a day)
        "future_first": [
            order_placed("p0", "2026-10-20T09:00:00Z", promised="2026-10-24T21:59:59Z"),
            order_placed("p2", "2026-10-01T09:00:00Z", promised="2026-10-04T21:59:59Z"),
            scan("p2-pu", "p2", "2026-10-01T15:00:00Z", "picked_up"),
            order_placed("p6", "2026-10-02T09:00:00Z", promised="2026-10-05T21:59:59Z"),
            order_placed("p15", "2026-10-03T09:00:00Z", promised="2026-10-06T21:59:59Z"),
            scan("p2-del", "p2", "2026-10-03T10:00:00Z", "delivered"),
        ],
    }  # fmt: skip


def test_the_probe_repros_in_file_mode(tmp_path) -> None:
    """Before: ``bad_timestamp`` for x-refund (80 EUR of refunds lost) and for k2's delivered
    scan (the parcel counted late on its lane); p0's 2026-10-20 as its partition's first event
    made p2, p6, p15 ``too_late`` (and p2's scans ``unknown_order``). Now only p0 is a dead
    letter."""
    from tests.flowkit import jsonl, run_file_flow
    from tests.helpers import metric_total

    logs = _probe_logs()
    dead: dict[str, list[tuple[str, str]]] = {}
    refunded: dict[str, float] = {}
    for name, docs in logs.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        before = metric_total("salvage_refunded_total")
        out = run_file_flow([path], tmp_path / name, topic_partitions=1)
        refunded[name] = metric_total("salvage_refunded_total") - before
        dead[name] = [(d["kind"], d["event_id"]) for d in jsonl(out["dead_letters"])]
    # x's refund and y's chargeback (before: 80.0); a difference of a process-wide float counter,
    # which earlier tests in the same process may have made large (160.00000000000728 seen)
    assert refunded["refund"] == pytest.approx(160.0, abs=1e-6)
    assert dead == {"refund": [], "straggler": [], "future_first": [("bad_timestamp", "p0-placed")]}


def test_stragglers_and_a_future_first_event_in_kafka_follow_mode(
    kafka_broker, unique_name, salvage_cli, tmp_path
):
    """The probe's repros on the embedded broker through ``salvage run --follow`` (3 partitions):
    the delivered scan held 13 h ahead stays held while a straggler moves the clock 3 h, and is
    applied (before: ``bad_timestamp``); the first event of an orders partition 19 days ahead of
    the rest is the one dead letter, the three orders after it are applied (before: each
    ``too_late``). The log ends with the drain's signal (an ``unknown_order``)."""
    from salvage.connectors.partitioning import partition_of
    from tests.helpers import (
        dead_letter_ids,
        drain_when,
        kafka_settings,
        order_placed,
        prom_total,
        read_to_end,
        start_follow,
    )

    # po5, po6, po7, po14 share an orders partition that d1 and o9 are not on
    assert {partition_of(o, 3) for o in ("po5", "po6", "po7", "po14")} == {2}
    assert partition_of("d1", 3) != 2 and partition_of("o9", 3) != 2

    def scan(eid: str, at: str, code: str) -> dict:
        return event(eid, "carrier_scan", "d1", at, scan=code, courier="gls")

    def refund(eid: str, at: str) -> dict:
        return event(eid, "refund_issued", "o9", at, amount=80.0, currency="EUR")

    docs = [
        order_placed("po5", "2026-09-20T09:00:00Z", promised="2026-09-24T18:00:00Z"),
        order_placed("d1", "2026-09-01T08:00:00Z", promised="2026-09-02T21:59:59Z"),
        order_placed("po6", "2026-09-01T09:00:00Z", promised="2026-09-04T18:00:00Z"),
        scan("s1", "2026-09-01T20:00:00Z", "picked_up"),
        scan("s3", "2026-09-02T09:00:00Z", "delivered"),  # 13 h: held
        scan("s2", "2026-09-01T23:00:00Z", "in_transit"),  # uploaded late: the clock moves 3 h
        order_placed("po7", "2026-09-02T09:00:00Z", promised="2026-09-05T18:00:00Z"),
        order_placed("po14", "2026-09-03T09:00:00Z", promised="2026-09-06T18:00:00Z"),
        order_placed("o9", "2026-09-01T09:00:00Z", customer="c9"),
        refund("o9-f1", "2026-09-01T12:00:00Z"),
        refund("o9-late", "2026-11-30T12:00:00Z"),
    ]
    settings = kafka_settings(kafka_broker.bootstrap, unique_name("clock2"))
    log = tmp_path / "stragglers.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in docs))
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, log, tmp_path / "out")
    topic = settings.topics.dead_letters
    dead = drain_when(proc, settings, topic, lambda got: len(got) >= 2)
    dead += read_to_end(settings, topic, quiet_s=0.5)[len(dead) :]
    assert sorted(dead_letter_ids(dead)) == [
        ("bad_timestamp", "po5-placed"),
        ("unknown_order", "o9-late"),
    ]
    prom = (tmp_path / "out" / "metrics.prom").read_text()
    assert prom_total(prom, "salvage_events_total", stream="deliveries") == 3.0
    assert prom_total(prom, "salvage_events_total", stream="orders") == 5.0
