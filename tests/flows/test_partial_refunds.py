"""Money paid in parts, through the stages and the whole flow:

* **goodwill** (a refund or store credit naming no return, while none is open, of at most half the
  order's value: an apology for a late parcel) keeps the case open: the order is kept, a return
  that comes later is the case's own (the policy can act on it), and the goodwill is counted when
  the case closes (``salvage_goodwill_total``; the cash in ``salvage_refunded_total``, basis
  ``goodwill``, never leakage). Before, it closed the case as a refund.
* **a second payment** of the refund a case settled with (the item, then the shipping fee) is a
  late fact in the grace period: money in the refunded value with the first payment's basis, not
  another refund in the customer's history. Before, it was an ``unknown_order`` dead letter and
  its money was missing from the KPIs.

Both are checked on simulator variants (``goodwill``, ``split-refunds``) against the same log
without them: every other figure is unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from salvage.connectors.outputs import OUTCOME_RECORDS
from salvage.connectors.simulator import write_log
from salvage.features.eventtime import DAY_US
from salvage.sinks import kpis
from salvage.sinks.leakage import BASES
from tests.flowkit import jsonl, run_file_flow
from tests.flows.test_settled import _cfg, _run
from tests.flows.test_split_returns import _kpi_deltas
from tests.helpers import (
    dead_letter_ids,
    dead_letters_at_drain,
    event,
    kafka_settings,
    metric_total,
    order_placed,
    prom_total,
    start_follow,
)

DELIVERED = "2026-03-04T09:00:00Z"
_WORN = {"return_id": "R1", "grade": "B", "abuse_flags": ["worn"]}


def _order(oid: str = "o1", price: float = 120.0) -> list[dict]:
    return [
        order_placed(oid, "2026-03-02T10:00:00Z", price=price),
        event(f"{oid}-d", "carrier_scan", oid, DELIVERED, scan="delivered", courier="dhl"),
    ]


def _request(oid: str, at: str, reason: str = "too_small", rid: str = "R1") -> dict:
    return event(
        f"{oid}-{rid}-req",
        "return_requested",
        oid,
        at,
        return_id=rid,
        reason=reason,
        items=[{"sku": "sku-1", "qty": 1}],
        preferred_resolution="refund",
    )


def _step(rid: str, kind: str, at: str, **kw) -> dict:
    """A returns event of ``rid`` of order o1."""
    return event(f"{rid}-{kind}", kind, "o1", at, return_id=rid, **kw)


_LABEL = {"courier": "dhl", "label_cost": 4.0}


def _pay(eid: str, oid: str, at: str, amount: float, rid: str | None = "R1", **kw) -> dict:
    fields = {"return_id": rid} if rid else {}
    kind = kw.pop("kind", "refund_issued")
    return event(eid, kind, oid, at, amount=amount, currency="EUR", **fields, **kw)


# ----------------------------------------------------------------------------- a second payment


def test_a_second_payment_of_the_settled_refund_keeps_its_basis() -> None:
    docs = [
        *_order(),
        _request("o1", "2026-03-05T10:00:00Z"),
        _pay("f1", "o1", "2026-03-08T10:00:00Z", 100.0),
        _pay("f2", "o1", "2026-03-10T10:00:00Z", 20.0),  # the rest of it, two days later
        _pay("f3", "o1", "2026-03-11T10:00:00Z", 4.5, rid=None),  # a fee, naming no return
    ]
    case, ctx, _model, dead, kpi = _run(docs, _cfg())
    assert dead == []
    assert case.settled["o1"].basis == "fit"  # too_small, delivered, no abuse evidence
    c = ctx.customers["c1"]
    assert (c.refunds, c.refunded_value) == (1, 124.5)  # one refund, all of its money
    late = [k for k in kpi if k["kind"] == "settled"]
    assert [(k["case"]["late"], k["case"]["amount"], k["case"]["basis"]) for k in late] == [
        ("refund_issued", 20.0, "fit"),
        ("refund_issued", 4.5, "fit"),
    ]
    assert _kpi_deltas(late, ("fit", "late_return")) == [24.5, 0.0, 24.5]


def test_abuse_evidence_that_came_since_is_the_second_payments_basis() -> None:
    """A grade flagging abuse after the first payment: the second one is not leakage (what was
    known when that money went out), the first one stays as it was counted."""
    docs = [
        *_order(),
        _request("o1", "2026-03-05T10:00:00Z"),
        _pay("f1", "o1", "2026-03-08T10:00:00Z", 100.0),
        event("g1", "return_graded", "o1", "2026-03-09T10:00:00Z", **_WORN),
        _pay("f2", "o1", "2026-03-10T10:00:00Z", 20.0),
    ]
    _case, _ctx, _model, dead, kpi = _run(docs, _cfg())
    assert dead == []
    late = [k for k in kpi if k["kind"] == "settled"]
    assert [k["case"]["late"] for k in late] == ["return_graded", "refund_issued"]
    assert _kpi_deltas(late, ("fit", "abuse_evidence")) == [0.0, 20.0, 0.0]


def test_a_lost_parcels_refund_paid_in_two_parts_is_not_delivered_money() -> None:
    docs = [
        order_placed("o1", "2026-03-02T10:00:00Z", price=120.0),
        event("s1", "carrier_scan", "o1", "2026-03-03T09:00:00Z", scan="lost", courier="dhl"),
        _pay("f1", "o1", "2026-03-08T10:00:00Z", 120.0, rid=None),
        _pay("f2", "o1", "2026-03-09T10:00:00Z", 6.9, rid=None),  # the shipping fee
    ]
    case, ctx, _model, dead, kpi = _run(docs, _cfg())
    assert dead == [] and case.settled["o1"].basis == "not_delivered"
    assert ctx.customers["c1"].refunded_value == 126.9
    late = [k for k in kpi if k["kind"] == "settled"]
    assert _kpi_deltas(late, ("not_delivered", "late_return")) == [6.9, 0.0, 0.0]


def test_a_later_refund_counts_only_within_the_grace_period() -> None:
    refunded = [
        *_order(),
        _request("o1", "2026-03-05T10:00:00Z"),
        _pay("f1", "o1", "2026-03-08T10:00:00Z", 100.0),
        _pay("f2", "o1", "2026-04-30T10:00:00Z", 20.0),  # 53 days later
    ]
    _case, ctx, _model, dead, _kpi = _run(refunded, _cfg(settled_grace_us=45 * DAY_US))
    assert [(d.kind.value, d.event_id) for d in dead] == [("unknown_order", "f2")]
    assert ctx.customers["c1"].refunded_value == 100.0


def _settled_then_refund(close: list[dict], refund: dict) -> tuple:
    case, ctx, _model, dead, kpi = _run([*close, refund], _cfg())
    late = [k for k in kpi if k["kind"] == "settled"]
    return case.settled["o1"], ctx.customers["c1"], dead, late


def test_money_after_an_exchange_a_store_credit_or_a_cancellation() -> None:
    """A refund after the case settled otherwise is more money for that settlement: the price
    difference of an exchange (``exchange_difference``, never leakage), a store credit paid out
    in cash (its reason's basis: fit, leakage), a cancelled order's refund (``not_delivered``);
    the customer's net spend comes down by it, and no refund is added to their history."""
    returned = [*_order(), _request("o1", "2026-03-05T10:00:00Z")]
    swap = event("x1", "exchange_completed", "o1", "2026-03-09T10:00:00Z", return_id="R1")
    credit = _pay("sc", "o1", "2026-03-09T10:00:00Z", 120.0, kind="store_credit_issued")
    exchanged, credited = [*returned, swap], [*returned, credit]
    cancelled = [
        order_placed("o1", "2026-03-02T10:00:00Z", price=120.0),
        event("x", "order_cancelled", "o1", "2026-03-02T12:00:00Z", reason="customer_request"),
    ]
    cases = (
        (exchanged, _pay("d", "o1", "2026-03-10T10:00:00Z", 15.0), "exchange_difference", 0.0),
        (credited, _pay("d", "o1", "2026-03-10T10:00:00Z", 120.0), "fit", 120.0),
        (cancelled, _pay("d", "o1", "2026-03-03T10:00:00Z", 120.0, rid=None), "not_delivered", 0),
    )
    for close, refund, basis, leaked in cases:
        rec, customer, dead, late = _settled_then_refund(close, refund)
        assert dead == [] and rec.basis == basis
        amount = refund["amount"]
        assert (customer.refunds, customer.refunded_value) == (0, amount)
        assert _kpi_deltas(late, (basis,)) == [amount, leaked]


def test_a_case_closed_kept_or_charged_back_hears_no_later_refund() -> None:
    """Kept at the end of its window: a refund naming no return then is goodwill after the
    close (not counted: a dead letter, README "Money paid in parts"); charged back: a refund
    after a chargeback may be the same money (the bank reverses one of them): a dead letter."""
    kept = [*_order(), _pay("gw", "o1", "2026-04-20T10:00:00Z", 10.0, rid=None)]
    case, _ctx, _model, dead, _kpi = _run(kept, _cfg())
    assert case.settled["o1"].outcome == "kept" and case.settled["o1"].basis == ""
    assert [d.event_id for d in dead] == ["gw"]
    claim = {"amount": 120.0, "currency": "EUR", "reason": "item_not_received"}
    charged = [
        *_order(),
        event("cb", "chargeback_filed", "o1", "2026-03-06T10:00:00Z", **claim),
        _pay("f1", "o1", "2026-03-08T10:00:00Z", 120.0, rid=None),
    ]
    case, _ctx, _model, dead, _kpi = _run(charged, _cfg())
    assert case.settled["o1"].basis == "" and [d.event_id for d in dead] == ["f1"]


def test_the_basis_survives_a_snapshot() -> None:
    from salvage.connectors.events import EVENT_ADAPTER
    from salvage.features.eventtime import END, to_us
    from salvage.flows.messages import Event, Tick
    from salvage.flows.stages import CaseStage
    from salvage.flows.state import StageState

    docs = [
        *_order(),
        _request("o1", "2026-03-05T10:00:00Z", reason="damaged"),
        _pay("f1", "o1", "2026-03-08T10:00:00Z", 100.0),
        _pay("f2", "o1", "2026-03-10T10:00:00Z", 20.0),
    ]
    items = []
    for d in docs:
        ev = EVENT_ADAPTER.validate_json(json.dumps(d))
        items.append(Event(to_us(ev.occurred_at), ev.event_id, ev))
    cfg = _cfg()
    src = cfg.sources[0]
    whole, half = CaseStage(0, cfg), CaseStage(0, cfg)
    wm = items[4].t - 1
    expected = whole.on_batch([*items[:4], Tick(src, wm, items[3].t)])
    expected += whole.on_batch([items[4], Tick(src, END, items[4].t)])
    first = half.on_batch([*items[:4], Tick(src, wm, items[3].t)])
    assert half.settled["o1"].basis == "damaged"
    header, entries = StageState(half).full()
    loaded = CaseStage(0, cfg)
    StageState(loaded).load(header, entries, cfg)
    assert loaded.settled == half.settled
    assert first + loaded.on_batch([items[4], Tick(src, END, items[4].t)]) == expected


# ----------------------------------------------------------------------------- goodwill


def test_goodwill_keeps_the_case_open_for_the_return_that_follows() -> None:
    """Goodwill for a late parcel, then a return: the return is the open case's (its refund
    settles it, once), not a late fact of a case the goodwill closed."""
    docs = [
        *_order(),
        _pay("gw", "o1", "2026-03-04T12:00:00Z", 12.0, rid=None),
        _request("o1", "2026-03-06T10:00:00Z"),
        _pay("f1", "o1", "2026-03-09T10:00:00Z", 120.0),
    ]
    case, ctx, _model, dead, kpi = _run(docs, _cfg())
    assert dead == []
    assert case.settled["o1"].outcome == "refund" and case.settled["o1"].returns == "R1"
    assert [k for k in kpi if k["kind"] == "settled"] == []  # nothing after the close
    c = ctx.customers["c1"]
    # the goodwill cash lowers the customer's net value; it is not a refund in their history
    assert (c.refunds, c.refunded_value, c.returns) == (1, 132.0, 1)
    paid = [k["case"] for k in kpi if k["kind"] == "goodwill"]
    assert [(p["amount"], p["goodwill_kind"], p["currency"]) for p in paid] == [
        (12.0, "refund", "EUR")
    ]


def test_goodwill_is_counted_when_paid_never_as_leakage() -> None:
    """The goodwill fact counts the money when it is paid (by kind; a refund's cash also in the
    refunded value, basis ``goodwill``). That the close does not count it again is the goodwill
    variant's test: the refunded value grows by exactly the goodwill cash."""
    kpis.configure()

    def read() -> list[float]:
        return [
            metric_total("salvage_refunded_total"),
            metric_total("salvage_refund_leakage_total"),
            metric_total("salvage_refunded_by_basis_total", basis="goodwill"),
            metric_total("salvage_goodwill_total", kind="refund"),
            metric_total("salvage_goodwill_total", kind="store_credit"),
        ]

    def paid(amount: float, kind: str) -> dict:
        case = {"currency": "EUR", "lane": "dhl:DE>FR", "amount": amount, "goodwill_kind": kind}
        return {"kind": "goodwill", "t": 0, "case": case}

    before = read()
    kpis.observe(paid(12.0, "refund"))
    kpis.observe(paid(5.0, "store_credit"))
    after = read()
    assert [round(a - b, 6) for a, b in zip(after, before, strict=True)] == [
        12.0,
        0.0,
        12.0,
        12.0,
        5.0,
    ]


# ----------------------------------------------------------------------------- simulator variants


def _resolved_and_money(log: Path, out_dir: Path) -> tuple[dict, list[dict]]:
    from prometheus_client import REGISTRY

    def snap() -> dict:
        keep = {
            "salvage_cases_resolved_total": "outcome",
            "salvage_refunded_total": None,
            "salvage_refund_leakage_total": None,
            "salvage_refunded_by_basis_total": "basis",
            "salvage_goodwill_total": "kind",
            "salvage_settled_facts_total": "stream",
        }
        out: dict = {}
        for m in REGISTRY.collect():
            for s in m.samples:
                if s.name in keep:
                    label = keep[s.name]
                    key = (s.name, s.labels.get(label) if label else None)
                    out[key] = out.get(key, 0.0) + s.value
        return out

    before = snap()
    out = run_file_flow([log], out_dir)
    after = snap()
    delta = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
    return {k: v for k, v in delta.items() if v}, jsonl(out["dead_letters"])


def test_goodwill_variant_changes_only_the_goodwill(tmp_path: Path) -> None:
    """``--variant goodwill``: every case closes as without it (the same outcomes), leakage is
    the same to the cent, and the refunded value grows by the goodwill refunded, which the
    goodwill counter has by kind, to the cent of the log's."""
    plain, gw = tmp_path / "plain.jsonl", tmp_path / "gw.jsonl"
    write_log("launch-week-backlog", 2500, 5, plain)
    write_log("launch-week-backlog", 2500, 5, gw, variants=("goodwill",))
    known = {json.loads(x)["event_id"] for x in plain.read_bytes().splitlines()}
    paid = {"refund_issued": 0.0, "store_credit_issued": 0.0}
    cash_of: dict[str, float] = {}  # order -> its goodwill cash
    for e in map(json.loads, gw.read_bytes().splitlines()):
        if e["event_id"] not in known:  # what the variant added: goodwill
            paid[e["event_type"]] += e["amount"]
            if e["event_type"] == "refund_issued":
                cash_of[e["order_id"]] = round(cash_of.get(e["order_id"], 0.0) + e["amount"], 2)
    assert paid["refund_issued"] > 0 and paid["store_credit_issued"] > 0
    a, dead_a = _resolved_and_money(plain, tmp_path / "a")
    b, dead_b = _resolved_and_money(gw, tmp_path / "b")
    assert dead_a == dead_b == []
    cash, credit = (round(v, 2) for v in paid.values())
    assert b.pop(("salvage_goodwill_total", "refund")) == cash
    assert b.pop(("salvage_goodwill_total", "store_credit")) == credit
    assert b.pop(("salvage_refunded_by_basis_total", "goodwill")) == cash
    refunded = ("salvage_refunded_total", None)
    assert round(b.pop(refunded) - a.pop(refunded), 2) == cash
    assert b == a  # outcomes, leakage, every other basis, late facts
    # the outcome records: an assigned order's refunded money includes its goodwill cash (as
    # the KPIs' refunded value does), nothing else changes
    before = {o["order_id"]: o for o in jsonl((tmp_path / "a" / "outcomes.jsonl").read_bytes())}
    after = {o["order_id"]: o for o in jsonl((tmp_path / "b" / "outcomes.jsonl").read_bytes())}
    assert after.keys() == before.keys()
    assert sum(cash_of.get(oid, 0.0) for oid in after) > 0.5 * cash  # late parcels: assigned
    for oid, o in after.items():
        assert o == {**before[oid], "refunded_amount": o["refunded_amount"]}
        extra = round(o["refunded_amount"] - before[oid]["refunded_amount"], 2)
        assert extra == cash_of.get(oid, 0.0), oid


@pytest.fixture(scope="module")
def split_refunds(tmp_path_factory) -> SimpleNamespace:
    """The same steady-state log with and without ``--variant split-refunds``, each through file
    mode: the KPI deltas, dead letters and out dirs (``a``: plain, ``b``: split)."""
    tmp = tmp_path_factory.mktemp("split-refunds")
    plain, split = tmp / "plain.jsonl", tmp / "split.jsonl"
    write_log("steady-state", 2500, 7, plain)
    write_log("steady-state", 2500, 7, split, variants=("split-refunds",))
    a, dead_a = _resolved_and_money(plain, tmp / "a")
    b, dead_b = _resolved_and_money(split, tmp / "b")
    return SimpleNamespace(
        plain=plain, split=split, a=a, b=b, dead_a=dead_a, dead_b=dead_b, dir_a=tmp / "a",
        dir_b=tmp / "b",
    )  # fmt: skip


def test_split_refunds_variant_loses_no_money(split_refunds: SimpleNamespace) -> None:
    """``--variant split-refunds``: no dead letters, the same refunded value to the cent as the
    log without it, one settled fact per second payment, and the same bases, except that a second
    payment made after the customer's abuse evidence came (another order's grade, between the
    two payments) is ``abuse_evidence``: what was known when that money went out."""
    r = split_refunds
    plain, split, a, b = r.plain, r.split, dict(r.a), dict(r.b)
    n_plain = sum(1 for x in plain.read_bytes().splitlines() if b'"refund_issued"' in x)
    n_split = sum(1 for x in split.read_bytes().splitlines() if b'"refund_issued"' in x)
    assert n_split - n_plain >= 50
    assert r.dead_a == r.dead_b == []
    returns = ("salvage_settled_facts_total", "returns")
    assert b.pop(returns) - a.pop(returns, 0.0) == n_split - n_plain
    basis = "salvage_refunded_by_basis_total"
    moved = round(b.pop((basis, "abuse_evidence")) - a.pop((basis, "abuse_evidence")), 2)
    refunded = a[("salvage_refunded_total", None)]
    assert 0 <= moved < 0.01 * refunded
    leakage = ("salvage_refund_leakage_total", None)
    assert round(a.pop(leakage) - b.pop(leakage), 2) == moved
    shrunk = {k: round(a[k] - b.get(k, 0.0), 2) for k in a if k[0] == basis and a[k] != b.get(k)}
    assert all(v > 0 for v in shrunk.values()) and round(sum(shrunk.values()), 2) == moved
    assert {k: v for k, v in b.items() if k[0] != basis} == {
        k: v for k, v in a.items() if k[0] != basis
    }


def test_split_refunds_outcomes_carry_the_money_paid_after_the_close(
    split_refunds: SimpleNamespace,
) -> None:
    """The outcomes stream of the split-refunds run: each assigned order's refunded money, its
    outcome line's plus its ``outcome_amended`` lines', is what the log paid on it (the KPIs'
    refunded value: the test above), to the cent, and what the plain log's outcome line says;
    so ``salvage uplift`` reports the same as on the plain log. Before, the outcome lines alone
    missed the second payments (~10% of the refunded money) and the uplift's refund figures
    moved with which arm's orders happened to be paid in two parts."""
    from salvage.schemas import all_schemas
    from salvage.uplift import fold_outcomes, uplift

    r = split_refunds
    assert (r.dir_a / "assignments.jsonl").read_bytes() == (
        r.dir_b / "assignments.jsonl"
    ).read_bytes()
    paid: dict[str, float] = {}
    for e in map(json.loads, r.split.read_bytes().splitlines()):
        if e["event_type"] in ("refund_issued", "chargeback_filed"):
            paid[e["order_id"]] = round(paid.get(e["order_id"], 0.0) + e["amount"], 2)
    plain_lines = jsonl((r.dir_a / "outcomes.jsonl").read_bytes())
    lines = jsonl((r.dir_b / "outcomes.jsonl").read_bytes())
    amended = [o for o in lines if o.get("record") == "outcome_amended"]
    closes = [o for o in lines if "record" not in o]

    # the outcome lines are written at the close, as without the variant, with the money
    # paid by then (the first payment); the amendments follow them
    def _close(o: dict) -> tuple:
        return (o["order_id"], o["outcome"], o["retained"], o["closed_at"])

    assert [_close(o) for o in closes] == [_close(o) for o in plain_lines]
    at_close = round(sum(o["refunded_amount"] for o in closes), 2)
    late = round(sum(o["amount"] for o in amended), 2)
    total = round(sum(paid.get(o["order_id"], 0.0) for o in closes), 2)
    assert len(amended) >= 30 and late > 0.05 * total  # what the outcome lines alone missed
    assert round(at_close + late, 2) == total
    folded = fold_outcomes(lines)
    assert {k: v["refunded_amount"] for k, v in folded.items()} == {
        o["order_id"]: paid.get(o["order_id"], 0.0) for o in closes
    }
    assert folded == {o["order_id"]: o for o in plain_lines}
    # each amendment: after its order's close, the order's running total, a KPI basis
    seen: dict[str, float] = {o["order_id"]: o["refunded_amount"] for o in closes}
    for o in amended:
        seen[o["order_id"]] = round(seen[o["order_id"]] + o["amount"], 2)
        assert o["refunded_amount"] == seen[o["order_id"]] and o["amended_at"] > o["closed_at"]
        assert o["basis"] in BASES and o["late"] == "refund_issued"
    # every line within its published schema (salvage schemas: outcomes.<kind>)
    schemas = all_schemas()
    for o in lines:
        kind = o.get("record", "outcome")
        jsonschema.Draft202012Validator(schemas[f"outcomes.{kind}"]).validate(o)
        assert OUTCOME_RECORDS[kind].model_validate(o)
    assert uplift(r.dir_b) == uplift(r.dir_a)
    # through the total-order output stage: the same bytes with other worker and shard counts
    other = run_file_flow([r.split], r.dir_b.with_name("b2"), workers=2, shards=3)
    assert other["outcomes"] == (r.dir_b / "outcomes.jsonl").read_bytes()


# ----------------------------------------------------------------------------- Kafka --follow


def test_both_in_kafka_follow_mode(kafka_broker, unique_name, salvage_cli, tmp_path):
    """Through ``salvage run --follow`` on the embedded broker: a goodwill refund on one order
    (counted when paid; the case closes kept at the end of its return window), a refund in two
    payments on another; the only dead letter is a refund after the grace period, the log's last
    event (its own partition's third jump in a row: tests/flows/test_closed_case_tail.py)."""
    suffix = unique_name("partial")
    settings = kafka_settings(kafka_broker.bootstrap, suffix)
    docs = [
        *_order("o1"),
        _pay("o1-gw", "o1", "2026-03-05T10:00:00Z", 15.0, rid=None),
        *_order("o2"),
        _request("o2", "2026-03-05T10:00:00Z"),
        _pay("o2-f1", "o2", "2026-03-08T10:00:00Z", 100.0),
        _pay("o2-f2", "o2", "2026-03-10T10:00:00Z", 20.0),
        _pay("o2-late", "o2", "2026-05-30T10:00:00Z", 5.0),
    ]
    log = tmp_path / "partial.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out_dir = tmp_path / "kafka-out"
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, log, out_dir)
    dead = dead_letters_at_drain(proc, settings)
    assert dead_letter_ids(dead) == [("unknown_order", "o2-late")]
    prom = (out_dir / "metrics.prom").read_text()
    assert prom_total(prom, "salvage_refunded_total", currency="EUR") == 135.0
    assert prom_total(prom, "salvage_refunded_by_basis_total", basis="fit") == 120.0
    assert prom_total(prom, "salvage_refunded_by_basis_total", basis="goodwill") == 15.0
    assert prom_total(prom, "salvage_goodwill_total", kind="refund") == 15.0
    assert prom_total(prom, "salvage_cases_resolved_total", outcome="kept") == 1.0
    assert prom_total(prom, "salvage_refund_leakage_total") == 120.0
    # the outcomes stream: o2's close (its first payment) and the amendment for the second
    # (o1, goodwill on an order kept, has no assignment), the same bytes as file mode writes
    outcomes = (out_dir / "outcomes.jsonl").read_bytes()
    lines = [(o["order_id"], o.get("record"), o["refunded_amount"]) for o in jsonl(outcomes)]
    assert lines == [("o2", None, 100.0), ("o2", "outcome_amended", 120.0)]
    assert outcomes == run_file_flow([log], tmp_path / "file-out", shards=4)["outcomes"]


