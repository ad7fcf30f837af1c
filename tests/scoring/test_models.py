"""Online models: delayed labels, leakage guard, promotion/demotion, state across restarts."""

from __future__ import annotations

import pickle
import random

import pytest

from salvage.features.eventtime import DAY_US
from salvage.flows.stages import CaseView, ModelStage, StageConfig
from salvage.scoring.baseline import RULES_VERSION, ScoreResult
from salvage.scoring.models import ModelConfig, ModelSet, abuse_label, recoverability_label
from salvage.scoring.text import IntentClassifier

RULES = ScoreResult(0.5, 0.5, RULES_VERSION)


def test_recoverability_and_abuse_labels_follow_the_outcome():
    assert recoverability_label({"outcome": "exchange"}) is True
    assert recoverability_label({"outcome": "refund"}) is False
    assert recoverability_label({"outcome": "cancelled"}) is None
    assert abuse_label({"outcome": "kept"}) is None  # no return, no claim: nothing to say
    ret = {"return_requested_at": 5, "delivered_at": 1}
    assert abuse_label({**ret, "abuse_flags": ["worn"]}) is True
    assert abuse_label({**ret, "return_reason": "not_received"}) is True
    assert abuse_label({**ret, "return_reason": "too_small"}) is False
    assert abuse_label({"outcome": "chargeback", "delivered_at": 1}) is True
    assert abuse_label({**ret, "abuse_flags": ["worn"]}, review_verdict=False) is False


def test_delayed_label_joins_the_snapshot_taken_at_scoring_time():
    ms = ModelSet(ModelConfig(min_labels=10**6))
    x_then = {"a": 1.0, "b": 0.0}
    scored = ms.score("o1", 100, x_then, RULES, returned=False, risk=True)
    assert scored.scores.model_version == RULES_VERSION  # shadow: rules drive decisions
    p_then = scored.shadow["recoverability"]
    ms.score("o1", 200, {"a": 2.0, "b": 1.0}, RULES, returned=True, risk=True)
    assert [s.kind for s in ms.pending["o1"]] == ["risk", "return"]
    ms.label("o1", 30 * DAY_US, {"outcome": "refund", "return_requested_at": 200})
    assert "o1" not in ms.pending
    rec = ms.recoverability
    assert rec.labels == 2 and rec.negatives == 2
    # the first evaluated prediction is the one made at t=100, before any label existed
    assert rec.model_eval.window[0][1] == (p_then - 0.0) ** 2
    assert ms.abuse.labels == 1  # only the snapshot taken once the return was claimed


def test_an_order_keeps_its_first_risk_its_return_and_its_newest_snapshot():
    ms = ModelSet(ModelConfig(min_labels=10**6))
    steps = [(1, False, False), (2, False, True), (3, False, True), (4, False, False)]
    steps += [(5, True, True), (6, True, False), (7, True, False)]
    for t, returned, risk in steps:
        ms.score("o1", t, {"a": float(t)}, RULES, returned=returned, risk=risk)
    snaps = ms.pending["o1"]
    assert [(s.kind, s.t) for s in snaps] == [("risk", 2), ("return", 5), ("latest", 7)]
    a = ms.feature_names.index("a")
    assert [s.x[a] for s in snaps] == [2.0, 5.0, 7.0]  # the features of that moment, not later


def test_the_rule_scores_are_model_inputs_and_a_return_crosses_every_input():
    from salvage.scoring.models import logit, prepare

    ms = ModelSet()
    ms.score("o1", 1, {"a": 1.0}, ScoreResult(0.9, 0.1, RULES_VERSION), returned=False)
    assert set(ms.feature_names) == {"a", "rules_recoverability_logit", "rules_abuse_logit"}
    snap = ms.pending["o1"][0]
    stored = snap.x[ms.feature_names.index("rules_recoverability_logit")]
    assert stored == pytest.approx(logit(0.9), rel=1e-6)  # float32
    before = prepare({"a": 1.0, "return_requested": 0.0})
    after = prepare({"a": 1.0, "return_requested": 1.0})
    assert "returned:a" not in before and after["returned:a"] == 1.0
    assert after["returned:return_requested"] == 1.0


def _view(order: str, t: int, status: str, features: dict, facts: dict | None = None):
    return CaseView(
        order_id=order,
        customer_id="c1",
        t=t,
        source_id=f"e{t}",
        changes=(),
        features=features,
        status=status,
        outcome=(facts or {}).get("outcome"),
        lane="l",
        campaign="none",
        sku_family="f",
        currency="EUR",
        order_value=10.0,
        refunded_amount=0.0,
        returned=False,
        abuse_flags=(),
        facts=facts,
    )


