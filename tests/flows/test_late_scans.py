"""Scans uploaded late (README "Late scans"): a carrier scan behind its partition's watermark is
applied at the watermark (the case's history stays in event-time order), but the parcel was
delivered, or picked up, when the carrier says it was. Before, a ``delivered`` scan uploaded a
day late made an on-time parcel late by a day: its slippage, its case store document, and its
lane's delay rate (probe defect 3: carriers' handhelds upload in batches)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from bytewax.testing import cluster_main
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.connectors.broker import ensure_topics
from salvage.features.eventtime import HOUR_US, iso, to_us
from salvage.features.lane import LaneMonitor
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.runner import publish_log
from salvage.sinks.redis_store import CaseStore, RedisCaseSink
from tests.flowkit import plain_case_run
from tests.helpers import event, kafka_settings, order_placed

PROMISE = "2026-09-03T18:00:00Z"
DELIVERED = "2026-09-03T15:00:00Z"  # three hours before the promise
OTHERS = tuple(f"b{k}" for k in range(6))


def _scan(oid: str, i: int, at: str, code: str) -> dict:
    return event(f"{oid}-s{i}", "carrier_scan", oid, at, scan=code, courier="dhl")


def _log(path: Path, delay_h: int, others: tuple[str, ...] = OTHERS, tail: tuple = ()) -> Path:
    """Order ``a`` (promised 09-03 18:00) picked up, in transit, delivered at 15:00 on the
    promised day; its delivered scan filed ``delay_h`` hours late: behind scans of six other
    parcels of the lane (on the same carrier partition at ``topic_partitions=1``), whose clock
    then moves to 09-05 12:00, past the promise and the lane's judgement of ``a``."""
    docs = [
        order_placed("a", "2026-09-01T08:00:00Z", customer="ca", promised=PROMISE),
        _scan("a", 1, "2026-09-01T12:00:00Z", "picked_up"),
        _scan("a", 2, "2026-09-02T10:00:00Z", "in_transit"),
    ]
    scans = []
    for k, oid in enumerate(others):
        docs.append(order_placed(oid, "2026-09-02T09:00:00Z", customer=f"cb{k}",
                                 promised="2026-09-08T18:00:00Z"))  # fmt: skip
        # a scan of one of them every 3 h from 09-02 12:00 to 09-05 12:00: the partition's
        # clock moves in steps within its bound (6 h), so a scan filed behind it is late
        for i in range(k, 25, 6):
            at = to_us_iso("2026-09-02T12:00:00Z") + 3 * i * HOUR_US
            scans.append(_scan(oid, 1 + i, iso(at), "in_transit"))
    delivered = _scan("a", 3, DELIVERED, "delivered")
    uploaded = to_us_iso(DELIVERED) + delay_h * HOUR_US
    for doc in sorted(scans, key=lambda d: d["occurred_at"]):
        if delivered is not None and to_us_iso(doc["occurred_at"]) > uploaded:
            docs.append(delivered)  # filed when uploaded, not when scanned
            delivered = None
        docs.append(doc)
    if delivered is not None:
        docs.append(delivered)
    docs += tail
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def to_us_iso(at: str) -> int:
    return to_us(datetime.fromisoformat(at.replace("Z", "+00:00")))


def _lanes(loop) -> dict[str, LaneMonitor]:
    return {lane: m for stage in loop.stages["lanes"].values() for lane, m in stage.lanes.items()}


def _run_plain(log: Path) -> tuple[dict, list]:
    """(order ``a``'s last case document, [its lane record ``[promise, signal, delivered at,
    judged]``, the lane's judged and late totals]), by the plain loop on the file source."""
    loop, _, docs = plain_case_run(log)
    [monitor] = _lanes(loop).values()  # one lane
    return docs["a"], [monitor.shipments.get("a"), monitor.shipments_total, monitor.delayed_total]


# the lane judges a shipment LaneConfig.baseline_lag_us (a day) after its promise, on what it
# knows then: a delivery uploaded within it (here: up to 27 h after the 15:00 scan) counts
LANE_LAG_H = 27


