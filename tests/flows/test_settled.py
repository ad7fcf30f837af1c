"""A case settles, then listens (DESIGN §11): within the grace period after a refund, late grades,
contacts, chargebacks and review verdicts update the customer's history and the abuse label
instead of becoming ``unknown_order`` dead letters; after it, they are dead letters again."""

from __future__ import annotations

import json

from salvage.connectors.events import EVENT_ADAPTER
from salvage.features.eventtime import DAY_US, END, to_us
from salvage.flows.messages import Event, Tick
from salvage.flows.stages import CaseStage, ContextStage, ModelStage, StageConfig
from salvage.scoring.models import ModelConfig
from tests.helpers import event, metric_total, order_placed

SRC = "t#0"


def _cfg(**kw) -> StageConfig:
    return StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=(SRC,), **kw)


def _story(late_day: int) -> list[dict]:
    """Delivered, returned as changed_mind, refunded before grading; then late facts."""
    late = f"2026-03-{late_day:02d}T10:00:00Z"
    return [
        order_placed("o1", "2026-03-02T10:00:00Z", price=120.0),
        event("d1", "carrier_scan", "o1", "2026-03-04T09:00:00Z", scan="delivered", courier="dhl"),
        event(
            "r1",
            "return_requested",
            "o1",
            "2026-03-05T10:00:00Z",
            return_id="R1",
            reason="changed_mind",
            items=[{"sku": "sku-1", "qty": 1}],
            preferred_resolution="refund",
        ),
        event("f1", "refund_issued", "o1", "2026-03-06T10:00:00Z", amount=120.0, currency="EUR"),
        # --- after the refund settled the case
        event("g1", "return_graded", "o1", late, return_id="R1", grade="B", abuse_flags=["worn"]),
        event(
            "c1",
            "support_contact",
            "o1",
            late.replace("10:", "11:"),
            channel="chat",
            intent="complaint",
            sentiment=-0.8,
        ),
        event(
            "v1",
            "review_resolved",
            "o1",
            late.replace("10:", "12:"),
            review_id="rv1",
            verdict="abuse_confirmed",
        ),
        event(
            "k1", "chargeback_filed", "o1", late.replace("10:", "13:"), amount=50.0, currency="EUR"
        ),
    ]


def _run(docs: list[dict], cfg: StageConfig):
    case, ctx, model = CaseStage(0, cfg), ContextStage(0, cfg), ModelStage(0, cfg)
    items = []
    for d in docs:
        ev = EVENT_ADAPTER.validate_json(json.dumps(d))
        items.append(Event(to_us(ev.occurred_at), ev.event_id, ev))
    out = case.on_batch([*items, Tick(SRC, END, items[-1].t)])
    dead = [p for r, p in out if r == "dlq"]
    to_ctx = [p[1] for r, p in out if r == "ctx"] + [p for r, p in out if r == "tick"]
    out2 = ctx.on_batch(to_ctx)
    kpi = [p for r, p in out2 if r == "kpi"]
    to_model = [p[1] for r, p in out2 if r == "model"] + [p for r, p in out2 if r == "tick"]
    model.on_batch(to_model)
    return case, ctx, model, dead, kpi


def test_late_facts_within_the_grace_period_update_history_not_dead_letters():
    cfg = _cfg(model=ModelConfig(verdict_wait_us=45 * DAY_US))
    case, ctx, model, dead, kpi = _run(_story(late_day=20), cfg)
    assert dead == []  # zero unknown_order dead letters for grade, contact, verdict, chargeback
    c = ctx.customers["c1"]
    assert c.refunds == 1 and c.abuse_flags == 1  # the worn flag (the verdict does not recount)
    assert c.contacts == 1 and c.sentiment_sum == -0.8
    assert c.chargebacks == 1 and c.refunded_value == 170.0
    assert [k["case"]["late"] for k in kpi if k["kind"] == "settled"] == [
        "return_graded",
        "support_contact",
        "review_resolved",
        "chargeback_filed",
    ]
    # refunded before grading: the abuse label waited for the grade, which labelled it abusive
    assert model.models.late_labels == {"return_graded": 1}
    assert model.models.abuse.labels >= 1 and model.models.abuse.positives >= 1
    assert "o1" not in model.models.awaiting
    # the compact settled record keeps the verdict
    assert case.settled["o1"].verdict == "abuse_confirmed"


