"""Money in another currency than the order's, through the stages and the whole flow (see
``tests/features/test_foreign_currency.py`` for the case's rule): each currency's money is
counted under its own ``currency`` label, never summed with another nor compared with the order's
value; a payment whose meaning hangs on such a comparison is a ``currency_mismatch`` dead letter
with its reason, counted, and the case is as without it. Checked on hand-made orders and on the
simulator's ``foreign-currency`` variant against the same log without it."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from prometheus_client import REGISTRY

from salvage.connectors.events import EVENT_ADAPTER
from salvage.connectors.simulator import FOREIGN_CURRENCY, write_log
from salvage.features.eventtime import END, to_us
from salvage.flows.messages import Event, Tick
from salvage.flows.stages import CaseStage, ContextStage, DispatchStage, ModelStage
from salvage.flows.state import _settled_record
from salvage.sinks import kpis
from tests.flowkit import jsonl, run_file_flow
from tests.flows.test_settled import SRC, _cfg, _run
from tests.helpers import event, order_placed

DELIVERED = "2026-03-04T09:00:00Z"


def _order(oid: str, customer: str) -> list[dict]:
    return [
        order_placed(oid, "2026-03-02T10:00:00Z", customer=customer, price=120.0),
        event(f"{oid}-d", "carrier_scan", oid, DELIVERED, scan="delivered", courier="dhl"),
    ]


def _request(oid: str, at: str) -> dict:
    return event(
        f"{oid}-req",
        "return_requested",
        oid,
        at,
        return_id="R1",
        reason="too_small",
        items=[{"sku": "sku-1", "qty": 1}],
        preferred_resolution="refund",
    )


def _pay(eid: str, oid: str, at: str, amount: float, currency: str, rid: str | None = "R1"):
    fields = {"return_id": rid} if rid else {}
    return event(eid, "refund_issued", oid, at, amount=amount, currency=currency, **fields)


def _stories() -> list[dict]:
    """o1: a return refunded in GBP. o2: 40 EUR of goodwill, then 30 GBP naming no return
    (goodwill or a settlement? it depends on a rate nobody has). o3: a return refunded in EUR,
    then 20 GBP more of it (a second payment, a late fact). o4: a chargeback in USD. o5: an
    order much later (event time moves past o2's return window)."""
    return sorted(
        [
            *_order("o1", "c1"),
            _request("o1", "2026-03-05T10:00:00Z"),
            _pay("o1-f1", "o1", "2026-03-08T10:00:00Z", 100.0, "GBP"),
            *_order("o2", "c2"),
            _pay("o2-gw", "o2", "2026-03-04T12:00:00Z", 40.0, "EUR", rid=None),
            _pay("o2-gw2", "o2", "2026-03-05T12:00:00Z", 30.0, "GBP", rid=None),
            *_order("o3", "c3"),
            _request("o3", "2026-03-05T10:00:00Z"),
            _pay("o3-f1", "o3", "2026-03-08T10:00:00Z", 100.0, "EUR"),
            _pay("o3-f2", "o3", "2026-03-10T10:00:00Z", 20.0, "GBP"),
            *_order("o4", "c4"),
            event(
                "o4-cb",
                "chargeback_filed",
                "o4",
                "2026-03-20T10:00:00Z",
                amount=120.0,
                currency="USD",
            ),
            # event time moves on: o2's return window ends (it closes kept)
            order_placed(
                "o5", "2026-04-20T10:00:00Z", customer="c5", promised="2026-04-23T18:00:00Z"
            ),
        ],
        key=lambda d: d["occurred_at"],
    )


def _money() -> dict[tuple, float]:
    """The money, outcome and dead-letter samples, by (name, label values)."""
    keep = {
        "salvage_refunded_total": ("currency",),
        "salvage_refund_leakage_total": ("currency",),
        "salvage_refunded_by_basis_total": ("currency", "basis"),
        "salvage_goodwill_total": ("currency", "kind"),
        "salvage_closed_order_value_total": ("currency",),
        "salvage_cases_resolved_total": ("outcome",),
        "salvage_dead_letters_total": ("kind",),
        "salvage_settled_facts_total": ("stream",),
    }
    out: dict[tuple, float] = defaultdict(float)
    for m in REGISTRY.collect():
        for s in m.samples:
            labels = keep.get(s.name)
            if labels is not None:
                out[(s.name, *(s.labels.get(x) for x in labels))] += s.value
    return out


def _run_flow(log: Path, out_dir: Path) -> tuple[dict[tuple, float], dict[str, list[dict]]]:
    """Run file mode on ``log``: the metric deltas (non-zero, rounded to the cent) and outputs."""
    kpis.configure()
    before = _money()
    out = run_file_flow([log], out_dir)
    after = _money()
    delta = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
    return {k: v for k, v in delta.items() if v}, {k: jsonl(v) for k, v in out.items()}


def test_each_currency_is_counted_apart_and_the_ambiguous_payment_is_a_dead_letter(
    tmp_path: Path,
) -> None:
    log = tmp_path / "money.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in _stories()))
    delta, out = _run_flow(log, tmp_path / "out")
    [letter] = out["dead_letters"]
    assert (letter["kind"], letter["event_id"], letter["order_id"]) == (
        "currency_mismatch",
        "o2-gw2",
        "o2",
    )
    assert "30.00 GBP" in letter["message"] and "exchange rate" in letter["message"]
    assert delta == {
        ("salvage_dead_letters_total", "currency_mismatch"): 1.0,
        # o1 and o3 refunded, o2 kept (its goodwill did not become a refund), o4 charged back
        ("salvage_cases_resolved_total", "refund"): 2.0,
        ("salvage_cases_resolved_total", "kept"): 1.0,
        ("salvage_cases_resolved_total", "chargeback"): 1.0,
        ("salvage_closed_order_value_total", "EUR"): 480.0,  # the orders' value: all EUR
        ("salvage_settled_facts_total", "returns"): 1.0,  # o3's second payment
        ("salvage_goodwill_total", "EUR", "refund"): 40.0,
        ("salvage_refunded_total", "EUR"): 140.0,  # o2's goodwill, o3's first payment
        ("salvage_refunded_total", "GBP"): 120.0,  # o1's refund, o3's second payment
        ("salvage_refunded_total", "USD"): 120.0,  # o4's chargeback
        ("salvage_refunded_by_basis_total", "EUR", "goodwill"): 40.0,
        ("salvage_refunded_by_basis_total", "EUR", "fit"): 100.0,
        ("salvage_refunded_by_basis_total", "GBP", "fit"): 120.0,
        ("salvage_refunded_by_basis_total", "USD", "no_return_request"): 120.0,
        ("salvage_refund_leakage_total", "EUR"): 100.0,
        ("salvage_refund_leakage_total", "GBP"): 120.0,
    }
    # the customer is told the refund in the currency it was paid in
    paid = [u for u in out["status_updates"] if u["stage"] == "refund_issued"]
    assert sorted((u["order_id"], u["amount"], u["currency"]) for u in paid) == [
        ("o1", 100.0, "GBP"),
        ("o3", 100.0, "EUR"),
    ]
    # the outcome records of the orders assigned to an arm (o1, o3): the money by currency
    money = {
        o["order_id"]: (o["refunded_amount"], o.get("refunded_other")) for o in out["outcomes"]
    }
    assert money == {"o1": (0.0, {"GBP": 100.0}), "o3": (100.0, None)}


def test_the_customers_refunded_value_takes_only_the_orders_currency() -> None:
    """A refund in GBP on an EUR order is a refund in the customer's history (its count), but its
    money is not added to their EUR refunded value; nor is a second payment in GBP. Before, both
    were summed in: 100 GBP + 20 GBP became 120 "EUR"."""
    docs = [d for d in _stories() if d["order_id"] in ("o1", "o3", "o5")]
    case, ctx, _model, dead, kpi = _run(docs, _cfg())
    assert dead == []
    assert case.settled["o1"].currency == case.settled["o3"].currency == "EUR"
    record = _settled_record()  # (the recovery codec keeps it)
    assert record.decoder(None)(record.encode(case.settled["o1"])) == case.settled["o1"]
    c1, c3 = ctx.customers["c1"], ctx.customers["c3"]
    assert (c1.refunds, c1.refunded_value) == (1, 0.0)
    assert (c3.refunds, c3.refunded_value) == (1, 100.0)
    [late] = [k["case"] for k in kpi if k["kind"] == "settled"]
    assert (late["late"], late["amount"], late["currency"], late["basis"]) == (
        "refund_issued",
        20.0,
        "GBP",
        "fit",
    )


def test_the_case_store_document_carries_the_money_by_currency() -> None:
    """The closing case-store document (dispatch, the order's latest update) of a case with money
    in another currency: its outcome, and the money in the order's currency and in the other one
    apart; a single-currency case's document has no money fields (as before)."""
    docs = [d for d in _stories() if d["order_id"] in ("o1", "o3", "o5")]
    cfg = _cfg()
    case, ctx, model = CaseStage(0, cfg), ContextStage(0, cfg), ModelStage(0, cfg)
    dispatch = DispatchStage(0, cfg)
    items = [
        Event(to_us(ev.occurred_at), ev.event_id, ev)
        for ev in (EVENT_ADAPTER.validate_json(json.dumps(d)) for d in docs)
    ]
    out = case.on_batch([*items, Tick(SRC, END, items[-1].t)])
    for stage, route in ((ctx, "ctx"), (model, "model"), (dispatch, "disp")):
        out = stage.on_batch(
            [p[1] for r, p in out if r == route] + [p for r, p in out if r == "tick"]
        )
    latest = {}
    for order_id, _t, doc in (p for r, p in out if r == "case_record"):
        latest[order_id] = json.loads(doc)  # (the latest one per order)
    o1, o3 = latest["o1"], latest["o3"]
    assert (o1["status"], o1["outcome"]) == ("closed", "refund")
    assert (o1["currency"], o1["refunded_amount"], o1["refunded_other"]) == (
        "EUR",
        0.0,
        {"GBP": 100.0},
    )
    assert o3["outcome"] == "refund" and "refunded_other" not in o3 and "currency" not in o3


def test_the_dead_letter_leaves_the_case_as_without_it() -> None:
    """o2 with and without its ambiguous GBP payment: the same case, the same views."""
    with_it = [d for d in _stories() if d["order_id"] in ("o2", "o5")]
    without = [d for d in with_it if d["event_id"] != "o2-gw2"]
    a = _run(with_it, _cfg())
    b = _run(without, _cfg())
    assert [(d.kind.value, d.event_id) for d in a[3]] == [("currency_mismatch", "o2-gw2")]
    assert b[3] == []
    assert a[0].settled["o2"] == b[0].settled["o2"]
    assert a[0].settled["o2"].outcome == "kept"
    assert a[1].customers["c2"] == b[1].customers["c2"]
    assert a[4] == b[4]  # the KPI facts (the goodwill paid)


# ----------------------------------------------------------------------------- the variant


def _log_money(log: Path) -> tuple[dict[str, float], dict[str, dict]]:
    """The log's refunds and chargebacks by currency, and its payment events by id."""
    paid: dict[str, float] = defaultdict(float)
    events = {}
    for e in map(json.loads, log.read_bytes().splitlines()):
        if e["event_type"] in ("refund_issued", "chargeback_filed", "store_credit_issued"):
            events[e["event_id"]] = e
            if e["event_type"] != "store_credit_issued":
                paid[e["currency"]] += e["amount"]
    return {c: round(v, 2) for c, v in paid.items()}, events


def _by(delta: dict[tuple, float], name: str, at: int = 1) -> dict[str, float]:
    """One metric's deltas summed by the label at ``at`` (1: its first label)."""
    out: dict[str, float] = defaultdict(float)
    for k, v in delta.items():
        if k[0] == name:
            out[k[at]] += v
    return {k: round(v, 2) for k, v in out.items()}


def test_the_variant_counts_every_currency_apart_and_changes_no_outcome(tmp_path: Path) -> None:
    """``--variant foreign-currency`` (15% of the payments relabelled GBP, amounts as they were)
    against the same log without it: no dead letter, the same outcomes and order values, each
    currency's refunded value equal to that currency's refunds and chargebacks in the log to the
    cent, and refund leakage and every basis split between EUR and GBP with the same totals.
    Before, all of it was counted as EUR."""
    plain, fc = tmp_path / "plain.jsonl", tmp_path / "fc.jsonl"
    write_log("launch-week-backlog", 2000, 5, plain)
    write_log("launch-week-backlog", 2000, 5, fc, variants=("foreign-currency",))
    paid_a, _ = _log_money(plain)
    paid_b, events = _log_money(fc)
    assert set(paid_b) == {"EUR", FOREIGN_CURRENCY} and paid_b[FOREIGN_CURRENCY] > 1000
    a, out_a = _run_flow(plain, tmp_path / "a")
    b, out_b = _run_flow(fc, tmp_path / "b")
    assert out_a["dead_letters"] == out_b["dead_letters"] == []
    assert _by(a, "salvage_refunded_total") == paid_a
    assert _by(b, "salvage_refunded_total") == paid_b
    for name in ("salvage_cases_resolved_total", "salvage_closed_order_value_total"):
        assert _by(b, name) == _by(a, name)
    leak_a, leak_b = _by(a, "salvage_refund_leakage_total"), _by(b, "salvage_refund_leakage_total")
    assert leak_b[FOREIGN_CURRENCY] > 0 and round(sum(leak_b.values()), 2) == leak_a["EUR"]
    basis = "salvage_refunded_by_basis_total"
    assert {k: round(v, 2) for k, v in _by(b, basis, at=2).items()} == _by(a, basis, at=2)
    # every other output the same, but the refund's currency told and the outcome's money split
    for name in ("interventions", "lane_alerts", "journey_alerts", "assignments", "orders"):
        assert out_a[name] == out_b[name], name
    updates = [
        (u, v)
        for u, v in zip(out_a["status_updates"], out_b["status_updates"], strict=True)
        if u != v
    ]
    assert updates and len(out_a["status_updates"]) == len(out_b["status_updates"])
    for u, v in updates:
        assert {k for k in u if u[k] != v[k]} == {"currency"}
        assert v["currency"] == events[v["source_event_id"]]["currency"] == FOREIGN_CURRENCY
    assert any("refunded_other" in v for v in out_b["outcomes"])
    for u, v in zip(out_a["outcomes"], out_b["outcomes"], strict=True):
        other = v.pop("refunded_other", {})
        assert round(v.pop("refunded_amount") + sum(other.values()), 2) == u.pop("refunded_amount")
        assert u == v


def test_with_goodwill_only_the_foreign_goodwill_is_dead_lettered(tmp_path: Path) -> None:
    """``--variant goodwill --variant foreign-currency``: the goodwill paid in GBP (naming no
    return, none open: goodwill if at most half the order's value, a settlement beyond) is a
    ``currency_mismatch`` dead letter, every one of them and nothing else; the outcomes are those
    of the goodwill log without the relabelling, the EUR goodwill is counted to the cent, and
    each currency's refunded value is the log's less the dead-lettered cash. Before: no dead
    letter, and the GBP goodwill counted as EUR goodwill."""
    plain, gw = tmp_path / "plain.jsonl", tmp_path / "gw.jsonl"
    both = tmp_path / "both.jsonl"
    write_log("launch-week-backlog", 2000, 5, plain)
    write_log("launch-week-backlog", 2000, 5, gw, variants=("goodwill",))
    write_log("launch-week-backlog", 2000, 5, both, variants=("goodwill", "foreign-currency"))
    _, without = _log_money(plain)
    paid, events = _log_money(both)
    goodwill = {i: e for i, e in events.items() if i not in without}  # what the variant added
    foreign = {i for i, e in goodwill.items() if e["currency"] == FOREIGN_CURRENCY}
    assert foreign and len(foreign) < len(goodwill)
    a, out_a = _run_flow(gw, tmp_path / "a")
    b, out_b = _run_flow(both, tmp_path / "b")
    assert out_a["dead_letters"] == []
    letters = out_b["dead_letters"]
    assert {d["kind"] for d in letters} == {"currency_mismatch"}
    assert {d["event_id"] for d in letters} == foreign
    assert b.pop(("salvage_dead_letters_total", "currency_mismatch")) == len(foreign)
    assert _by(b, "salvage_cases_resolved_total") == _by(a, "salvage_cases_resolved_total")
    cash = sum(events[i]["amount"] for i in foreign if events[i]["event_type"] == "refund_issued")
    expected = {**paid, FOREIGN_CURRENCY: round(paid[FOREIGN_CURRENCY] - cash, 2)}
    assert _by(b, "salvage_refunded_total") == expected
    for kind, label in (("refund_issued", "refund"), ("store_credit_issued", "store_credit")):
        eur = [
            e["amount"] for i, e in goodwill.items() if i not in foreign and e["event_type"] == kind
        ]
        assert b.get(("salvage_goodwill_total", "EUR", label), 0.0) == round(sum(eur), 2)
    assert {k for k in b if k[0] == "salvage_goodwill_total"} <= {
        ("salvage_goodwill_total", "EUR", "refund"),
        ("salvage_goodwill_total", "EUR", "store_credit"),
    }
