"""Money paid after an assigned order's case closed amends its outcome (``outcomes.jsonl``).

The outcome line is written at the close with the money refunded up to then; a refund's second
payment, another return's refund or a chargeback in the settled grace period is counted in the
KPIs' refunded value (``Settled``, flows/stages/case.py) and, for an order with an uplift
assignment, follows as an append-only ``outcome_amended`` line: the payment, the basis the KPIs
give it and the order's new total. ``salvage uplift`` folds them in (``fold_outcomes``). The
simulator-variant check (split-refunds) is in test_partial_refunds.py."""

from __future__ import annotations

import json
from pathlib import Path

from salvage.features.eventtime import DAY_US
from salvage.flows.stages import DispatchStage, StageConfig
from salvage.flows.state import StageState
from salvage.sinks import kpis
from salvage.uplift import fold_outcomes, load_units
from tests.flowkit import jsonl, run_file_flow
from tests.flows.test_state import Recording
from tests.helpers import event, metric_total, order_placed

CLOSE = "2026-03-08T10:00:00Z"


def _request(oid: str, reason: str, rid: str = "R1") -> dict:
    return event(
        f"{oid}-{rid}-req",
        "return_requested",
        oid,
        "2026-03-05T10:00:00Z",
        return_id=rid,
        reason=reason,
        items=[{"sku": "sku-1", "qty": 1}],
        preferred_resolution="refund",
    )


def _pay(eid: str, oid: str, at: str, amount: float, rid: str | None = "R1") -> dict:
    fields = {"return_id": rid} if rid else {}
    return event(eid, "refund_issued", oid, at, amount=amount, currency="EUR", **fields)


def _chargeback(eid: str, oid: str, at: str) -> dict:
    claim = {"amount": 120.0, "currency": "EUR", "reason": "item_not_received"}
    return event(eid, "chargeback_filed", oid, at, **claim)


def _log(path: Path) -> Path:
    """Five orders of five customers, delivered on 03-04, a return asked for on 03-05:
    o1 (too small; assigned) refunded 100 at the close, then 20 and a 4.50 fee naming no return;
    o2 (too large; assigned) refunded, then charged back; o3 (changed mind; assigned) refunded,
    then 5 more after the grace period (a dead letter); o4 (damaged: a review, never assigned)
    refunded, then charged back; o5 (c1's other order) graded worn between o1's payments: o1's
    fee went out after the customer's abuse evidence came."""
    docs = []
    for n in range(1, 6):
        oid = f"o{n}"
        docs += [
            order_placed(oid, "2026-03-02T10:00:00Z", customer="c1" if n == 5 else f"c{n}",
                         price=120.0),
            event(f"{oid}-d", "carrier_scan", oid, "2026-03-04T09:00:00Z", scan="delivered",
                  courier="dhl"),
        ]  # fmt: skip
    docs += [
        _request("o1", "too_small"),
        _pay("f1", "o1", CLOSE, 100.0),
        _pay("f2", "o1", "2026-03-10T10:00:00Z", 20.0),
        _pay("f3", "o1", "2026-03-12T10:00:00Z", 4.5, rid=None),
        _request("o2", "too_large"),
        _pay("g1", "o2", CLOSE, 120.0),
        _chargeback("g2", "o2", "2026-03-20T10:00:00Z"),
        _request("o3", "changed_mind"),
        _pay("h1", "o3", CLOSE, 100.0),
        _pay("h2", "o3", "2026-05-30T10:00:00Z", 5.0),  # 83 days later: after the grace period
        _request("o4", "damaged"),
        _pay("k1", "o4", CLOSE, 120.0),
        _chargeback("k2", "o4", "2026-03-20T10:00:00Z"),
        _request("o5", "too_small"),
        event("o5-g", "return_graded", "o5", "2026-03-11T10:00:00Z", return_id="R1", grade="B",
              abuse_flags=["worn"]),
    ]  # fmt: skip
    docs.sort(key=lambda d: d["occurred_at"])
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _amendment(oid: str, eid: str, at: str, late: str, amount: float, total: float, basis: str):
    return {
        "record": "outcome_amended",
        "order_id": oid,
        "outcome": "refund",
        "retained": False,
        "refunded_amount": total,
        "closed_at": CLOSE,
        "amended_at": at,
        "late": late,
        "amount": amount,
        "currency": "EUR",
        "basis": basis,
        "source_event_id": eid,
    }


