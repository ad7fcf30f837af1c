"""Two returns of one order through the stages and the whole flow: the other return's events
that come after the case settled (its own refund, a return after the window) are a settled
case's late facts (counted; the request and the refund reach the customer's history and the
refunded value, with the leakage basis of that return's reason), not ``unknown_order`` dead
letters; the money refunded adds up to every refund in the log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from salvage.connectors.simulator import write_log
from salvage.features.eventtime import DAY_US
from salvage.sinks import kpis
from tests.flowkit import jsonl, run_file_flow
from tests.flows.test_settled import _cfg, _run
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


def _request(rid: str, at: str, reason: str = "too_small") -> dict:
    return event(
        f"{rid}-req",
        "return_requested",
        "o1",
        at,
        return_id=rid,
        reason=reason,
        items=[{"sku": "sku-1", "qty": 1}],
        preferred_resolution="refund",
    )


def _refund(rid: str, at: str, amount: float) -> dict:
    return event(
        f"{rid}-refund", "refund_issued", "o1", at, return_id=rid, amount=amount, currency="EUR"
    )


def _two_parcels(reason: str = "not_received") -> list[dict]:
    """Two units, two returns: R2 (``reason``) is requested while R1 is open and refunded after
    R1's refund settled the case; then R1's refund again under a new event id (a second payment
    of the refund the case settled with: a top-up, see tests/flows/test_partial_refunds.py)."""
    return [
        order_placed("o1", "2026-03-02T10:00:00Z", price=60.0, qty=2),
        event("d1", "carrier_scan", "o1", "2026-03-04T09:00:00Z", scan="delivered", courier="dhl"),
        _request("R1", "2026-03-05T10:00:00Z"),
        _request("R2", "2026-03-06T10:00:00Z", reason=reason),
        _refund("R1", "2026-03-09T10:00:00Z", 60.0),
        event(
            "R2-label",
            "return_label_issued",
            "o1",
            "2026-03-09T12:00:00Z",
            return_id="R2",
            courier="dhl",
            label_cost=4.0,
        ),
        event("R2-recv", "return_received", "o1", "2026-03-11T10:00:00Z", return_id="R2"),
        _refund("R2", "2026-03-12T10:00:00Z", 60.0),
        {**_refund("R1", "2026-03-13T10:00:00Z", 60.0), "event_id": "R1-refund-again"},
    ]


def _kpi_deltas(kpi: list[dict], bases: tuple[str, ...]) -> list[float]:
    """What observing the KPI facts adds to the refunded value of each basis, then to leakage."""
    kpis.configure()

    def read() -> list[float]:
        by_basis = [metric_total("salvage_refunded_by_basis_total", basis=b) for b in bases]
        return [*by_basis, metric_total("salvage_refund_leakage_total")]

    before = read()
    for fact in kpi:
        kpis.observe(fact)
    return [round(a - b, 6) for a, b in zip(read(), before, strict=True)]


@pytest.mark.parametrize(
    ("reason", "basis", "leaked", "claims"),
    [("too_small", "fit", 60.0, 0), ("not_received", "not_received", 0.0, 1)],
)
def test_the_other_returns_events_after_the_close_are_late_facts(
    reason: str, basis: str, leaked: float, claims: int
) -> None:
    """... and its refund has the leakage basis of its own reason, as a closed case's would
    (the policy could act on its request: the case was open)."""
    case, ctx, _model, dead, kpi = _run(_two_parcels(reason), _cfg())
    assert dead == []  # (R1's second refund is a top-up of the refund the case settled with)
    assert case.settled["o1"].returns == ("R1", 0, (("R2", reason, "refund", False),))
    c = ctx.customers["c1"]
    assert (c.returns, c.not_received_claims) == (2, claims)  # both requests, before the close
    # R1's at the close, R2's as a late fact; R1's top-up is money, not another refund
    assert (c.refunds, c.refunded_value) == (2, 180.0)
    settled = [k["case"] for k in kpi if k["kind"] == "settled"]
    # (R2's label and receipt after the close are counted, and change no history)
    assert [(f["late"], f["amount"], f.get("return_reason"), f.get("basis")) for f in settled] == [
        ("refund_issued", 60.0, reason, None),
        ("refund_issued", 60.0, None, "fit"),  # R1 (too_small): the basis its refund had
    ]
    late = [k for k in kpi if k["kind"] == "settled"]
    fit = 60.0 + (60.0 if basis == "fit" else 0.0)
    expected = [60.0 if basis != "fit" else fit, fit, 0.0, leaked + 60.0]
    assert _kpi_deltas(late, (basis, "fit", "late_return")) == expected


def test_a_return_after_the_window_is_heard_within_the_grace_period_only() -> None:
    """A delivered order closes kept at the end of its return window; a return requested and
    refunded after that is a late fact within the settled grace period (its request counted
    once, its refund with its reason's basis; a refund of a return never requested:
    ``late_return``, not leakage), a dead letter after."""
    kept = [
        order_placed("o1", "2026-03-02T10:00:00Z", price=60.0),
        event("d1", "carrier_scan", "o1", "2026-03-04T09:00:00Z", scan="delivered", courier="dhl"),
    ]
    late = [
        _request("R1", "2026-04-10T10:00:00Z"),
        {**_request("R1", "2026-04-11T10:00:00Z"), "event_id": "R1-req-again"},
        _refund("R1", "2026-04-15T10:00:00Z", 60.0),
        _refund("R9", "2026-04-16T10:00:00Z", 20.0),
    ]
    case, ctx, _model, dead, kpi = _run(kept + late, _cfg(settled_grace_us=45 * DAY_US))
    assert dead == []
    assert case.settled["o1"].outcome == "kept"
    assert (ctx.customers["c1"].returns, ctx.customers["c1"].refunded_value) == (1, 80.0)
    settled = [k for k in kpi if k["kind"] == "settled"]
    assert [k["case"]["late"] for k in settled] == [
        "return_requested",
        "refund_issued",
        "refund_issued",
    ]
    assert _kpi_deltas(settled, ("fit", "late_return")) == [60.0, 20.0, 60.0]
    _case, ctx, _model, dead, _kpi = _run(kept + late, _cfg(settled_grace_us=5 * DAY_US))
    assert [d.kind.value for d in dead] == ["unknown_order"] * 4
    assert ctx.customers["c1"].returns == 0


def test_an_order_that_never_arrived_or_was_cancelled_hears_no_return() -> None:
    """Returns are heard after a delivered order settled, not after it was cancelled."""
    cancelled = [
        order_placed("o1", "2026-03-02T10:00:00Z", price=60.0),
        event("x", "order_cancelled", "o1", "2026-03-02T12:00:00Z", reason="customer_request"),
        _request("R1", "2026-03-10T10:00:00Z"),
        _refund("R1", "2026-03-12T10:00:00Z", 60.0),
    ]
    case, _ctx, _model, dead, _kpi = _run(cancelled, _cfg())
    assert case.settled["o1"].returns is None
    # (its refund is the cancelled order's money: tests/flows/test_partial_refunds.py)
    assert [(d.kind.value, d.event_id) for d in dead] == [("unknown_order", "R1-req")]


def test_split_returns_through_the_flow_lose_no_refund(tmp_path: Path) -> None:
    """The simulator's split-returns variant through file mode: no dead letters, every refund
    and chargeback of the log in the refunded KPI, and about the leakage of the same log without
    the variant (the second parcels' refunds have their reasons' bases, as the first's)."""
    results = {}
    for variants in ((), ("split-returns",)):
        log = tmp_path / f"log{len(variants)}.jsonl"
        write_log("steady-state", 2500, 11, log, variants=variants)
        events = [json.loads(line) for line in log.read_bytes().splitlines()]
        paid = ("refund_issued", "chargeback_filed")
        money = sum(e["amount"] for e in events if e["event_type"] in paid)
        before = [
            metric_total(n) for n in ("salvage_refunded_total", "salvage_refund_leakage_total")
        ]
        out = run_file_flow([log], tmp_path / f"out{len(variants)}")
        after = [
            metric_total(n) for n in ("salvage_refunded_total", "salvage_refund_leakage_total")
        ]
        assert jsonl(out["dead_letters"]) == []
        refunded, leaked = (a - b for a, b in zip(after, before, strict=True))
        assert round(refunded, 2) == round(money, 2)
        results[variants] = (events, out, refunded, leaked)
    events, out, refunded, leaked = results[("split-returns",)]
    plain_leaked = results[()][3]
    assert abs(leaked - plain_leaked) <= 0.02 * refunded, (leaked, plain_leaked, refunded)
    split = {e["order_id"] for e in events if e.get("return_id", "").endswith("-R2")}
    assert len(split) >= 20
    # the journey follows each case's first return: the second one's progress is not announced
    # under either id (at most its settlement, when it settled the case)
    updates = [u for u in jsonl(out["status_updates"]) if u["order_id"] in split]
    assert {u["order_id"] for u in updates if u["return_id"].endswith("-R1")} == split
    second = {u["stage"] for u in updates if u["return_id"].endswith("-R2")}
    assert second <= {"refund_issued", "store_credit_issued", "exchange_completed"}
    assert len(updates) == len({u["update_id"] for u in updates})


def test_the_other_returns_and_the_settled_return_id_survive_a_snapshot() -> None:
    """Recovery state keeps a case's other returns and a settled case's return id: a stage
    loaded from a snapshot taken in between goes on as the original."""
    from salvage.connectors.events import EVENT_ADAPTER
    from salvage.features.eventtime import END, to_us
    from salvage.flows.messages import Event, Tick
    from salvage.flows.stages import CaseStage
    from salvage.flows.state import StageState

    items = []
    for d in _two_parcels():
        ev = EVENT_ADAPTER.validate_json(json.dumps(d))
        items.append(Event(to_us(ev.occurred_at), ev.event_id, ev))
    cfg = _cfg()
    src = cfg.sources[0]

    def run(stage: CaseStage, batch: list, wm: int) -> list:
        return stage.on_batch([*batch, Tick(src, wm, batch[-1].t)])

    for cut in (4, 5):  # R2 open beside R1; then settled with R1, R2 still to come
        whole, half = CaseStage(0, cfg), CaseStage(0, cfg)
        wm = items[cut].t - 1
        expected = run(whole, items[:cut], wm) + run(whole, items[cut:], END)
        first = run(half, items[:cut], wm)
        if cut == 4:
            assert half.cases["o1"].other_returns == (("R2", 1, "not_received", "refund"),)
        else:
            assert half.settled["o1"].returns == (
                "R1",
                1,
                (("R2", "not_received", "refund", True),),
            )
        header, entries = StageState(half).full()
        loaded = CaseStage(0, cfg)
        StageState(loaded).load(header, entries, cfg)
        assert loaded.cases == half.cases and loaded.settled == half.settled
        assert first + run(loaded, items[cut:], END) == expected


def test_the_same_in_kafka_follow_mode(kafka_broker, unique_name, salvage_cli, tmp_path):
    """Two parcels through ``salvage run --follow`` on the embedded broker: the other return's
    refund after the close and the settled return's second payment are in the refunded value of
    the metrics snapshot written at the drain (bases: their reasons'); the only dead letter is a
    refund after the grace period (the log's last event)."""
    suffix = unique_name("split")
    settings = kafka_settings(kafka_broker.bootstrap, suffix)
    log = tmp_path / "two.jsonl"
    too_late = {**_refund("R1", "2026-05-30T10:00:00Z", 5.0), "event_id": "R1-too-late"}
    log.write_text("".join(json.dumps(d) + "\n" for d in [*_two_parcels(), too_late]))
    out_dir = tmp_path / "kafka-out"
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, log, out_dir)
    # the log's last event (in event time) is the refused refund: once it is out, drain
    dead = dead_letters_at_drain(proc, settings)
    assert dead_letter_ids(dead) == [("unknown_order", "R1-too-late")]
    prom = (out_dir / "metrics.prom").read_text()
    assert prom_total(prom, "salvage_refunded_total", currency="EUR") == 180.0
    late = {"basis": "not_received", "currency": "EUR"}
    assert prom_total(prom, "salvage_refunded_by_basis_total", **late) == 60.0
    fit = {"basis": "fit", "currency": "EUR"}  # R1's refund at the close, and its top-up
    assert prom_total(prom, "salvage_refunded_by_basis_total", **fit) == 120.0
    assert prom_total(prom, "salvage_settled_facts_total", stream="returns") == 4.0


