"""The case stage keeps each open case's payload digests (4 bytes per id) parallel to the event
ids it remembers (``OrderCase.seen``, ``_remember_digest``), also when the oldest id is forgotten
and when a restored case has no digests."""

from __future__ import annotations

import json

from salvage.connectors.events import EVENT_ADAPTER
from salvage.features.eventtime import to_us
from salvage.features.order_case import MAX_SEEN_IDS
from salvage.flows.messages import Event, Tick
from salvage.flows.stages import CaseStage, StageConfig
from salvage.flows.stages.case import _digest_at
from tests.helpers import event, order_placed

SRC = "t#0"


def _events(n_scans: int) -> list[Event]:
    docs = [order_placed("o1", "2026-03-02T10:00:00Z")]
    for i in range(n_scans):
        minute = f"{i // 60 % 24:02d}:{i % 60:02d}"
        day = 3 + i // 1440
        docs.append(
            event(
                f"s{i}",
                "carrier_scan",
                "o1",
                f"2026-03-{day:02d}T{minute}:00Z",
                scan="in_transit",
                courier="dhl",
            )
        )
    items = []
    for i, d in enumerate(docs):
        ev = EVENT_ADAPTER.validate_json(json.dumps(d))
        # the source's tiebreak: event id | v + its content digest (here: a made-up one)
        items.append(Event(to_us(ev.occurred_at), f"{ev.event_id}|v{i + 0x1000:08x}", ev))
    return items


def _digest_of(event_id: str, items: list[Event]) -> int:
    tie = next(e.tie for e in items if e.payload.event_id == event_id)
    return int(tie.rpartition("|")[2][1:], 16)


def _stage() -> CaseStage:
    return CaseStage(0, StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=(SRC,)))


def _aligned(case, items: list[Event]) -> bool:
    return len(case.digests) == 4 * len(case.seen) and all(
        _digest_at(case.digests, i) == _digest_of(eid, items) for i, eid in enumerate(case.seen)
    )


def test_digests_follow_the_remembered_ids_past_the_limit() -> None:
    items = _events(MAX_SEEN_IDS + 20)  # the oldest 21 ids are forgotten on the way
    stage = _stage()
    stage.on_batch([*items, Tick(SRC, items[-1].t + 1, items[-1].t)])
    case = stage.cases["o1"]
    assert len(case.seen) == MAX_SEEN_IDS and case.seen[0] == "s20"
    assert _aligned(case, items)


def test_a_case_restored_without_digests_gets_unknown_ones_then_real_ones() -> None:
    items = _events(5)
    stage = _stage()
    stage.on_batch([*items[:4], Tick(SRC, items[3].t + 1, items[3].t)])
    case = stage.cases["o1"]
    assert _aligned(case, items)
    case.digests = b""  # as a case from a snapshot taken before digests existed
    stage.on_batch([*items[4:], Tick(SRC, items[-1].t + 1, items[-1].t)])
    assert len(case.digests) == 4 * len(case.seen) == 4 * 6
    # unknown (0) for the ids applied before, then the digests of s3 and s4
    known = [_digest_of("s3", items), _digest_of("s4", items)]
    assert [_digest_at(case.digests, i) for i in range(6)] == [0] * 4 + known