@pytest.mark.parametrize("variant", ["goodwill", "split-refunds"])
def test_the_variants_leave_every_other_event_as_it_was(tmp_path: Path, variant: str) -> None:
    plain, var = tmp_path / "plain.jsonl", tmp_path / "var.jsonl"
    write_log("launch-week-backlog", 1500, 3, plain)
    write_log("launch-week-backlog", 1500, 3, var, variants=(variant,))
    a = [json.loads(x) for x in plain.read_bytes().splitlines()]
    b = [json.loads(x) for x in var.read_bytes().splitlines()]
    added = [e for e in b if e["event_id"] not in {x["event_id"] for x in a}]
    assert added and all(e["event_type"] in ("refund_issued", "store_credit_issued") for e in added)
    by_id = {e["event_id"]: e for e in b}
    changed = [e for e in a if by_id[e["event_id"]] != e]
    if variant == "goodwill":
        assert changed == [] and all("return_id" not in e for e in added)
    else:  # the first payment keeps part of the amount; the two add up to it
        assert changed and all(e["event_type"] == "refund_issued" for e in changed)
        rest = {(e["order_id"], e["return_id"]): e["amount"] for e in added}
        for e in changed:
            first = by_id[e["event_id"]]["amount"]
            assert 0 < first < e["amount"]
            assert round(first + rest[(e["order_id"], e["return_id"])], 2) == e["amount"]


