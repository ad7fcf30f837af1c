"""Probe 3, defects 7, 8 and 15, through file mode (hand-written logs after the probe's repros).

* 7: goodwill naming no return, paid while a refund return is on its way, is goodwill: the
  return's journey goes on (no dead letters, no false ``refund_before_grading``), and its refund
  settles the case.
* 8: money going back after the close (another return's refund after an exchange, a chargeback
  after a return cancelled) makes the ``outcome_amended`` line ``retained: false`` and
  ``salvage uplift`` counts the order lost; an exchange's price difference does not.
* 15: a 0.00 refund (a return denied) closes the case kept, announces no refund.
"""

from __future__ import annotations

import json
from pathlib import Path

from salvage.flows.state import _amendable
from salvage.sinks import kpis
from salvage.uplift import fold_outcomes, load_units
from tests.flowkit import jsonl, run_file_flow
from tests.helpers import event, metric_total, order_placed


def _write(path: Path, docs: list[dict]) -> Path:
    docs.sort(key=lambda d: d["occurred_at"])
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _delivered(oid: str, customer: str, price: float = 100.0, qty: int = 1) -> list[dict]:
    return [
        order_placed(oid, "2026-03-02T10:00:00Z", customer=customer, price=price, qty=qty),
        event(f"{oid}-d", "carrier_scan", oid, "2026-03-04T09:00:00Z", scan="delivered",
              courier="dhl"),
    ]  # fmt: skip


def _request(oid: str, rid: str, at: str, reason: str, resolution: str) -> dict:
    return event(f"{oid}-{rid}-req", "return_requested", oid, at, return_id=rid, reason=reason,
                 items=[{"sku": "sku-1", "qty": 1}], preferred_resolution=resolution)  # fmt: skip


def _step(oid: str, rid: str, kind: str, at: str, **fields) -> dict:
    return event(f"{oid}-{rid}-{kind}", kind, oid, at, return_id=rid, **fields)


def _money(eid: str, oid: str, kind: str, at: str, amount: float, rid: str | None = None) -> dict:
    named = {"return_id": rid} if rid else {}
    return event(eid, kind, oid, at, amount=amount, currency="EUR", **named)


def test_goodwill_while_a_refund_return_is_open_and_a_zero_refund(tmp_path: Path) -> None:
    """gw: a 10.00 apology (cash) naming no return while its refund return is open, then the
    return's label, transit, receipt, grade and its 100.00 refund; gc: the same with a store
    credit; z0: a worn return refunded 0.00. Before: gw closed as a 10.00 refund at the apology
    (status "refund_issued 10.0", a refund_before_grading alert, 3 unknown_order dead letters),
    gc closed store_credit (retained), z0 closed as a refund and said "refund_issued 0.0"."""
    docs = [*_delivered("gw", "c1"), *_delivered("gc", "c2"), *_delivered("z0", "c3")]
    for oid in ("gw", "gc"):
        kind = "refund_issued" if oid == "gw" else "store_credit_issued"
        docs += [
            _request(oid, "RG", "2026-03-05T10:00:00Z", "changed_mind", "refund"),
            _money(f"{oid}-goodwill", oid, kind, "2026-03-05T18:00:00Z", 10.0),
            _step(oid, "RG", "return_label_issued", "2026-03-06T10:00:00Z", courier="dhl"),
            _step(oid, "RG", "return_in_transit", "2026-03-07T10:00:00Z"),
            _step(oid, "RG", "return_received", "2026-03-09T10:00:00Z"),
            _step(oid, "RG", "return_graded", "2026-03-10T10:00:00Z", grade="A"),
            _money(f"{oid}-refund", oid, "refund_issued", "2026-03-11T10:00:00Z", 100.0, "RG"),
        ]
    docs += [
        _request("z0", "RZ", "2026-03-05T10:00:00Z", "changed_mind", "refund"),
        _step("z0", "RZ", "return_received", "2026-03-08T10:00:00Z"),
        _step("z0", "RZ", "return_graded", "2026-03-09T10:00:00Z", grade="B", abuse_flags=["worn"]),
        _money("z0-refund", "z0", "refund_issued", "2026-03-09T12:00:00Z", 0.0, "RZ"),
    ]
    kpis.configure()
    before = {
        o: metric_total("salvage_cases_closed_total", outcome=o)
        for o in ("refund", "kept", "store_credit")
    }
    goodwill0 = metric_total("salvage_goodwill_total")
    out = run_file_flow([_write(tmp_path / "log.jsonl", docs)], tmp_path / "out")
    assert jsonl(out["dead_letters"]) == []
    assert jsonl(out["journey_alerts"]) == []
    stages = [(s["order_id"], s["stage"], s.get("amount")) for s in jsonl(out["status_updates"])]
    for oid in ("gw", "gc"):
        assert [(st, amount) for o, st, amount in stages if o == oid] == [
            ("label_issued", None),
            ("picked_up", None),
            ("received", None),
            ("graded", None),
            ("refund_issued", 100.0),
        ]
    assert [st for o, st, _ in stages if o == "z0"] == ["received", "graded"]  # no refund
    closed = {
        o: round(metric_total("salvage_cases_closed_total", outcome=o) - before[o], 2)
        for o in before
    }
    assert closed == {"refund": 2.0, "kept": 1.0, "store_credit": 0.0}
    assert round(metric_total("salvage_goodwill_total") - goodwill0, 2) == 20.0
    outcomes = fold_outcomes(jsonl(out["outcomes"]))
    got = {oid: (o["outcome"], o["retained"], o["refunded_amount"]) for oid, o in outcomes.items()}
    # (assigned: a changed-mind return gets the exchange offer; gw's money includes its goodwill
    # cash, as salvage_refunded_total does)
    assert got == {
        "gw": ("refund", False, 110.0),
        "gc": ("refund", False, 100.0),
        "z0": ("kept", True, 0.0),
    }