def _cfg(**model) -> StageConfig:
    return StageConfig(
        case_shards=1, cust_shards=1, lane_shards=1, sources=("p",), model=ModelConfig(**model)
    )


def _features(i: int, leak: float = 0.0) -> dict[str, float]:
    from tests.features.test_order_case import apply_all, story

    f = apply_all(story(f"o{i}")[:3]).features(10**15)
    return {
        **f,
        **{
            k: 0.0
            for k in (
                "customer_orders",
                "customer_return_rate",
                "customer_refund_rate",
                "customer_abuse_flags",
                "customer_not_received_claims",
                "customer_chargebacks",
                "customer_net_value",
                "customer_tenure_days",
                "customer_days_since_return",
            )
        },
        "leak": leak,
    }


def test_a_feature_that_only_exists_after_the_outcome_never_reaches_training():
    stage = ModelStage(0, _cfg())
    for i in range(40):
        order = f"o{i}"
        open_view = _view(order, 1000 + i, "open", _features(i))
        refunded = i % 2 == 0
        facts = {"outcome": "refund" if refunded else "kept"}
        # at close the features carry the outcome itself: the classic leak
        closed_view = _view(order, 5000 + i, "closed", _features(i, leak=float(refunded)), facts)
        stage.apply([(1000 + i, "a", (open_view, open_view.features))], 0, [])
        stage.apply([(5000 + i, "b", (closed_view, closed_view.features))], 0, [])
    model = stage.models.recoverability
    assert model.labels == 40
    leak = model.parameters().get("leak", {"mean": 0.0, "weight": 0.0})
    assert leak["mean"] == 0.0  # every training row had leak = 0
    assert leak["weight"] == 0.0


def test_snapshots_at_or_after_the_label_time_are_not_learned():
    ms = ModelSet()
    ms.score("o1", 500, {"a": 1.0}, RULES, returned=False)
    ms.label("o1", 500, {"outcome": "kept"})  # same instant: not "before the outcome"
    assert ms.recoverability.labels == 0


def _stream(ms: ModelSet, n: int, informative: bool, rng: random.Random, t0: int):
    """Labels depend on feature s; rules are noise. informative=False flips the relation."""
    events = []
    for i in range(n):
        y = rng.random() < 0.5
        s = (1.0 if y else -1.0) * (1 if informative else -1) + rng.gauss(0, 0.7)
        rules = ScoreResult(rng.random(), rng.random(), RULES_VERSION)
        order = f"o{t0 + i}"
        ms.score(order, t0 + 2 * i, {"s": s, "noise": rng.gauss(0, 1)}, rules, returned=True)
        events += ms.label(order, t0 + 2 * i + 1, {"outcome": "kept" if y else "refund"})
    return events


def test_promotion_after_enough_labels_then_demotion_when_it_goes_wrong():
    rng = random.Random(7)
    ms = ModelSet(ModelConfig(min_labels=200, window=300, promote_margin=0.05))
    events = _stream(ms, 600, True, rng, 0)
    promoted = [e for e in events if e["change"] == "promoted" and e["model"] == "recoverability"]
    assert promoted, events
    first = promoted[0]
    assert first["labels"] >= 200 and first["model_auc"] > first["rules_auc"] + 0.05
    assert "beats rules" in first["reason"]
    assert ms.recoverability.active
    assert ms.version.startswith("recoverability:recoverability-lr-v1")
    scored = ms.score("x", 10**9, {"s": 1.0, "noise": 0.0}, RULES, returned=False)
    assert scored.scores.recoverability == round(scored.shadow["recoverability"], 6)
    # the world flips: the model's error rises and it falls below the rules
    events = _stream(ms, 600, False, rng, 10**6)
    demoted = [e for e in events if e["change"] == "demoted" and e["model"] == "recoverability"]
    assert demoted
    assert "ADWIN" in demoted[0]["reason"] or "fell below" in demoted[0]["reason"]
    # it keeps learning in shadow; if it earns promotion again, it does so as a new version
    again = [e for e in events if e["change"] == "promoted" and e["model"] == "recoverability"]
    assert all(e["t"] > demoted[0]["t"] and e["version"] != first["version"] for e in again)


