"""The clock bound of a source partition (``_Parser``, DESIGN §11): an event far ahead of its
partition's clock is held; the stream either confirms it (three in a row), catches up with it
(an event in between brings it within the bound: applied after it) or moves on without it
(``bad_timestamp``). Nothing read is lost: each event is applied once or dead-lettered once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.events import EVENT_ADAPTER
from salvage.connectors.outputs import DeadLetter
from salvage.connectors.parse import RawRecord
from salvage.features.eventtime import BEGIN
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
    applied, dead, p = _feed([3, 5, 24 * 400, 6])
    assert dead == ["e2"] and applied == ["e0", "e1", "e3"] and p.held == []


def test_only_the_held_events_within_the_bound_follow() -> None:
    """Two held (12 h and 40 h); an event at 9 h brings the first within the bound (applied),
    not the second (rejected: the clock moved on without it)."""
    applied, dead, _ = _feed([3, 5, 12, 40, 9])
    assert applied == ["e0", "e1", "e4", "e2"] and dead == ["e3"]


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