def test_money_after_the_close_ends_retention_but_an_exchange_difference(tmp_path: Path) -> None:
    """(Each customer asked for a refund and took the exchange offered, or cancelled.)
    ex: two returns, the first exchanged (the case closes), the other refunded 100.00 after;
    pd: an exchange, then 8.00 of price difference refunded for it; cb: a return cancelled
    (closed at the end of the window), then charged back. Before, every amendment restated
    ``retained: true`` and salvage uplift counted ex and cb retained."""
    docs = [*_delivered("ex", "c1", qty=2), *_delivered("pd", "c2"), *_delivered("cb", "c3")]
    docs += [
        _request("ex", "RA", "2026-03-05T10:00:00Z", "too_small", "refund"),
        _request("ex", "RB", "2026-03-06T10:00:00Z", "too_small", "refund"),
        _step("ex", "RA", "return_received", "2026-03-09T10:00:00Z"),
        _step("ex", "RA", "exchange_completed", "2026-03-10T12:00:00Z", new_sku="sku-2"),
        _step("ex", "RB", "return_received", "2026-03-11T10:00:00Z"),
        _money("ex-refund-B", "ex", "refund_issued", "2026-03-13T10:00:00Z", 100.0, "RB"),
        _request("pd", "R1", "2026-03-05T10:00:00Z", "too_small", "refund"),
        _step("pd", "R1", "return_received", "2026-03-09T10:00:00Z"),
        _step("pd", "R1", "exchange_completed", "2026-03-10T12:00:00Z", new_sku="sku-2"),
        _money("pd-diff", "pd", "refund_issued", "2026-03-12T10:00:00Z", 8.0, "R1"),
        _request("cb", "R1", "2026-03-05T10:00:00Z", "too_small", "refund"),
        _step("cb", "R1", "return_cancelled", "2026-03-06T10:00:00Z"),
        event(
            "cb-chargeback",
            "chargeback_filed",
            "cb",
            "2026-04-10T10:00:00Z",
            amount=100.0,
            currency="EUR",
            reason="not_as_described",
        ),
        order_placed("tail", "2026-04-20T10:00:00Z", customer="c9"),  # moves the watermark on
    ]
    out = run_file_flow([_write(tmp_path / "log.jsonl", docs)], tmp_path / "out")
    assert jsonl(out["dead_letters"]) == []
    lines = jsonl(out["outcomes"])
    summary = [
        (o["order_id"], o["outcome"], o["retained"], o["refunded_amount"], o.get("record", ""))
        for o in lines
        if o["order_id"] in ("ex", "pd", "cb")
    ]
    assert sorted(summary) == sorted(
        [
            ("ex", "exchange", True, 0.0, ""),
            ("ex", "exchange", False, 100.0, "outcome_amended"),
            ("pd", "exchange", True, 0.0, ""),
            ("pd", "exchange", True, 8.0, "outcome_amended"),
            ("cb", "return_cancelled", True, 0.0, ""),
            ("cb", "return_cancelled", False, 100.0, "outcome_amended"),
        ]
    )
    (tmp_path / "out" / "assignments.jsonl").write_bytes(out["assignments"])
    (tmp_path / "out" / "outcomes.jsonl").write_bytes(out["outcomes"])
    units = {u.order_id: (u.retained, u.refunded) for u in load_units(tmp_path / "out")}
    assert {k: units[k] for k in ("ex", "pd", "cb")} == {
        "ex": (False, 100.0),
        "pd": (True, 8.0),
        "cb": (False, 100.0),
    }


def test_an_order_is_retained_only_if_no_outcome_line_says_otherwise() -> None:
    close = {"order_id": "o1", "outcome": "kept", "retained": True, "refunded_amount": 0.0}
    later = {**close, "record": "outcome_amended", "retained": False, "refunded_amount": 100.0}
    diff = {**later, "retained": True, "refunded_amount": 108.0}  # (a line written out of order)
    for lines in ([close, later, diff], [diff, later, close], [later]):
        assert fold_outcomes(lines)["o1"]["retained"] is False
    # a line from before ``retained`` was written reads as its outcome says
    assert fold_outcomes([{"order_id": "o2", "outcome": "refund"}])["o2"]["retained"] is False


def test_amendable_entries_from_an_older_snapshot_decode_without_retained() -> None:
    assert _amendable([5, 10.0]) == (5, 10.0, None)
    assert _amendable([5, 10.0, False]) == (5, 10.0, False)