def _journey(docs: list[dict]) -> list[tuple[str, str]]:
    """(return id, stage) of each status update and (return id, kind) of each alert the case
    stage sends for ``docs``."""
    from salvage.connectors.events import EVENT_ADAPTER
    from salvage.features.eventtime import END, to_us
    from salvage.flows.messages import Event, Tick
    from salvage.flows.stages import CaseStage

    cfg = _cfg()
    items = []
    for d in docs:
        ev = EVENT_ADAPTER.validate_json(json.dumps(d))
        items.append(Event(to_us(ev.occurred_at), ev.event_id, ev))
    out = CaseStage(0, cfg).on_batch([*items, Tick(cfg.sources[0], END, items[-1].t)])
    notes = [item for r, p in out if r == "out" for _, _, item in p[1].items]
    return [
        (p.return_id, p.stage.value if k == "status_update" else p.kind.value) for k, p in notes
    ]


def test_the_journey_follows_the_first_return_only() -> None:
    """The other return's label, receipt and grade announce nothing, and judge no alert on the
    first return's progress; when it settles the case first, nothing is announced for it."""
    docs = _two_parcels("too_small")[:4]  # placed, delivered, R1 and R2 requested
    docs += [
        event("R2-label", "return_label_issued", "o1", "2026-03-06T12:00:00Z", return_id="R2",
              courier="dhl", label_cost=4.0),
        event("R2-recv", "return_received", "o1", "2026-03-08T10:00:00Z", return_id="R2"),
        event("R1-label", "return_label_issued", "o1", "2026-03-08T11:00:00Z", return_id="R1",
              courier="dhl", label_cost=4.0),
        _refund("R2", "2026-03-09T10:00:00Z", 60.0),
    ]  # fmt: skip
    assert _journey(docs) == [("R1", "label_issued")]