def test_model_state_survives_a_snapshot_round_trip():
    rng = random.Random(3)
    ms = ModelSet(ModelConfig(min_labels=100, window=200))
    _stream(ms, 300, True, rng, 0)
    restored = pickle.loads(pickle.dumps(ms))  # what a Bytewax snapshot/restore does
    x = {"s": 0.3, "noise": 0.1}
    assert restored.recoverability.predict(x) == ms.recoverability.predict(x)
    assert restored.summary() == ms.summary()
    # both continue identically
    a = _stream(ms, 50, True, random.Random(9), 10**7)
    b = _stream(restored, 50, True, random.Random(9), 10**7)
    assert a == b and restored.summary() == ms.summary()


def test_intent_classifier_learns_and_stays_other_when_unsure():
    clf = IntentClassifier(threshold=0.6, min_examples=10)
    assert clf.infer("where is my parcel") == ("other", 0.0)  # untrained
    phrases = {
        "where_is_my_order": ["where is my parcel", "my order has not arrived", "tracking late"],
        "sizing_question": ["what size should i take", "is it true to size", "size chart"],
        "refund_request": ["i want my money back", "please refund me", "refund my order"],
    }
    for _ in range(6):
        for intent, texts in phrases.items():
            for text in texts:
                clf.learn(text, intent)
    intent, p = clf.infer("my parcel has not arrived")
    assert intent == "where_is_my_order" and p >= 0.6
    assert clf.infer("purple elephant")[0] == "other"
    assert clf.accuracy > 0.8


def test_a_review_verdict_is_the_abuse_label():
    ms = ModelSet(ModelConfig(min_labels=10**6))
    ms.score("o1", 100, {"a": 1.0}, RULES, returned=False)
    ms.score("o1", 200, {"a": 2.0}, RULES, returned=True)
    facts = {
        "outcome": "refund",
        "return_requested_at": 200,
        "return_reason": "too_small",
        "review_verdict": "abuse_confirmed",
        "reviewed_at": 250,
    }
    ms.label("o1", 300, facts)
    assert ms.abuse.positives == 1  # no flags, but a reviewer confirmed abuse
    ms.score("o2", 100, {"a": 1.0}, RULES, returned=True)
    ms.score("o2", 150, {"a": 1.5}, RULES, returned=True)
    ms.label("o2", 300, {**facts, "abuse_flags": ["worn"], "review_verdict": "approve"})
    # the reviewer overrules the grading flag, on both snapshots taken once the return was claimed
    # (and before the verdict: tests/flows/test_leakage_abuse.py)
    assert (ms.abuse.positives, ms.abuse.negatives) == (1, 2)


def test_models_export_writes_the_learned_parameters_of_a_real_run(tmp_path, salvage_cli):
    import json
    import math

    from salvage.connectors.simulator import write_log
    from salvage.scoring.models import prepare

    log = tmp_path / "events.jsonl"
    write_log("steady-state", 800, 3, log)
    db, out, export = tmp_path / "db", tmp_path / "out", tmp_path / "export"
    run = salvage_cli(
        "run", "--input", str(log), "--out-dir", str(out), "--no-summary",
        "--recovery-dir", str(db), env={"SALVAGE_REDIS_URL": ""},
    )  # fmt: skip
    assert run.wait(timeout=180) == 0, run.err_path.read_text()
    empty = salvage_cli("models", "export", "--recovery-dir", str(tmp_path), "--out", str(export))
    assert empty.wait(timeout=60) == 2  # no recovery state: a clear error, not a traceback
    said = " ".join((empty.out_path.read_text() + empty.err_path.read_text()).split())
    assert "no recovery partitions" in said and "Traceback" not in said
    proc = salvage_cli("models", "export", "--recovery-dir", str(db), "--out", str(export))
    assert proc.wait(timeout=60) == 0, proc.err_path.read_text()

    summary = json.loads((export / "summary.json").read_text())
    assert list(summary["shards"]) == ["model-0000"]
    doc = json.loads((export / "model-0000" / "recoverability.json").read_text())
    with (export / "model-0000" / "models.pkl").open("rb") as f:
        models = pickle.load(f)
    rec = models.recoverability
    assert doc["labels"] == rec.labels > 100  # the run labelled real cases, and learned from them
    events = [json.loads(x) for x in (out / "model_events.jsonl").read_text().splitlines()]
    promoted = sum(
        1 for e in events if e["model"] == "recoverability" and e["change"] == "promoted"
    )
    assert doc["version"] == promoted
    assert "rules_recoverability_logit" in doc["weights"]
    # the exported parameters are the model: recomputing a prediction from them gives predict()
    x = {k: 1.0 + i % 3 for i, k in enumerate(models.feature_names)} | {"return_requested": 1.0}
    z = doc["intercept"]
    for k, v in prepare(x).items():
        s = doc["scaler"].get(k)
        if s and k in doc["weights"] and s["var"] > 0:
            z += doc["weights"][k] * max(-5.0, min(5.0, (v - s["mean"]) / math.sqrt(s["var"])))
    assert abs(1 / (1 + math.exp(-z)) - rec.predict(x)) < 1e-3