def test_money_paid_after_the_close_amends_the_outcome(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.jsonl")
    kpis.configure()
    before = (
        metric_total("salvage_refunded_total"),
        metric_total("salvage_refunded_by_basis_total", basis="abuse_evidence"),
    )
    out = run_file_flow([log], tmp_path / "out")
    refunded = round(metric_total("salvage_refunded_total") - before[0], 2)
    after = metric_total("salvage_refunded_by_basis_total", basis="abuse_evidence")
    abuse = round(after - before[1], 2)
    assigned = {a["order_id"] for a in jsonl(out["assignments"])}
    assert assigned == {"o1", "o2", "o3", "o5"}  # (o4: a human review, never held out)
    assert [(d["kind"], d["event_id"]) for d in jsonl(out["dead_letters"])] == [
        ("unknown_order", "h2")
    ]
    lines = jsonl(out["outcomes"])
    closes = [o for o in lines if "record" not in o]
    assert [(o["order_id"], o["refunded_amount"]) for o in closes] == [
        ("o1", 100.0),
        ("o2", 120.0),
        ("o3", 100.0),
    ]
    assert [o for o in lines if "record" in o] == [
        _amendment("o1", "f2", "2026-03-10T10:00:00Z", "refund_issued", 20.0, 120.0, "fit"),
        # the customer's abuse evidence (o5's grade) came before the fee: as the KPIs count it
        _amendment(
            "o1", "f3", "2026-03-12T10:00:00Z", "refund_issued", 4.5, 124.5, "abuse_evidence"
        ),
        _amendment(
            "o2", "g2", "2026-03-20T10:00:00Z", "chargeback_filed", 120.0, 240.0, "late_chargeback"
        ),
    ]
    assert abuse == 4.5
    folded = {oid: o["refunded_amount"] for oid, o in fold_outcomes(lines).items()}
    assert folded == {"o1": 124.5, "o2": 240.0, "o3": 100.0}
    # the KPIs: those and o4's 240 (not assigned: no outcome line)
    assert refunded == round(sum(folded.values()) + 240.0, 2)
    (tmp_path / "out" / "assignments.jsonl").write_bytes(out["assignments"])
    units = {u.order_id: u.refunded for u in load_units(tmp_path / "out")}
    assert units == {**folded, "o5": 0.0}


def test_a_resume_between_the_close_and_the_later_payment_amends_the_same(
    tmp_path: Path,
) -> None:
    """A snapshot after o2's close, before its chargeback, loaded into stages built afresh: the
    outputs (the chargeback's amendment with o2's total among them) are the uninterrupted
    run's."""
    log = _log(tmp_path / "log.jsonl")
    lines = log.read_bytes().splitlines(keepends=True)
    cut = next(i for i, x in enumerate(lines) if b'"g2"' in x)  # o2's chargeback
    whole = Recording(log, shards=2)
    whole.feed(lines[:cut], 0, final=False)  # (in the same batches)
    whole.feed(lines[cut:], cut, final=True)
    assert sum('"outcome_amended"' in x for x in whole.outputs) == 3
    pipe = Recording(log, shards=2)
    pipe.feed(lines[:cut], 0, final=False)
    fresh = Recording(log, shards=2)
    held = []
    for name, stages in pipe.stages.items():
        for key, stage in stages.items():
            header, entries = StageState(stage).full()
            new = fresh.stages[name][key]
            StageState(new).load(header, entries, fresh.cfg)
            pipe.stages[name][key] = new
            held += [k for k in entries if name == "dispatch" and k.startswith("o:")]
    assert "o:o2" in held  # o2 closed, and amendable, in the snapshot
    pipe.feed(lines[cut:], cut, final=True)
    assert pipe.outputs == whole.outputs


def test_an_assigned_order_is_amendable_for_the_grace_period_only() -> None:
    """The dispatch stage keeps (close time, refunded so far) per closed assigned order until
    the watermark is past its grace period (the case stage hears nothing of it after that)."""
    cfg = StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=("s",))
    stage = DispatchStage(0, cfg)
    t0 = 1_772_964_000_000_000  # 2026-03-08T10:00:00Z
    grace = cfg.settled_grace_us
    stage.amendable = {"old": (t0 - DAY_US, 10.0), "o1": (t0, 100.0)}
    stage.apply([], t0 + grace - DAY_US // 2, [])
    assert stage.amendable == {"o1": (t0, 100.0)}
    stage.last_sweep = 0
    stage.apply([], t0 + grace + 2 * DAY_US, [])
    assert stage.amendable == {}


def test_a_late_payment_in_another_currency_leaves_the_total_as_it_was(tmp_path: Path) -> None:
    """A second payment in GBP on an EUR order after its close: amended with its amount and
    currency, the order's EUR total unchanged (money in two currencies is never summed), and the
    fold gives the EUR refund only."""
    docs = [
        order_placed("o1", "2026-03-02T10:00:00Z", customer="c1", price=120.0),
        event("o1-d", "carrier_scan", "o1", "2026-03-04T09:00:00Z", scan="delivered",
              courier="dhl"),
        _request("o1", "too_small"),
        _pay("f1", "o1", CLOSE, 100.0),
        event("f2", "refund_issued", "o1", "2026-03-10T10:00:00Z", amount=15.0, currency="GBP",
              return_id="R1"),
        _pay("f3", "o1", "2026-03-12T10:00:00Z", 5.0),
    ]  # fmt: skip
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = run_file_flow([log], tmp_path / "out")
    assert [a["order_id"] for a in jsonl(out["assignments"])] == ["o1"]
    lines = jsonl(out["outcomes"])
    assert [(d.get("record"), d["refunded_amount"]) for d in lines] == [
        (None, 100.0),
        ("outcome_amended", 100.0),  # 15 GBP: not added to the EUR total
        ("outcome_amended", 105.0),
    ]
    assert [(d["amount"], d["currency"]) for d in lines[1:]] == [(15.0, "GBP"), (5.0, "EUR")]
    assert fold_outcomes(lines)["o1"]["refunded_amount"] == 105.0
