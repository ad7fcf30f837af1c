"""Decision points (README "Decision points"): the case stage sends an open case's update on to
its customer's context, the models and dispatch only when it is one. A carrier scan that
delivers nothing and signals no delay is kept back unless some policy rule could hold on it,
which :func:`salvage.policy.engine.case_gate` decides from the case's own values: an
over-approximation of the policy's gate (property-tested here on random policies, features and
scores). On every simulator scenario and on variants the simulator's defaults do not produce,
a run with decision points emits exactly what a run that sends every update emits (while the
rule baseline drives the policy), and most updates are kept back."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salvage.config import Settings
from salvage.connectors.simulator import SCENARIOS, write_log
from salvage.features.customer import JOINED_FEATURES
from salvage.features.order_case import CASE_FEATURES
from salvage.flows.messages import Batch, Event, Route
from salvage.flows.plain import PlainLoop
from salvage.flows.sources import file_part_id
from salvage.flows.topology import stage_config
from salvage.policy.config import Policy, load_policy
from salvage.policy.engine import case_gate, gate_source, row_gate
from tests.flowkit import feed_log
from tests.helpers import event, line, order_placed
from tests.policy.test_decide_gate import _log, _run, features, policies

ANY_SCORE = st.one_of(
    st.sampled_from((0.0, 0.02, 0.2, 0.3, 0.35, 0.5, 0.65, 0.7, 0.9, 1.0)),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), f=features, rec=ANY_SCORE, abuse=ANY_SCORE)
def test_the_case_gate_holds_wherever_the_gate_can(
    policy: Policy, f: dict, rec: float, abuse: float
) -> None:
    """Where the policy's gate holds, for any scores and any customer, the case gate holds on
    the case's values alone: an update it keeps back is one dispatch would do nothing with."""
    values = tuple(f[name] for name in JOINED_FEATURES)
    if row_gate(policy, JOINED_FEATURES)(values, rec, abuse):
        assert case_gate(policy, CASE_FEATURES)(values[: len(CASE_FEATURES)]), gate_source(policy)


def test_the_shipped_case_gate() -> None:
    """On the shipped policy: a quiet parcel in transit cannot trigger anything; a late one, a
    delivered one with a fit question, and any open claim (the review guardrail reads scores
    and the customer, so the case gate lets every claim through) can."""
    gate = case_gate(load_policy(), CASE_FEATURES)
    quiet = dict.fromkeys(CASE_FEATURES, 0.0) | {"order_value": 80.0, "margin": 50.0}

    def holds(**changed: float) -> bool:
        return bool(gate(tuple((quiet | changed)[name] for name in CASE_FEATURES)))

    assert not holds()
    assert not holds(hours_since_last_scan=30.0, slippage_hours=5.9)
    assert holds(slippage_hours=6.0)
    assert holds(delayed_scans=1.0)
    assert not holds(delivered=1.0)
    assert holds(delivered=1.0, fit_intent_7d=1.0)
    assert holds(return_requested=1.0, reason_not_received=1.0)
    assert holds(wismo_after_delivered=1.0, delivered=1.0)


def _context_updates(log: Path, points: bool) -> int:
    """How many case updates reached the customers' context stage in a run."""
    s = Settings(redis_url="", shards=2, metrics_port=0)
    cfg = stage_config(s, (file_part_id(0, log),), case_records=False)
    cfg = replace(cfg, decision_points=points)
    n = 0

    def inspect(name: str, key: str, items: list) -> None:
        nonlocal n
        if name == "context":
            for item in items:
                n += len(item.items) if type(item) is Batch else type(item) is Event

    feed_log(PlainLoop(cfg, lambda k, p: None, None, inspect), log, s)
    return n


CASES = [*SCENARIOS, "closed-loop"]