def test_a_settled_record_from_before_returns_were_heard_hears_none() -> None:
    """A recovery snapshot written before ``Settled.returns`` existed loads with None: the
    settled case hears no return (as then: its return's second refund stays a dead letter,
    rather than every return event becoming another return's)."""
    from salvage.connectors.events import EVENT_ADAPTER
    from salvage.flows.state import _settled_record

    record = _settled_record()
    added = ("returns", "basis", "currency", "campaign", "sku_family", "lane", "support")
    before = tuple(n for n in record.names if n not in added)
    old = record.decoder(before)(["c1", 5, "refund", False, "", 0])
    assert old.returns is None and old.basis == "" and old.currency == ""
    # (no KPI dimensions either: its late money is counted under "none", as then)
    assert (old.campaign, old.sku_family, old.lane, old.support) == ("", "", "", "")
    again = EVENT_ADAPTER.validate_json(json.dumps(_refund("R1", "2026-03-13T10:00:00Z", 60.0)))
    assert not old.hears(again) and not old.tops_up(again)
    stored = ("R1", 1, [["R2", "fit", "refund", True]])  # (as msgpack gives it back)
    dims = ["bw-26", "shoes", "dhl:a>b", "complaint"]
    new = record.decoder(None)([*record.encode(old)[:6], stored, "", "EUR", *dims])
    assert new.returns == ("R1", 1, (("R2", "fit", "refund", True),)) and not new.hears(again)
    assert [new.campaign, new.sku_family, new.lane, new.support] == dims
    assert new.lane is sys.intern("dhl:a>b")  # shared, as the cases' labels


