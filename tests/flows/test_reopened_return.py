"""A return requested again after a cancelled one, through the whole flow, in file mode and in
Kafka ``--follow`` mode: the second return is open, so the case stays open past the return
window while it is pending, its journey is announced under its own return id, and its refund
closes the case as a refund (no dead letter, no close as cancelled). ``test_order_case.py``
checks the state machine alone."""

from __future__ import annotations

import json
from pathlib import Path

from tests.flowkit import jsonl, run_file_flow
from tests.helpers import (
    drain_when,
    event,
    kafka_settings,
    order_placed,
    read_to_end,
    start_follow,
)


def _requested(event_id: str, at: str, return_id: str) -> dict:
    return event(
        event_id,
        "return_requested",
        "o4",
        at,
        return_id=return_id,
        reason="too_small",
        items=[{"sku": "sku-1", "qty": 1}],
        preferred_resolution="refund",
    )


def _log(tmp_path: Path) -> Path:
    docs = [
        order_placed("o4", "2026-03-02T10:00:00Z"),
        event("d", "carrier_scan", "o4", "2026-03-04T10:00:00Z", scan="delivered", courier="dhl"),
        _requested("r1", "2026-03-05T10:00:00Z", "R1"),
        event("x1", "return_cancelled", "o4", "2026-03-06T10:00:00Z", return_id="R1"),
        _requested("r2", "2026-03-10T10:00:00Z", "R2"),
        event(
            "l2",
            "return_label_issued",
            "o4",
            "2026-03-10T12:00:00Z",
            return_id="R2",
            label_cost=5.0,
            courier="dhl",
        ),
        event("r3", "return_received", "o4", "2026-03-12T10:00:00Z", return_id="R2"),
        event("g2", "return_graded", "o4", "2026-03-13T10:00:00Z", return_id="R2", grade="A"),
        # refunded after the return window (delivery + 30 days) ended: the return was pending
        event("rf", "refund_issued", "o4", "2026-04-21T10:00:00Z", amount=80.0, currency="EUR"),
        # another order's events carry the watermark past the refund
        order_placed("o5", "2026-04-25T10:00:00Z", customer="c2"),
    ]
    log = tmp_path / "reopened.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return log


STAGES = [("R2", "label_issued"), ("R2", "received"), ("R2", "graded"), ("R2", "refund_issued")]


def _check(outcomes: list[dict], updates: list[dict], dead: list[dict]) -> None:
    assert dead == []
    (outcome,) = [o for o in outcomes if o["order_id"] == "o4"]
    assert (outcome["outcome"], outcome["closed_at"]) == ("refund", "2026-04-21T10:00:00Z")
    assert outcome["refunded_amount"] == 80.0 and not outcome["retained"]
    assert [(u["return_id"], u["stage"]) for u in updates] == STAGES


def test_a_return_asked_again_after_a_cancel_is_followed_to_its_refund(tmp_path: Path) -> None:
    out = run_file_flow([_log(tmp_path)], tmp_path / "out")
    _check(jsonl(out["outcomes"]), jsonl(out["status_updates"]), jsonl(out["dead_letters"]))


def test_the_same_in_kafka_follow_mode(kafka_broker, unique_name, salvage_cli, tmp_path):
    suffix = unique_name("reopened")
    settings = kafka_settings(
        kafka_broker.bootstrap, suffix, topic_status_updates=f"return-status-{suffix}"
    )
    out_dir = tmp_path / "kafka-out"
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, _log(tmp_path), out_dir)
    topic = settings.topics.status_updates
    # the refund's update comes last
    updates = drain_when(proc, settings, topic, lambda got: len(got) >= len(STAGES))
    updates.sort(key=lambda u: u["occurred_at"])  # (one per partition order across partitions)
    outcomes = jsonl((out_dir / "outcomes.jsonl").read_bytes())
    _check(outcomes, updates, read_to_end(settings, settings.topics.dead_letters, quiet_s=0.5))
