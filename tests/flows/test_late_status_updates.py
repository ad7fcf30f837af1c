"""A returns event uploaded late (a warehouse's batch export) is applied at its partition's
watermark, but the status update it causes says when it happened (README "Late scans"). Before,
the update carried the watermark's time: a parcel received at 10:00 and exported at 15:00 was
announced as received at 15:00 (a probe on an independent brand: 142 of 1,903 updates, up to
1.2 h off)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flowkit import jsonl, run_file_flow
from tests.helpers import event, order_placed


def _log(tmp_path: Path, export_h: int, other: str = "o5") -> Path:
    """o4's return: label 03-10 12:00, received 03-12 10:00, graded 03-13 10:00, refunded 03-14
    10:00; its received event filed ``export_h`` hours late, behind other returns of the same
    (one) partition every hour."""
    docs = [
        order_placed("o4", "2026-03-02T10:00:00Z"),
        event("d", "carrier_scan", "o4", "2026-03-04T10:00:00Z", scan="delivered", courier="dhl"),
        event("r", "return_requested", "o4", "2026-03-10T10:00:00Z", return_id="R4",
              reason="too_small", items=[{"sku": "sku-1", "qty": 1}],
              preferred_resolution="refund"),
        event("l", "return_label_issued", "o4", "2026-03-10T12:00:00Z", return_id="R4",
              label_cost=5.0, courier="dhl"),
    ]  # fmt: skip
    # another order's returns stream, one event an hour from 03-12 08:00 (its return in transit)
    docs += [order_placed(other, "2026-03-02T11:00:00Z", customer="c5")]
    ticks = [
        event(f"t{h}", "return_in_transit", other, f"2026-03-12T{h:02d}:00:00Z", return_id="R5")
        for h in range(8, 24)
    ]
    received = event("rc", "return_received", "o4", "2026-03-12T10:00:00Z", return_id="R4")
    for tick in ticks:
        if received is not None and tick["occurred_at"] > f"2026-03-12T{10 + export_h:02d}:00:00Z":
            docs.append(received)
            received = None
        docs.append(tick)
    docs += [
        event("g", "return_graded", "o4", "2026-03-13T10:00:00Z", return_id="R4", grade="A"),
        event("f", "refund_issued", "o4", "2026-03-14T10:00:00Z", amount=80.0, currency="EUR"),
    ]
    log = tmp_path / f"late{export_h}.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return log


@pytest.mark.parametrize("export_h", [0, 3, 5])
def test_a_status_update_says_when_its_event_happened(tmp_path: Path, export_h: int) -> None:
    out = run_file_flow([_log(tmp_path, export_h)], tmp_path / "out", topic_partitions=1)
    updates = {u["stage"]: u for u in jsonl(out["status_updates"]) if u["order_id"] == "o4"}
    # before: 12:59 and 14:59 when filed 3 and 5 h late (the watermark)
    assert updates["received"]["occurred_at"] == "2026-03-12T10:00:00Z"
    assert updates["graded"]["occurred_at"] == "2026-03-13T10:00:00Z"
    late = jsonl(out["dead_letters"])
    assert late == []


def test_the_same_in_kafka_follow_mode(kafka_broker, unique_name, salvage_cli, tmp_path) -> None:
    """``salvage run --follow`` on the embedded broker (3 partitions): the other order's returns
    share o4's partition, so the received event is behind that partition's watermark there too;
    its status update says 10:00, as in file mode."""
    from salvage.connectors.partitioning import partition_of
    from tests.helpers import drain_when, kafka_settings, start_follow

    other = next(
        f"o{i}" for i in range(5, 500) if partition_of(f"o{i}", 3) == partition_of("o4", 3)
    )
    log = _log(tmp_path, 5, other)
    suffix = unique_name("late-status")
    settings = kafka_settings(
        kafka_broker.bootstrap, suffix, topic_status_updates=f"return-status-{suffix}"
    )
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, log, tmp_path / "k")

    def mine(got: list[dict]) -> dict[str, dict]:
        return {u["stage"]: u for u in got if u["order_id"] == "o4"}

    updates = drain_when(
        proc, settings, settings.topics.status_updates, lambda got: "refund_issued" in mine(got)
    )
    file_out = run_file_flow([log], tmp_path / "file", topic_partitions=3)
    expected = mine(jsonl(file_out["status_updates"]))
    assert mine(updates)["received"]["occurred_at"] == "2026-03-12T10:00:00Z"
    assert mine(updates) == expected
