"""The case stage sends a lane monitor one "shipped" fact per shipment (``OrderCase.lane_noted``),
not one per carrier scan: a run that sends every scan's fact emits exactly the same outputs, and
leaves every lane monitor in the same state. The repeats the monitor ignores include facts about
shipments it has already judged and dropped (``LaneMonitor.observe``: past every window)."""

from __future__ import annotations

import json
import pickle
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from salvage.config import Settings
from salvage.connectors.events import OrderLine, OrderPlaced
from salvage.connectors.simulator import write_log
from salvage.features.eventtime import DAY_US, HOUR_US
from salvage.features.lane import LaneConfig, LaneMonitor
from salvage.features.order_case import OrderCase
from salvage.flows.messages import Batch, Event
from salvage.flows.plain import PlainLoop
from salvage.flows.sources import file_part_id
from salvage.flows.stages.case import CaseStage
from salvage.flows.topology import stage_config
from tests.features.test_lane_reference import CONFIGS
from tests.flowkit import feed_log

# alert-prone, with windows short enough that scans arrive after a shipment left them all
LANES = (
    LaneConfig(),
    replace(CONFIGS[-1], windows_us=(6 * HOUR_US, DAY_US)),  # the alert-prone one
)
STATE = [f.name for f in fields(LaneMonitor) if f.name != "index"]


def _run(log: Path, lane: LaneConfig) -> tuple[list, list, dict[str, tuple], int]:
    """Outputs (ordered), taps (sorted), each lane monitor's state at the end, lane facts sent."""
    s = Settings(redis_url="", shards=2, metrics_port=0)
    cfg = replace(
        stage_config(s, (file_part_id(0, log),), case_records=True, score_log=True), lane=lane
    )
    outputs: list[tuple[str, str]] = []
    taps: list[str] = []
    facts = 0

    def dump(payload: Any) -> str:
        if hasattr(payload, "model_dump_json"):
            return payload.model_dump_json()
        return json.dumps(payload, sort_keys=True, default=repr)

    def inspect(name: str, key: str, items: list) -> None:
        nonlocal facts
        if name == "lanes":
            for item in items:
                facts += len(item.items) if type(item) is Batch else type(item) is Event

    loop = PlainLoop(
        cfg,
        lambda k, p: outputs.append((k, dump(p))),
        lambda r, p: taps.append(f"{r}|{dump(p)}"),
        inspect,
    )
    feed_log(loop, log, s)
    monitors = {
        lane: tuple(pickle.dumps(getattr(m, f)) for f in STATE)
        for stage in loop.stages["lanes"].values()
        for lane, m in stage.lanes.items()
    }
    return outputs, sorted(taps), monitors, facts


def _rescanned(log: Path, after: timedelta) -> None:
    """Each delivered parcel scanned once more ``after`` its promise (in transit, no ETA: a
    carrier's stray scan), each such line placed in the log by its time."""
    events = [json.loads(x) for x in log.read_text().splitlines()]
    promised = {e["order_id"]: e["promised_delivery_at"] for e in events if "lines" in e}
    extra = []
    for e in events:
        if e["event_type"] == "carrier_scan" and e["scan"] == "delivered":
            at = datetime.fromisoformat(promised[e["order_id"]]) + after
            scan = {**e, "scan": "in_transit", "event_id": e["event_id"] + "-again"}
            scan["occurred_at"] = at.isoformat().replace("+00:00", "Z")
            scan.pop("estimated_delivery_at", None)
            extra.append(scan)
    extra.sort(key=lambda e: e["occurred_at"])
    lines, i = [], 0
    for e in events:
        while i < len(extra) and extra[i]["occurred_at"] < e["occurred_at"]:
            lines.append(extra[i])
            i += 1
        lines.append(e)
    lines += extra[i:]
    log.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in lines))


@pytest.mark.parametrize("lane", LANES, ids=["default", "short-windows"])
@pytest.mark.parametrize(
    "scenario", ["silent-carrier-incident", "launch-week-backlog", "rescanned-steady-state"]
)
def test_repeated_shipped_facts_are_not_sent(
    tmp_path: Path, scenario: str, lane: LaneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / f"{scenario}.jsonl"
    write_log(scenario.removeprefix("rescanned-"), 400, 7, log)
    if scenario.startswith("rescanned-"):  # scans after every window: repeats of dropped ones
        _rescanned(log, timedelta(days=10))
    outputs, taps, monitors, facts = _run(log, lane)

    # the reference: every scan and shipment sends its fact, as before lane_noted
    send_all = CaseStage._lane_fact

    def every_fact(stage: CaseStage, case, ev, t: int, changes: list[str]) -> None:
        case.lane_noted = False
        send_all(stage, case, ev, t, changes)

    repeats_after_windows = 0  # "shipped" repeats of a shipment the monitor dropped
    observe = LaneMonitor.observe

    def counted(
        m: LaneMonitor, t: int, oid: str, promise: int, kind: str, cfg, at: int = 0
    ) -> None:
        nonlocal repeats_after_windows
        if kind == "shipped" and oid not in m.shipments and 0 < promise <= t - cfg.windows_us[-1]:
            repeats_after_windows += 1
        observe(m, t, oid, promise, kind, cfg, at)

    monkeypatch.setattr(CaseStage, "_lane_fact", every_fact)
    monkeypatch.setattr(LaneMonitor, "observe", counted)
    all_outputs, all_taps, all_monitors, all_facts = _run(log, lane)

    assert facts < all_facts * 0.7, (facts, all_facts)  # repeats were sent before
    alerts = [p for k, p in outputs if k == "alert"]
    if lane is LANES[1]:
        assert alerts  # else the comparison proves little
    if scenario.startswith("rescanned-"):  # (the simulator's scenarios have none)
        assert repeats_after_windows > 0  # the dropped-then-scanned-again path ran
    assert all_outputs == outputs
    assert all_taps == taps
    assert all_monitors == monitors


def test_a_new_placement_sends_the_lane_again() -> None:
    """``lane_noted`` is cleared by a placement: its lane and promise may differ."""
    case = OrderCase("o1")
    case.lane_noted = True
    case.promised_at = 5 * DAY_US
    assert OrderCase("o1").lane_noted is False
    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    placed = OrderPlaced(
        event_id="e1",
        event_type="order_placed",
        order_id="o1",
        occurred_at=at,
        schema_version=1,
        customer_id="c1",
        channel="web",
        currency="EUR",
        lines=[OrderLine(sku="s1", sku_family="tops", qty=1, unit_price=40.0, unit_cost=15.0)],
        promised_delivery_at=datetime(2026, 3, 4, 18, tzinfo=UTC),
        courier="dhl",
        origin_region="DE",
        destination_region="FR",
    )
    case.apply(placed, 0, 30 * DAY_US)
    assert case.lane_noted is False and case.lane == "dhl:DE>FR"