# ----------------------------------------------------------------------------- audit findings


def test_goodwill_after_a_cancelled_return_announces_nothing_and_the_next_return_is_followed():
    """Goodwill is not a return's settlement: no status update or journey alert for the
    cancelled return, and the return asked for afterwards has its whole journey announced."""
    from tests.flows.test_split_returns import _journey

    docs = [
        *_order(),
        _request("o1", "2026-03-05T10:00:00Z"),
        _step("R1", "return_label_issued", "2026-03-05T12:00:00Z", **_LABEL),
        _step("R1", "return_cancelled", "2026-03-06T10:00:00Z"),
        _pay("gw", "o1", "2026-03-06T12:00:00Z", 10.0, rid=None),
        _request("o1", "2026-03-07T10:00:00Z", rid="R2"),
        _step("R2", "return_label_issued", "2026-03-07T12:00:00Z", **_LABEL),
        _step("R2", "return_received", "2026-03-09T10:00:00Z"),
        _step("R2", "return_graded", "2026-03-10T10:00:00Z", grade="A"),
        _pay("f2", "o1", "2026-03-11T10:00:00Z", 120.0, rid="R2"),
    ]
    notes = _journey(docs)
    assert ("R1", "refund_issued") not in notes
    assert [stage for rid, stage in notes if rid == "R2"][-3:] == [
        "received",
        "graded",
        "refund_issued",
    ]


