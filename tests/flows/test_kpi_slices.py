"""KPI slices of money paid after a case closed, and of money in many currencies, through the
flow (the QA probe's repros ``late_fact_money_loses_kpi_slices`` and
``sixth_currency_summed_in_other``, by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from salvage.sinks import kpis
from tests.flowkit import run_file_flow
from tests.helpers import event, metric_total, order_placed

LANE = "dhl:central>north"


def _refund(eid: str, oid: str, at: str, amount: float, currency: str = "EUR", **kw) -> dict:
    return event(eid, "refund_issued", oid, at, amount=amount, currency=currency, **kw)


def _delivered(oid: str, at: str) -> dict:
    return event(f"{oid}-d", "carrier_scan", oid, at, scan="delivered", courier="dhl")


def _request(oid: str, at: str) -> dict:
    return event(f"{oid}-req", "return_requested", oid, at, return_id="R1", reason="too_small",
                 items=[{"sku": "sku-1", "qty": 1}], preferred_resolution="refund")  # fmt: skip


def _place(oid: str, at: str, currency: str = "EUR", **kw) -> dict:
    placed = order_placed(oid, at, customer=f"c-{oid}", price=100.0, **kw)
    return {
        **placed,
        "currency": currency,
        "origin_region": "central",
        "destination_region": "north",
    }


def _write(path: Path, docs: list[dict]) -> Path:
    docs.sort(key=lambda d: d["occurred_at"])
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _money(name: str, **labels: str) -> float:
    return round(metric_total(name, **labels), 2)


def test_money_paid_after_the_close_keeps_the_case_slices(tmp_path: Path) -> None:
    """sl1 (campaign bw-26) refunded 80, then after its close a support contact and 20 more;
    sl2 cancelled, then refunded 100. All 200 EUR refunded and 100 EUR of leakage under the
    case's campaign / family / lane (the 20 under the late contact's intent); before: 120
    refunded and 20 leaked under ``none``."""
    docs = [
        _place("sl1", "2026-03-01T08:00:00Z", campaign="bw-26"),
        _delivered("sl1", "2026-03-03T11:00:00Z"),
        _request("sl1", "2026-03-05T10:00:00Z"),
        event("sl1-recv", "return_received", "sl1", "2026-03-08T10:00:00Z", return_id="R1"),
        event("sl1-g", "return_graded", "sl1", "2026-03-09T10:00:00Z", return_id="R1", grade="A"),
        _refund("sl1-f1", "sl1", "2026-03-10T10:00:00Z", 80.0, return_id="R1"),
        event("sl1-c", "support_contact", "sl1", "2026-03-11T10:00:00Z", channel="email",
              intent="refund_request"),
        _refund("sl1-f2", "sl1", "2026-03-12T10:00:00Z", 20.0, return_id="R1"),
        _place("sl2", "2026-03-01T09:00:00Z", campaign="bw-26"),
        event("sl2-x", "order_cancelled", "sl2", "2026-03-01T11:00:00Z"),
        _refund("sl2-f", "sl2", "2026-03-02T09:00:00Z", 100.0),
    ]  # fmt: skip
    log = _write(tmp_path / "log.jsonl", docs)
    kpis.configure()
    d = {"currency": "EUR", "campaign": "bw-26", "sku_family": "apparel_tops", "lane": LANE}
    none = {"currency": "EUR", "campaign": "none", "sku_family": "none", "lane": "none"}
    names = ("salvage_refunded_total", "salvage_refund_leakage_total")
    before = {(n, k): _money(n, **labels) for n in names for k, labels in (("d", d), ("0", none))}
    late = {**d, "support_reason": "refund_request"}
    before["late"] = _money("salvage_refunded_total", **late)
    run_file_flow([log], tmp_path / "out")
    after = {(n, k): _money(n, **labels) for n in names for k, labels in (("d", d), ("0", none))}
    delta = {k: round(after[k] - before[k], 2) for k in after}
    assert delta == {
        ("salvage_refunded_total", "d"): 200.0,
        ("salvage_refunded_total", "0"): 0.0,
        ("salvage_refund_leakage_total", "d"): 100.0,
        ("salvage_refund_leakage_total", "0"): 0.0,
    }
    assert round(_money("salvage_refunded_total", **late) - before["late"], 2) == 20.0


def test_a_fifth_and_sixth_currency_are_never_summed(tmp_path: Path) -> None:
    """Six orders in six currencies, each refunded 100 (top-N currency 4): every currency's
    refunded value is 100 under its own label, none under ``other``; before, the last two were
    summed as 200 ``other``."""
    currencies = ("EUR", "SEK", "NOK", "DKK", "GBP", "CHF")
    docs = []
    for i, cur in enumerate(currencies):
        oid = f"cur{i}"
        docs += [
            _place(oid, f"2026-03-0{i + 1}T08:00:00Z", currency=cur),
            _delivered(oid, f"2026-03-0{i + 3}T11:00:00Z"),
            _refund(f"{oid}-f", oid, f"2026-03-{i + 12}T10:00:00Z", 100.0, cur),
        ]
    log = _write(tmp_path / "log.jsonl", docs)
    kpis.configure()
    before = {c: _money("salvage_refunded_total", currency=c) for c in (*currencies, "other")}
    run_file_flow([log], tmp_path / "out")
    after = {c: _money("salvage_refunded_total", currency=c) for c in (*currencies, "other")}
    assert {c: round(after[c] - before[c], 2) for c in after} == {
        **dict.fromkeys(currencies, 100.0),
        "other": 0.0,
    }