def test_after_the_grace_period_late_facts_are_dead_letters_again():
    # refund on 03-06 + 45 days = 04-20; late facts on day 52 of March -> April 21+
    docs = _story(late_day=6)
    late = [dict(d) for d in docs[4:]]
    for d in late:
        d["occurred_at"] = d["occurred_at"].replace("2026-03-06", "2026-04-25")
        d["event_id"] += "-late"
    _case, ctx, _model, dead, _kpi = _run(docs[:4] + late, _cfg(settled_grace_us=45 * DAY_US))
    assert [d.kind.value for d in dead] == ["unknown_order"] * 4
    assert ctx.customers["c1"].abuse_flags == 0 and ctx.customers["c1"].contacts == 0


def test_grace_zero_is_the_old_behaviour():
    _case, _ctx, _model, dead, _kpi = _run(_story(late_day=20), _cfg(settled_grace_us=0))
    assert len(dead) == 4


def test_a_late_chargeback_reaches_the_refunded_kpi_in_its_currency():
    """The settled KPI fact of a chargeback carries its amount and currency: refunded value (basis
    ``late_chargeback``), never leakage (sinks/leakage.py)."""
    from salvage.sinks import kpis

    total = metric_total
    kpis.configure()
    basis = {"currency": "EUR", "basis": "late_chargeback"}
    before = [total("salvage_refunded_by_basis_total", **basis)]
    before += [total("salvage_refunded_total", currency="EUR")]
    before += [total("salvage_refund_leakage_total")]
    _case, _ctx, _model, _dead, kpi = _run(_story(late_day=20), _cfg())
    late = [k["case"] for k in kpi if k["kind"] == "settled"]
    assert [(c["late"], c["amount"], c["currency"]) for c in late][-1] == (
        "chargeback_filed",
        50.0,
        "EUR",
    )
    for fact in kpi:
        kpis.observe(fact)
    after = [total("salvage_refunded_by_basis_total", **basis)]
    after += [total("salvage_refunded_total", currency="EUR")]
    after += [total("salvage_refund_leakage_total")]
    assert [round(a - b, 6) for a, b in zip(after, before, strict=True)] == [50.0, 50.0, 0.0]


def test_a_late_fact_redelivered_is_a_duplicate_and_a_changed_copy_is_inconsistent():
    """A late fact's id and payload digest are remembered with the closed case's: the same fact
    again is a duplicate (counted), the same id with another payload an ``inconsistent`` dead
    letter, as for the events before the close (the first one applied is kept either way)."""
    from salvage.sinks import metrics

    docs = _story(late_day=20)[:5]  # the refunded case, then its late grade
    same = dict(docs[4])
    changed = dict(docs[4], grade="dispose")
    items = []
    for i, d in enumerate([*docs, same, changed]):
        ev = EVENT_ADAPTER.validate_json(json.dumps(d))
        digest = 0xABC if i < 6 else 0xDEF  # the source's content digest of each
        t = to_us(ev.occurred_at) + (i >= 5)  # the copies come a microsecond later
        items.append(Event(t, f"{ev.event_id}|v{digest:08x}", ev))
    stage = CaseStage(0, _cfg())
    duplicates = metrics.DUPLICATES._value.get()
    out = stage.on_batch([*items, Tick(SRC, END, items[-1].t)])
    dead = [p for r, p in out if r == "dlq"]
    assert [(d.kind.value, d.event_id) for d in dead] == [("inconsistent", "g1")]
    assert metrics.DUPLICATES._value.get() - duplicates == 1
    views = [view for r, p in out if r == "ctx" for _, _, view in p[1].items]
    assert [v.source_id for v in views].count("g1") == 1  # applied once: the first copy