def test_another_returns_refund_in_two_payments_is_one_refund_in_the_history() -> None:
    docs = [
        order_placed("o1", "2026-03-02T10:00:00Z", price=60.0, qty=2),
        event("d1", "carrier_scan", "o1", DELIVERED, scan="delivered", courier="dhl"),
        _request("o1", "2026-03-05T10:00:00Z"),
        _request("o1", "2026-03-06T10:00:00Z", rid="R2"),
        _pay("f1", "o1", "2026-03-08T10:00:00Z", 50.0),
        _pay("f1b", "o1", "2026-03-09T10:00:00Z", 10.0),
        _pay("f2", "o1", "2026-03-10T10:00:00Z", 50.0, rid="R2"),
        _pay("f2b", "o1", "2026-03-11T10:00:00Z", 10.0, rid="R2"),
    ]
    _case, ctx, _model, dead, kpi = _run(docs, _cfg())
    assert dead == []
    c = ctx.customers["c1"]
    assert (c.returns, c.refunds, c.refunded_value) == (2, 2, 120.0)
    late = [k for k in kpi if k["kind"] == "settled"]
    assert _kpi_deltas(late, ("fit",)) == [70.0, 70.0]  # both too_small: fit, leakage


def test_a_new_return_after_a_cancelled_one_has_its_own_journey() -> None:
    """R1 got as far as received, then was cancelled; R2's label and receipt are announced
    (before, the journey kept R1's progress and announced nothing of R2 up to it)."""
    from tests.flows.test_split_returns import _journey

    docs = [
        *_order(),
        _request("o1", "2026-03-05T10:00:00Z"),
        _step("R1", "return_label_issued", "2026-03-05T12:00:00Z", **_LABEL),
        _step("R1", "return_received", "2026-03-07T10:00:00Z"),
        _step("R1", "return_cancelled", "2026-03-08T10:00:00Z"),
        _request("o1", "2026-03-09T10:00:00Z", rid="R2"),
        _step("R2", "return_label_issued", "2026-03-09T12:00:00Z", **_LABEL),
        _step("R2", "return_received", "2026-03-11T10:00:00Z"),
    ]
    notes = _journey(docs)
    assert {"label_issued", "received"} <= {stage for rid, stage in notes if rid == "R2"}