@pytest.mark.parametrize("delay_h", [2, 8, 20, 40])
def test_a_delivered_scan_uploaded_late_keeps_its_own_time(tmp_path: Path, delay_h: int) -> None:
    """Filed 2 h late (before the next scan's time: in order), 8, 20 and 40 h late (behind the
    partition's watermark: applied at it, the last after the lane judged the parcel): the same
    delivery time and no slippage; on the lane, on time when uploaded before its judgement."""
    in_order, lane_in_order = _run_plain(_log(tmp_path / "a.jsonl", 0))
    doc, lane = _run_plain(_log(tmp_path / f"late{delay_h}.jsonl", delay_h))
    features = doc["features"]
    assert features["delivered"] == 1.0
    assert features["slippage_hours"] == 0.0  # before: 5 h at 8 h late, 17 h at 20 h late
    assert in_order["features"]["slippage_hours"] == 0.0
    rec, judged, late = lane
    assert rec is not None and rec[2] == to_us_iso(DELIVERED)  # the carrier's time
    assert lane_in_order[1:] == [1, 0]  # ``a`` judged, on time
    if delay_h < LANE_LAG_H:
        assert (judged, late) == (1, 0)  # before: late at 8 and 20 h
    else:  # undelivered when judged: late, as a parcel the carrier never scanned in time
        assert (judged, late) == (1, 1)


def test_the_late_scan_was_applied_at_the_watermark(tmp_path: Path) -> None:
    """The case's history stays in event-time order: the late scan's update is stamped with the
    watermark it was applied at (its ``updated_at``), while its delivery keeps the scan's time
    (``days_since_delivery`` counts from it)."""
    doc, _ = _run_plain(_log(tmp_path / "late.jsonl", 40))
    updated = to_us_iso(doc["updated_at"])
    assert updated > to_us_iso(DELIVERED) + 24 * HOUR_US
    days = doc["features"]["days_since_delivery"]
    assert days == pytest.approx((updated - to_us_iso(DELIVERED)) / (24 * HOUR_US))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 72))
