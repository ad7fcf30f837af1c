"""A return requested again after a cancelled one, through the whole file-mode flow: the second
return is open, so the case stays open past the return window while it is pending, its journey
is announced under its own return id, and its refund closes the case as a refund (no dead
letter, no close as cancelled). ``test_order_case.py`` checks the state machine alone."""

from __future__ import annotations

import json
from pathlib import Path

from tests.flowkit import jsonl, run_file_flow
from tests.helpers import event, order_placed


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


def test_a_return_asked_again_after_a_cancel_is_followed_to_its_refund(tmp_path: Path) -> None:
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
    out = run_file_flow([log], tmp_path / "out")
    assert jsonl(out["dead_letters"]) == []
    (outcome,) = [o for o in jsonl(out["outcomes"]) if o["order_id"] == "o4"]
    assert (outcome["outcome"], outcome["closed_at"]) == ("refund", "2026-04-21T10:00:00Z")
    assert outcome["refunded_amount"] == 80.0 and not outcome["retained"]
    stages = [(u["return_id"], u["stage"]) for u in jsonl(out["status_updates"])]
    assert stages == [
        ("R2", "label_issued"),
        ("R2", "received"),
        ("R2", "graded"),
        ("R2", "refund_issued"),
    ]