def test_an_order_cancelled_on_its_way_closes_and_its_parcel_is_heard() -> None:
    """Cancelled after shipment, before delivery (a parcel intercepted): the case closes as
    cancelled (before: it stayed open, and the policy sent "on its way" messages for a cancelled
    order); the parcel's scans after it are counted, not dead letters; its refund is
    ``not_delivered`` money. A cancellation after delivery changes nothing (a return follows)."""
    docs = [
        order_placed("o1", "2026-03-02T10:00:00Z", price=120.0),
        event("sh", "order_shipped", "o1", "2026-03-02T18:00:00Z", courier="dhl"),
        event("s1", "carrier_scan", "o1", "2026-03-03T08:00:00Z", scan="in_transit", courier="dhl"),
        event("x", "order_cancelled", "o1", "2026-03-03T10:00:00Z", reason="customer_request"),
        event("s2", "carrier_scan", "o1", "2026-03-04T08:00:00Z", scan="returned_to_sender",
              courier="dhl"),
        _pay("f1", "o1", "2026-03-06T10:00:00Z", 120.0, rid=None),
    ]  # fmt: skip
    case, ctx, _model, dead, kpi = _run(docs, _cfg())
    assert dead == [] and case.settled["o1"].outcome == "cancelled"
    assert ctx.customers["c1"].refunded_value == 120.0
    late = [k for k in kpi if k["kind"] == "settled"]
    assert _kpi_deltas(late, ("not_delivered",)) == [120.0, 0.0]
    after = [*_order(), event("x", "order_cancelled", "o1", "2026-03-05T10:00:00Z",
                              reason="customer_request")]  # fmt: skip
    case, _ctx, _model, dead, _kpi = _run(after, _cfg())
    assert dead == [] and "o1" in case.cases and case.cases["o1"].outcome is None


