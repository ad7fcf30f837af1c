"""Probe defects 9 and 13, end to end. A re-published event re-serialised (keys reordered,
compact, ``+02:00`` for ``Z``) is a counted duplicate, not an ``inconsistent`` dead letter, also
when a re-serialised copy is applied before the byte-identical original; an integral float
quantity no longer loses its whole order. And state from before content digests: its raw-byte
digests become unknown (a re-delivered id counts as a duplicate), rewritten at the next
snapshot."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import REGISTRY

from salvage.connectors.events import EVENT_ADAPTER
from salvage.connectors.parse import content_digest, event_tie
from salvage.features.eventtime import END, to_us
from salvage.flows.messages import Event, Tick
from salvage.flows.stages import CaseStage, StageConfig
from salvage.flows.stages.case import _digest_at, _tie_digest
from salvage.flows.state import CONTENT_DIGESTS, StageState, pack, unpack
from tests.flowkit import jsonl, run_file_flow
from tests.helpers import event, order_placed

PLACED = order_placed("rp", "2026-10-01T08:00:00Z") | {"currency": "EUR"}
DELIVERED = event(
    "rp-delivered", "carrier_scan", "rp", "2026-10-03T11:00:00Z", scan="delivered", courier="dhl"
)
PICKED = event("rp-picked", "carrier_scan", "rp", "2026-10-01T15:00:00Z", scan="picked_up")
PICKED["courier"] = "dhl"


def _duplicates() -> float:
    return REGISTRY.get_sample_value("salvage_duplicate_events_total") or 0.0


def _log(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(x + "\n" for x in lines))
    return path


def test_the_probes_republished_copies_are_duplicates(tmp_path):
    """/tmp/probe3/repro/republished_reserialised_is_inconsistent.jsonl: before, 3
    ``inconsistent`` dead letters and 0 duplicates (the second and third copies are
    re-serialised; the last, byte-identical to the first, was compared with the +02:00 copy
    applied before it: the ties ordered by raw crc32 put that one first)."""
    lines = [
        json.dumps(PLACED),
        json.dumps(PICKED),
        json.dumps(DELIVERED),
        json.dumps(dict(reversed(DELIVERED.items())), separators=(",", ":")),
        json.dumps({**DELIVERED, "occurred_at": "2026-10-03T13:00:00+02:00"}),
        json.dumps(DELIVERED),
    ]
    before = _duplicates()
    out = run_file_flow([_log(tmp_path / "log.jsonl", lines)], tmp_path / "out")
    assert jsonl(out["dead_letters"]) == []
    assert _duplicates() - before == 3


def test_a_changed_copy_is_still_inconsistent(tmp_path):
    changed = {**DELIVERED, "scan": "lost", "occurred_at": "2026-10-03T13:00:00+02:00"}
    lines = [json.dumps(x) for x in (PLACED, PICKED, DELIVERED, changed)]
    out = run_file_flow([_log(tmp_path / "log.jsonl", lines)], tmp_path / "out")
    letters = [(d["kind"], d["event_id"]) for d in jsonl(out["dead_letters"])]
    assert letters == [("inconsistent", "rp-delivered")]


def test_an_integral_float_quantity_keeps_its_order(tmp_path):
    """/tmp/probe3/repro/integral_float_qty_rejects_whole_order.jsonl: before, a ``wrong_type``
    dead letter for the order and 4 ``unknown_order`` ones for its events; now none, and the
    refund of its return is applied."""
    placed = order_placed("q1", "2026-10-01T08:00:00Z")
    placed["lines"] = [{**placed["lines"][0], "sku": "S", "qty": 2.0, "unit_price": 12.5}]
    placed["promised_delivery_at"] = "2026-10-04T21:59:59Z"
    scan = event("q1-d", "carrier_scan", "q1", "2026-10-03T11:00:00Z", scan="delivered")
    scan["courier"] = "dhl"
    request = event(
        "q1-req",
        "return_requested",
        "q1",
        "2026-10-05T10:00:00Z",
        return_id="RQ",
        reason="too_small",
        items=[{"sku": "S", "qty": 1.0}],
        preferred_resolution="refund",
    )
    refund = event(
        "q1-ref", "refund_issued", "q1", "2026-10-08T10:00:00Z", amount=12.5, currency="EUR"
    )
    refund["return_id"] = "RQ"
    lines = [json.dumps(x) for x in (placed, scan, request, refund)]
    out = run_file_flow([_log(tmp_path / "log.jsonl", lines)], tmp_path / "out")
    assert jsonl(out["dead_letters"]) == []
    refunds = [
        (s["stage"], s["amount"]) for s in jsonl(out["status_updates"]) if s["order_id"] == "q1"
    ]
    assert refunds == [("refund_issued", 12.5)]


# ------------------------------------------------------------------ state from before


SRC = "t#0"


def _cfg() -> StageConfig:
    return StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=(SRC,))


def _item(doc: dict, tie: str | None = None) -> Event:
    ev = EVENT_ADAPTER.validate_json(json.dumps(doc))
    return Event(to_us(ev.occurred_at), tie or event_tie(ev), ev)


def test_a_tie_from_before_content_digests_has_an_unknown_digest():
    ev = EVENT_ADAPTER.validate_json(json.dumps(DELIVERED))
    assert _tie_digest(event_tie(ev)) == (content_digest(ev) or 1)
    assert _tie_digest("rp-delivered|1a2b3c4d") == 0  # event_id|crc32 of the raw bytes
    assert _tie_digest("a|b|v0000abcd") == 0xABCD


def test_state_from_before_content_digests_forgets_its_raw_digests():
    """A snapshot whose header does not say ``digests: content`` holds raw-byte crc32s: loaded,
    they become unknown (0), so a re-published copy of an event remembered then is a counted
    duplicate (never compared with a digest of another kind); the next snapshot rewrites the
    entries and says content."""
    stage = CaseStage(0, _cfg())
    old = [_item(PLACED, "rp-placed|0badf00d"), _item(DELIVERED, "rp-delivered|12345678")]
    stage.on_batch([*old, Tick(SRC, old[-1].t + 1, old[-1].t)])
    assert [_digest_at(stage.cases["rp"].digests, i) for i in range(2)] == [0, 0]  # old ties
    stage.cases["rp"].digests = bytes.fromhex("0df0ad0b78563412")  # as the old code kept them
    header, entries = StageState(stage).full()
    assert unpack(header)["digests"] == CONTENT_DIGESTS
    doc = unpack(header)
    del doc["digests"]  # as written before content digests
    resumed = CaseStage(0, _cfg())
    state = StageState(resumed).track()
    state.load(pack(doc), entries, _cfg())
    assert resumed.cases["rp"].digests == bytes(8)
    header2, changed, _deleted = state.delta()
    assert unpack(header2)["digests"] == CONTENT_DIGESTS and "c:rp" in changed
    before = _duplicates()
    copy = _item({**DELIVERED, "occurred_at": "2026-10-03T13:00:00+02:00"})
    out = resumed.on_batch([copy, Tick(SRC, END, copy.t)])
    assert [p for r, p in out if r == "dlq"] == []
    assert _duplicates() - before == 1