def test_a_settled_case_keeps_its_other_returns_reasons_and_counts() -> None:
    """After the close: a second refund of another return keeps its reason's basis, and so does
    one after its cancellation; its request repeated is counted once; a refund naming no return
    when none is open is a second payment of the settling refund (its basis); a late exchange
    counts as a retained return."""
    docs = _two_parcels("damaged")[:5]  # R1 and R2 requested, R1's refund settles the case
    docs += [
        _refund("R2", "2026-03-12T10:00:00Z", 30.0),
        {**_refund("R2", "2026-03-12T11:00:00Z", 30.0), "event_id": "R2-refund-2"},
        {**_request("R2", "2026-03-12T12:00:00Z"), "event_id": "R2-req-again"},
        {
            **_refund("R2", "2026-03-12T13:00:00Z", 5.0),
            "event_id": "R2-refund-3",
            "return_id": None,
        },
        _request("R3", "2026-03-13T10:00:00Z"),
        event("R3-x", "exchange_completed", "o1", "2026-03-14T10:00:00Z", return_id="R3"),
    ]
    case, ctx, _model, dead, kpi = _run(docs, _cfg())
    assert dead == []  # R2-refund-3: no id, nothing open any more: R1's refund topped up
    c = ctx.customers["c1"]
    # (R2's second refund is a second payment of a refund heard already: money, not a refund)
    assert (c.returns, c.refunds, c.refunded_value, c.retained_returns) == (3, 2, 125.0, 1)
    late = [k for k in kpi if k["kind"] == "settled"]
    assert _kpi_deltas(late, ("damaged", "late_return", "fit")) == [60.0, 0.0, 5.0, 65.0]
    known = case.settled["o1"].returns
    assert known == (
        "R1",
        0,
        (("R2", "damaged", "refund", False), ("R3", "too_small", "refund", False)),
    )