def _without_shadow(outputs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The outputs less the shadow models' predictions in score records and case records: the
    models learn from the latest decision point before a case's close, not from its latest
    update (README "Decision points"), so a shadow model's predictions differ while the rule
    baseline drives the policy and nothing else does."""
    kept = []
    for kind, payload in outputs:
        if kind == str(Route.SCORE):
            doc = json.loads(payload)
            doc.pop("model")
            payload = json.dumps(doc, sort_keys=True)
        elif kind == str(Route.CASE_RECORD):  # (order id, time, the document's JSON bytes)
            order_id, t, text = json.loads(payload)
            doc = json.loads(ast.literal_eval(text))
            doc["scores"].pop("models")
            payload = json.dumps([order_id, t, doc], sort_keys=True)
        kept.append((kind, payload))
    return kept


@pytest.mark.parametrize("scenario", CASES)
def test_decision_points_change_no_output(tmp_path: Path, scenario: str) -> None:
    log = _log(tmp_path, scenario)
    points, _ = _run(log, gate=True, records=True, points=True)
    every, _ = _run(log, gate=True, records=True, points=False)
    record = str(Route.CASE_RECORD)
    triggers = [p for k, p in points if k == "trigger"]
    assert triggers, "no triggers: the comparison would prove nothing"
    assert [p for k, p in every if k == "trigger"] == triggers  # byte-identical
    # every output of the ordered output stage, in order; the taps but the case records (KPI
    # facts, score records, dead letters: each shard's own, in no order across shards) the same
    points, every = _without_shadow(points), _without_shadow(every)
    taps = {str(r) for r in (Route.KPI, Route.SCORE, Route.DEAD_LETTER)}
    assert [x for x in every if x[0] not in taps | {record}] == [
        x for x in points if x[0] not in taps | {record}
    ]
    assert sorted(x for x in every if x[0] in taps) == sorted(x for x in points if x[0] in taps)

    # case records: one per order and dispatch call, from its latest update there, so now from
    # its latest decision point; where both runs wrote one for the same update, the same one
    def by_update(outputs: list[tuple[str, str]]) -> dict[tuple, str]:
        docs = (json.loads(p) for k, p in outputs if k == record)
        return {(order_id, t): json.dumps(doc, sort_keys=True) for order_id, t, doc in docs}

    docs, all_docs = by_update(points), by_update(every)
    both = docs.keys() & all_docs.keys()
    assert len(both) > len(docs) // 2 and len(docs) < len(all_docs), (len(docs), len(all_docs))
    assert {k: docs[k] for k in both} == {k: all_docs[k] for k in both}


@pytest.mark.parametrize(
    "variants",
    [("realistic-text",), ("split-returns",), ("bracketing-unflagged",), ("foreign-currency",)],
)
def test_decision_points_change_no_output_on_variants(
    tmp_path: Path, variants: tuple[str, ...]
) -> None:
    log = tmp_path / "log.jsonl"
    write_log("silent-carrier-incident", 300, 7, log, variants=variants)
    points, _ = _run(log, gate=True, records=False, points=True)
    every, _ = _run(log, gate=True, records=False, points=False)
    assert [p for k, p in points if k == "trigger"]
    assert sorted(_without_shadow(every)) == sorted(_without_shadow(points))
    assert [p for k, p in every if k == "trigger"] == [p for k, p in points if k == "trigger"]


@pytest.mark.parametrize(
    ("scenario", "share"), [("steady-state", 0.5), ("silent-carrier-incident", 0.8)]
)
def test_most_updates_are_kept_back(tmp_path: Path, scenario: str, share: float) -> None:
    """Most updates of a steady brand are quiet scans; with a carrier incident (many late
    parcels, on which the reassurance rule could hold) fewer are."""
    log = _log(tmp_path, scenario)
    sent, every = _context_updates(log, True), _context_updates(log, False)
    assert 0 < sent < every * share, (sent, every)


@pytest.mark.parametrize(("currency", "kept"), [("EUR", True), ("SEK", True), ("BRL", False)])
def test_quiet_scans_stay_back_and_a_late_one_goes_on(
    tmp_path: Path, currency: str, kept: bool
) -> None:
    """One order: its placement goes on, its shipment and a quiet scan stay back, a scan whose
    carrier ETA is a day past the promise goes on (the reassurance rule could hold), and so does
    its delivery. The same for an order in a currency the policy has a rate for (SEK: the gate
    reads its money converted); one in a currency without a rate (BRL) has every update go on,
    for dispatch to decide on."""
    log = tmp_path / "one.jsonl"
    docs = [
        order_placed("o1", "2026-03-01T10:00:00Z", promised="2026-03-04T18:00:00Z"),
        event("sh", "order_shipped", "o1", "2026-03-02T09:00:00Z", courier="dhl"),
        event("s1", "carrier_scan", "o1", "2026-03-02T18:00:00Z", scan="in_transit",
              courier="dhl", estimated_delivery_at="2026-03-04T12:00:00Z"),
        event("s2", "carrier_scan", "o1", "2026-03-03T18:00:00Z", scan="in_transit",
              courier="dhl", estimated_delivery_at="2026-03-05T20:00:00Z"),
        event("s3", "carrier_scan", "o1", "2026-03-05T19:00:00Z", scan="delivered",
              courier="dhl"),
    ]  # fmt: skip
    docs[0]["currency"] = currency
    log.write_bytes(b"\n".join(line(d) for d in docs) + b"\n")
    s = Settings(redis_url="", shards=1, metrics_port=0)
    sent: dict[bool, list[str]] = {}
    for points in (True, False):
        cfg = replace(
            stage_config(s, (file_part_id(0, log),), case_records=False), decision_points=points
        )
        ids: list[str] = []

        def inspect(name: str, key: str, items: list, ids: list[str] = ids) -> None:
            if name == "context":
                for item in items:
                    batch = (
                        item.items if type(item) is Batch else [item] if type(item) is Event else []
                    )
                    for _t, _tie, view in batch:
                        ids.append(view.source_id)

        feed_log(PlainLoop(cfg, lambda k, p: None, None, inspect), log, s)
        sent[points] = ids
    events = {p: [i for i in ids if not i.startswith("~timer:")] for p, ids in sent.items()}
    assert events[False] == ["o1-placed", "sh", "s1", "s2", "s3"]
    assert events[True] == (["o1-placed", "s2", "s3"] if kept else events[False])
    # the timers' updates after the delivery (the return window closing ...) go on either way
    assert [i for i in sent[True] if i.startswith("~timer:")]


def test_decision_points_change_no_output_in_another_currency(tmp_path: Path) -> None:
    """A brand selling in SEK under the EUR policy (the shipped rates): the case gate reads each
    order's money converted as dispatch's gate does, keeps most updates back, and the outputs
    are those of a run that sends every update."""
    log = tmp_path / "sek.jsonl"
    with log.open("w") as out:
        for raw in _log(tmp_path, "steady-state").read_text().splitlines():
            doc = json.loads(raw)
            if doc.get("currency") == "EUR":
                doc["currency"] = "SEK"
            if "amount" in doc:
                doc["amount"] = round(doc["amount"] * 11, 2)
            for item in doc.get("lines") or ():
                item["unit_price"] = round(item["unit_price"] * 11, 2)
                item["unit_cost"] = round(item["unit_cost"] * 11, 2)
            out.write(json.dumps(doc) + "\n")
    points, _ = _run(log, gate=True, records=False, points=True)
    every, _ = _run(log, gate=True, records=False, points=False)
    triggers = [p for k, p in points if k == "trigger"]
    assert triggers and {json.loads(p)["currency"] for p in triggers} == {"EUR"}  # the policy's
    assert [p for k, p in every if k == "trigger"] == triggers
    assert sorted(_without_shadow(every)) == sorted(_without_shadow(points))
    sent, all_updates = _context_updates(log, True), _context_updates(log, False)
    assert 0 < sent < all_updates // 2, (sent, all_updates)


def _late_parcels_log(path: Path) -> list[dict]:
    """Six orders, each with its own customer: each shipped, scanned in transit on time twice
    (kept back), then scanned with a carrier ETA a day past its promise (no delay code: only the
    case gate lets it through, for the reassurance rule), then delivered a day late; two more
    orders scanned on time and delivered on time; and a last order placed a week later, whose
    events move every partition's clock past the others' deadlines."""
    docs: list[dict] = []
    for i in range(8):
        oid, late = f"k{i}", i < 6
        docs += [
            order_placed(
                oid, "2026-09-01T08:00:00Z", customer=f"kc{i}", promised="2026-09-04T18:00:00Z"
            ),
            event(f"{oid}-sh", "order_shipped", oid, "2026-09-01T16:00:00Z", courier="dhl"),
            event(
                f"{oid}-s1",
                "carrier_scan",
                oid,
                "2026-09-02T06:00:00Z",
                scan="picked_up",
                courier="dhl",
                estimated_delivery_at="2026-09-04T12:00:00Z",
            ),
            event(
                f"{oid}-s2",
                "carrier_scan",
                oid,
                "2026-09-02T20:00:00Z",
                scan="in_transit",
                courier="dhl",
                estimated_delivery_at="2026-09-04T12:00:00Z",
            ),
        ]
        if late:
            docs += [
                event(
                    f"{oid}-s3",
                    "carrier_scan",
                    oid,
                    "2026-09-03T20:00:00Z",
                    scan="in_transit",
                    courier="dhl",
                    estimated_delivery_at="2026-09-05T18:00:00Z",
                ),
                event(
                    f"{oid}-d",
                    "carrier_scan",
                    oid,
                    "2026-09-05T17:00:00Z",
                    scan="delivered",
                    courier="dhl",
                ),
            ]
        else:
            docs.append(
                event(
                    f"{oid}-d",
                    "carrier_scan",
                    oid,
                    "2026-09-04T10:00:00Z",
                    scan="delivered",
                    courier="dhl",
                )
            )
    docs += [
        order_placed("kz", "2026-09-12T08:00:00Z", customer="kcz", promised="2026-09-30T18:00:00Z"),
        event("kz-c", "support_contact", "kz", "2026-09-12T09:00:00Z", channel="email",
              intent="product_question"),
        event("kz-r", "return_requested", "kz", "2026-09-12T10:00:00Z", return_id="RZ",
              reason="changed_mind", items=[{"sku": "sku-1", "qty": 1}],
              preferred_resolution="refund"),
        event("kz-s", "carrier_scan", "kz", "2026-09-12T11:00:00Z", scan="in_transit",
              courier="dhl"),
    ]  # fmt: skip
    docs.sort(key=lambda d: d["occurred_at"])  # in time order, as the carriers send them
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return docs


def test_decision_points_in_kafka_follow_mode(kafka_broker, unique_name, salvage_cli, tmp_path):
    """``salvage run --follow`` on the embedded broker: the late parcels' reassurances (each let
    through by the case gate alone, from a scan whose carrier ETA slipped) come out, the same
    triggers as file mode's for those orders, and none for the parcels on time."""
    from tests.helpers import drain_when, kafka_settings, start_follow

    log = tmp_path / "late.jsonl"
    _late_parcels_log(log)
    file_run = salvage_cli(
        "run", "--input", str(log), "--out-dir", str(tmp_path / "file"), "--redis-url", "",
        "--no-summary",
    )  # fmt: skip
    assert file_run.wait(timeout=120) == 0, file_run.err_path.read_text()
    lines = (tmp_path / "file" / "interventions.jsonl").read_text().splitlines()
    expected = {t["trigger_id"]: t for t in map(json.loads, lines) if t["order_id"].startswith("k")}
    expected = {k: t for k, t in expected.items() if t["order_id"] != "kz"}
    late = {t["order_id"] for t in expected.values()}
    # the late parcels (those not held out) got the reassurance; the parcels on time nothing
    assert late and late <= {f"k{i}" for i in range(6)}, late
    assert {t["action"] for t in expected.values()} == {"proactive_reassurance"}

    settings = kafka_settings(kafka_broker.bootstrap, unique_name("points"))
    proc = start_follow(salvage_cli, kafka_broker.bootstrap, settings, log, tmp_path / "out")

    def enough(got: list[dict]) -> bool:
        return len({t["trigger_id"] for t in got if t["trigger_id"] in expected}) >= len(expected)

    got = drain_when(proc, settings, settings.topics.interventions, enough)
    mine = {t["trigger_id"]: t for t in got if t["order_id"] in {f"k{i}" for i in range(8)}}
    assert mine.keys() == expected.keys()
    for trigger_id, t in mine.items():
        assert t["action"] == expected[trigger_id]["action"]
        assert t["decided_at"] == expected[trigger_id]["decided_at"]
