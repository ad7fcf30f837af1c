"""A closed case is not forgotten while an event of it waits in the reorder buffer.

In ``--follow`` mode a partition's last event stays in the case shard's buffer (the watermark is
its time minus the reorder tolerance, and checked clocks bring the other partitions there) until
every upstream is idle. When that event is far ahead of the case's close (a grade 83 days after
the refund: past the retention of the longer of 30 days and the settled grace), the watermark
that stopped just below it used to forget the closed case first; the event was then taken for
one of an order not seen yet and parked for its order_placed, waiting for event time to move on
every input: in a quiet stream, for good (never applied, never a dead letter, not at the drain
either). A file, whose watermark reaches it in the same step, made it an ``unknown_order`` dead
letter ("case closed"). Now both do."""

from __future__ import annotations

import base64
import json

from salvage.connectors.events import EVENT_ADAPTER
from salvage.features.eventtime import END, IDLE, to_us
from salvage.flows.messages import Event, Tick
from salvage.flows.stages import CaseStage, StageConfig
from salvage.flows.state import StageState
from tests.flowkit import jsonl, run_file_flow
from tests.helpers import dead_letters_at_drain, event, kafka_settings, order_placed, start_follow

CLOSED = "case closed at 2026-03-08T10:00:00Z"


def _docs() -> list[dict]:
    """An order refunded on 03-08, then graded on 05-30. On the returns partition the request
    is the first event (exempt from the clock bound), then three events each more than 6 h
    (SALVAGE_MAX_CLOCK_JUMP_SECONDS) after the one before: they confirm the jump together, so
    the grade is applied at once (not held) and is the partition's last event."""
    ret = {"return_id": "R1"}
    return [
        order_placed("o1", "2026-03-02T10:00:00Z", price=120.0),
        event(
            "o1-d", "carrier_scan", "o1", "2026-03-04T09:00:00Z", scan="delivered", courier="dhl"
        ),
        event(
            "o1-req",
            "return_requested",
            "o1",
            "2026-03-05T10:00:00Z",
            **ret,
            reason="too_small",
            items=[{"sku": "sku-1", "qty": 1}],
            preferred_resolution="refund",
        ),
        event("o1-recv", "return_received", "o1", "2026-03-07T10:00:00Z", **ret),
        event(
            "o1-f1",
            "refund_issued",
            "o1",
            "2026-03-08T10:00:00Z",
            **ret,
            amount=120.0,
            currency="EUR",
        ),
        event("o1-late", "return_graded", "o1", "2026-05-30T10:00:00Z", **ret, grade="B"),
    ]


def _events(docs: list[dict]) -> list[Event]:
    items = []
    for d in docs:
        ev = EVENT_ADAPTER.validate_json(json.dumps(d))
        items.append(Event(to_us(ev.occurred_at), ev.event_id, ev))
    return items


def _dead(out) -> list[tuple[str, str | None, str]]:
    return [(p.kind.value, p.event_id, p.message) for r, p in out if r == "dlq"]


def test_the_case_stage_remembers_a_closed_case_for_its_buffered_late_event() -> None:
    """What ``--follow`` feeds the case shard: every input's watermark up to 60 s (the reorder
    tolerance) before the last event, then every input idle at its clock."""
    sources = ("returns#0", "orders#0")
    cfg = StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=sources)
    items = _events(_docs())
    last = items[-1].t
    whole = CaseStage(0, cfg)  # a file: released in one step
    expected = _dead(whole.on_batch([*items, *(Tick(s, END, last) for s in sources)]))
    assert expected == [("unknown_order", "o1-late", CLOSED)]

    stage = CaseStage(0, cfg)
    first = stage.on_batch([*items, *(Tick(s, last - 60_000_000, last) for s in sources)])
    assert _dead(first) == [] and len(stage.reorderer) == 1  # the grade waits in the buffer
    assert "o1" in stage.tombstones  # its retention ended on 04-22: remembered all the same
    # ... also across a snapshot
    header, entries = StageState(stage).full()
    loaded = CaseStage(0, cfg)
    StageState(loaded).load(header, entries, cfg)
    assert loaded.tomb_sweep == stage.tomb_sweep
    for s in (stage, loaded):
        out = s.on_batch([Tick(src, IDLE, last) for src in sources])
        assert _dead(out) == expected
        assert s.orphans == {} and "o1" not in s.tombstones  # applied, then forgotten


def test_the_last_event_of_a_closed_case_in_kafka_follow_mode(
    kafka_broker, unique_name, salvage_cli, tmp_path
):
    """``salvage run --follow`` on the embedded broker gives the dead letter file mode gives,
    once its inputs are caught up and quiet (it used to wait for good)."""
    log = tmp_path / "tail.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in _docs()))
    file_mode = jsonl(run_file_flow([log], tmp_path / "file-out")["dead_letters"])
    expected = [(d["kind"], d["event_id"], d["message"]) for d in file_mode]
    assert expected == [("unknown_order", "o1-late", CLOSED)]

    settings = kafka_settings(kafka_broker.bootstrap, unique_name("tail"))
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, log, tmp_path / "kafka-out")
    dead = dead_letters_at_drain(proc, settings, timeout_s=45)
    got = [(d["kind"], d["event_id"], d["message"]) for d in dead]
    assert got == expected
    assert json.loads(base64.b64decode(dead[0]["raw_b64"]))["grade"] == "B"