def test_a_refund_of_a_return_never_requested_settles_with_its_id() -> None:
    again = {**_refund("R1", "2026-03-10T10:00:00Z", 60.0), "event_id": "R1-refund-again"}
    docs = [*_two_parcels()[:2], _refund("R1", "2026-03-09T10:00:00Z", 60.0), again]
    case, ctx, _model, dead, _kpi = _run(docs, _cfg())
    assert case.settled["o1"].returns == "R1"
    assert dead == []  # its second payment is a top-up (basis: the first one's)
    assert ctx.customers["c1"].refunded_value == 120.0
    assert ctx.customers["c1"].refunds == 1


@pytest.mark.parametrize("first", ["R1", "R2"])
def test_each_parcel_gets_its_own_disposition_and_flags_count_once(tmp_path, first) -> None:
    """The other return's grade decides its own disposition; the customer's abuse-flag count is
    one (R2's worn) whichever grade comes first."""
    grades = {
        "R1": event("R1-grade", "return_graded", "o1", "", return_id="R1", grade="A"),
        "R2": event("R2-grade", "return_graded", "o1", "", return_id="R2", grade="dispose",
                    abuse_flags=["worn"]),
    }  # fmt: skip
    order = [first, "R2" if first == "R1" else "R1"]
    docs = _two_parcels("too_small")[:4]
    for hour, rid in zip((10, 11), order, strict=True):
        docs.append({**grades[rid], "occurred_at": f"2026-03-08T{hour}:00:00Z"})
    log = tmp_path / "two.jsonl"
    log.write_text("".join(json.dumps(d) + "\n" for d in docs))
    run_file_flow([log], tmp_path / "out")
    dispositions = jsonl((tmp_path / "out" / "dispositions.jsonl").read_bytes())
    assert sorted(d["grade"] for d in dispositions) == ["A", "dispose"], dispositions
    case, ctx, _model, _dead, _kpi = _run(docs, _cfg())
    assert ctx.customers["c1"].abuse_flags == 1
    assert case.cases["o1"].abuse_flags == ("worn",)