def test_any_upload_delay_gives_the_in_order_delivery(delay_h: int) -> None:
    """Whatever the upload delay (up to three days, within the 7-day lateness bound): the
    delivery time, the slippage and the lane's judgement are those of the log in order."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        base, lane0 = _run_plain(_log(Path(tmp) / "a.jsonl", 0))
        doc, lane = _run_plain(_log(Path(tmp) / "b.jsonl", delay_h))
    assert doc["features"]["slippage_hours"] == base["features"]["slippage_hours"] == 0.0
    assert lane[0] is not None and lane[0][2] == to_us_iso(DELIVERED)
    if delay_h < LANE_LAG_H:
        assert lane[1:] == lane0[1:] == [1, 0]


@pytest.mark.integration
def test_kafka_mode_keeps_the_carriers_delivery_time(
    kafka_broker, tmp_path, unique_name, redis_url, redis_key_prefix
) -> None:
    """The same log through Kafka (the embedded broker, one partition per topic): the late
    scan is behind its partition's watermark there too, and the case store's document shows the
    parcel delivered on time (slippage 0), as the file run does."""
    log = _log(tmp_path / "late.jsonl", 40)
    s = kafka_settings(kafka_broker.bootstrap, unique_name("late"), shards=2, topic_partitions=1)
    ensure_topics(
        s.kafka.as_librdkafka_dict(),
        list(s.topics.inputs().values()) + s.topics.outputs(),
        1,
    )
    publish_log(s, log)
    sink = RedisCaseSink(redis_url, key_prefix=redis_key_prefix, ttl_seconds=600)
    spec = FlowSpec(
        s, to_end=True, case_store=False, out_dir=tmp_path / "out", extra_sinks={"cases": sink}
    )
    cluster_main(build_flow(spec), [], 0, worker_count_per_proc=1)
    got = CaseStore(redis_url, key_prefix=redis_key_prefix).get("a")
    assert got is not None
    doc = got["doc"]
    assert doc["features"]["delivered"] == 1.0
    assert doc["features"]["slippage_hours"] == 0.0
    late_file, _ = _run_plain(log)
    assert doc["features"] == late_file["features"]


def test_kafka_follow_mode_closes_on_the_carriers_delivery_time(
    kafka_broker, unique_name, salvage_cli, tmp_path
) -> None:
    """``salvage run --follow`` on the embedded broker (3 partitions; the other parcels on
    ``a``'s deliveries partition, so its delivered scan, filed 40 h late, is behind that
    partition's watermark there too): ``a`` is kept, its return window run out 30 days after the
    carrier's delivery time (before: after the watermark's, 40 h later), as in file mode. The log
    ends with the drain's signal (an ``unknown_order``: a refund for a case long closed)."""
    from salvage.connectors.partitioning import partition_of
    from tests.flowkit import jsonl, run_file_flow
    from tests.helpers import dead_letter_ids, drain_when, start_follow

    part = partition_of("a", 3)
    others = tuple(f"b{i}" for i in range(200) if partition_of(f"b{i}", 3) == part)[:6]
    tail = (
        order_placed("o9", "2026-09-01T09:00:00Z", customer="c9"),
        event("o9-f1", "refund_issued", "o9", "2026-09-01T12:00:00Z", amount=80.0, currency="EUR"),
        event("o9-late", "refund_issued", "o9", "2026-11-30T12:00:00Z", amount=80.0,
              currency="EUR"),
    )  # fmt: skip
    log = _log(tmp_path / "late.jsonl", 40, others, tail)
    settings = kafka_settings(kafka_broker.bootstrap, unique_name("late-follow"))
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, log, tmp_path / "k")
    dead = drain_when(proc, settings, settings.topics.dead_letters, bool)
    assert dead_letter_ids(dead) == [("unknown_order", "o9-late")]
    closed = {o["order_id"]: o for o in jsonl((tmp_path / "k" / "outcomes.jsonl").read_bytes())}
    assert (closed["a"]["outcome"], closed["a"]["closed_at"]) == ("kept", "2026-10-03T15:00:00Z")
    in_file = run_file_flow([log], tmp_path / "file", topic_partitions=3)
    assert closed["a"] == next(o for o in jsonl(in_file["outcomes"]) if o["order_id"] == "a")


def _judged(log: Path) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
    """(each order's last slippage, each lane's (judged, late)) by the plain loop."""
    loop, _, docs = plain_case_run(log, partitions=3)
    slippage = {o: d["features"]["slippage_hours"] for o, d in docs.items()}
    return slippage, {
        lane: (m.shipments_total, m.delayed_total) for lane, m in _lanes(loop).items()
    }


def test_a_carrier_that_uploads_in_batches_is_judged_as_one_that_does_not(tmp_path: Path) -> None:
    """The simulator's ``batch-uploads`` variant: parcelgo's scans appear at the next 4-hourly
    upload, behind the other carriers' (the same lines in another order). Every order's slippage
    and every lane's judgements are those of the log without it (before: 12 of 2,000 orders
    with a slippage of up to 4 h that was not there)."""
    from salvage.connectors.simulator import BATCH_UPLOAD_COURIER
    from tests.flowkit import sim_log

    base = sim_log(tmp_path, "steady-state", orders=2000, seed=5)
    batched = sim_log(tmp_path, "steady-state", orders=2000, seed=5, variants=("batch-uploads",))
    lines = batched.read_bytes().splitlines()
    assert sorted(lines) == sorted(base.read_bytes().splitlines())
    docs = [json.loads(x) for x in lines]
    behind = sum(  # lines filed after a later event of the log: applied late, per partition
        1
        for i, d in enumerate(docs)
        if d.get("courier") == BATCH_UPLOAD_COURIER
        and d["event_type"] == "carrier_scan"
        and i
        and d["occurred_at"] < docs[i - 1]["occurred_at"]
    )
    assert behind > 500
    slippage, lanes = _judged(base)
    assert _judged(batched) == (slippage, lanes)
    assert any(lane.startswith(BATCH_UPLOAD_COURIER) and n for lane, (n, _) in lanes.items())