def test_an_exchanged_orders_replacement_parcel_is_heard() -> None:
    """After an exchange settled the case, the replacement parcel ships under the order's id:
    its shipment and scans are counted as the settled case's facts
    (``salvage_settled_facts_total``, streams orders and deliveries), not ``unknown_order`` dead
    letters
    (an independent brand's log: 348 of its 604 dead letters were these, drowning real ones).
    A parcel event after the grace period is still a dead letter."""
    streams = ("orders", "deliveries")  # order_shipped, carrier_scan
    before = [metric_total("salvage_settled_facts_total", stream=s) for s in streams]
    docs = [
        *_order(),
        {**_request("o1", "2026-03-05T10:00:00Z"), "preferred_resolution": "exchange"},
        _step("R1", "return_received", "2026-03-07T10:00:00Z"),
        _step("R1", "exchange_completed", "2026-03-08T10:00:00Z", new_sku="sku-2"),
        event("sh2", "order_shipped", "o1", "2026-03-08T18:00:00Z", courier="dhl"),
        event("s3", "carrier_scan", "o1", "2026-03-09T08:00:00Z", scan="in_transit",
              courier="dhl"),
        event("s4", "carrier_scan", "o1", "2026-03-10T08:00:00Z", scan="delivered",
              courier="dhl"),
        event("s5", "carrier_scan", "o1", "2026-06-10T08:00:00Z", scan="delivered",
              courier="dhl"),  # 94 days later: after the grace period
    ]  # fmt: skip
    case, _ctx, _model, dead, _kpi = _run(docs, _cfg())
    assert case.settled["o1"].outcome == "exchange"
    assert [(d.kind.value, d.event_id) for d in dead] == [("unknown_order", "s5")]
    heard = [metric_total("salvage_settled_facts_total", stream=s) for s in streams]
    assert [a - b for a, b in zip(heard, before, strict=True)] == [1, 2]