def test_a_one_class_window_has_no_auc_and_nothing_is_promoted_on_it():
    from salvage.scoring.models import OnlineModel, RollingEval

    ev = RollingEval(window=50)
    for i in range(60):
        ev.update(True, 0.9 if i % 2 else 0.1)
    assert ev.auc_value() is None and ev.summary()["auc"] is None  # not 0.000
    ev.update(False, 0.05)
    assert ev.auc_value() is not None and ev.summary()["auc"] > 0.5
    for _ in range(50):  # the negative leaves the window again
        ev.update(True, 0.5)
    assert ev.auc_value() is None
    # a model "perfect" on a window of kept closures only is never promoted: the gate waits
    m = OnlineModel("recoverability", ModelConfig(min_labels=10, window=50))
    events = [m.evaluate(True, 0.99, 0.5, t) for t in range(200)]
    assert not any(events) and not m.active


def test_no_promotion_when_the_model_is_worse_than_the_rules_on_the_cases_they_flag():
    """Overall the model ranks better (it separates the unflagged cases the rules lump together),
    but on the cases the rules flag (abuse score >= 0.5) it is worse: never promoted. The same
    model, equally good on the flagged cases, is promoted (the gate is not just closed)."""
    from salvage.scoring.models import OnlineModel

    rng = random.Random(7)

    def run(flagged_model_good: bool) -> OnlineModel:
        m = OnlineModel("abuse", ModelConfig(min_labels=200, window=400))
        for t in range(1500):
            y = rng.random() < 0.3
            if rng.random() < 0.3:  # flagged by the rules: the rules rank these well
                p_rules = 0.8 if y else 0.6
                good = 0.9 if y else 0.2
                p_model = good if flagged_model_good else (0.55 if y else 0.7)
            else:  # unflagged: the rules see nothing, the model does
                p_rules = 0.2
                p_model = 0.85 if y else 0.15
            m.evaluate(y, p_model, p_rules, t)
        return m

    worse = run(flagged_model_good=False)
    s = worse.model_eval.auc_value(), worse.rules_eval.auc_value()
    assert s[0] > s[1] + 0.03  # the overall gate alone would promote
    assert worse.model_flagged.auc_value() < worse.rules_flagged.auc_value()
    assert not worse.active and worse.version == 0
    assert run(flagged_model_good=True).active


def test_a_review_requested_case_waits_for_its_verdict_or_the_timeout():
    """A claim the policy sends to review (abuse score >= 0.5) closes before the verdict: its abuse
    label waits. A late abuse_confirmed verdict labels it abusive (the facts at the close said
    nothing: no grade flag, as for bracketing); without a verdict the close-time label is taken
    after the wait."""
    flagged = ScoreResult(0.5, 0.8, RULES_VERSION)
    facts = {"return_requested_at": 2, "delivered_at": 1, "outcome": "refund", "graded_at": 0}
    facts["return_reason"] = "too_small"
    ms = ModelSet(ModelConfig(verdict_wait_us=10 * DAY_US))
    for order in ("o1", "o2"):
        ms.score(order, 3, {"a": 1.0}, flagged, returned=True)
        ms.label(order, 5 * DAY_US, facts)
    assert ms.abuse.labels == 0 and set(ms.awaiting) == {"o1", "o2"}
    verdict = {"late": "review_resolved", "review_verdict": "abuse_confirmed"}
    ms.late_fact("o1", 8 * DAY_US, verdict)
    assert (ms.abuse.labels, ms.abuse.positives) == (1, 1)  # labelled by the verdict
    assert ms.expire_awaiting(14 * DAY_US) == [] and "o2" in ms.awaiting  # deadline 15 days
    ms.expire_awaiting(15 * DAY_US + 1)
    assert (ms.abuse.labels, ms.abuse.positives) == (2, 1) and not ms.awaiting
    assert ms.late_labels == {"review_resolved": 1, "timeout": 1}
    # without the wait, the label is taken at the close: not abusive, and a verdict teaches nothing
    now = ModelSet(ModelConfig())
    now.score("o1", 3, {"a": 1.0}, flagged, returned=True)
    now.label("o1", 5 * DAY_US, facts)
    assert (now.abuse.labels, now.abuse.positives) == (1, 0)
    assert now.late_fact("o1", 8 * DAY_US, verdict) == [] and now.abuse.labels == 1
