"""The intervention policy: file validation, expected-value ranking, guardrails, holdout."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from salvage.connectors.outputs import Action
from salvage.features.eventtime import DAY_US, HOUR_US
from salvage.flows.stages import OUT_KEY, CaseView, DispatchStage, StageConfig
from salvage.policy.config import DEFAULT_POLICY, PolicyError, load_policy
from salvage.policy.engine import decide, holdout_unit
from salvage.scoring.baseline import ScoreResult
from salvage.scoring.models import Scored

POLICY = load_policy()


def _write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def _default_doc() -> dict:
    return yaml.safe_load(DEFAULT_POLICY.read_text())


def test_the_shipped_policy_is_valid_and_complete():
    assert POLICY.version == "default-v1"
    assert set(POLICY.actions) == set(Action)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["actions"]["delay_intervention"]["when"].update(slipage_hours=">= 6"),
            "actions.delay_intervention.when: Value error, unknown feature 'slipage_hours'",
        ),
        (
            lambda d: d["actions"]["product_guidance"].update(lift=1.5),
            "actions.product_guidance.lift: Input should be less than or equal to 1",
        ),
        (
            lambda d: d["actions"]["product_guidance"]["when"].update(fit_intent_7d="lots"),
            "not a comparison: 'lots'",
        ),
        (lambda d: d["actions"].pop("human_review"), "actions missing: human_review"),
        (lambda d: d["guardrails"].update(ambiguity_band=[0.8, 0.2]), "guardrails.ambiguity_band"),
        (
            lambda d: d["actions"]["proactive_reassurance"].update(colour="red"),
            "actions.proactive_reassurance.colour: Extra inputs are not permitted",
        ),
        (lambda d: d.update(version="has spaces"), "version: String should match pattern"),
    ],
)
def test_invalid_policies_fail_with_field_path_and_reason(tmp_path, mutate, expected):
    doc = _default_doc()
    mutate(doc)
    with pytest.raises(PolicyError) as err:
        load_policy(_write(tmp_path, doc))
    assert expected in str(err.value)


def test_unreadable_policy_files_are_clear_errors(tmp_path):
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(_write(tmp_path, "actions: [unclosed"))
    with pytest.raises(PolicyError, match="is a mapping"):
        load_policy(_write(tmp_path, "- 1\n- 2\n"))


def _features(**over) -> dict[str, float]:
    from salvage.features.customer import CustomerContext
    from salvage.features.order_case import OrderCase

    f = OrderCase("o").features(0) | CustomerContext("c").features(0)
    f.update(order_value=120.0, margin=60.0, margin_rate=0.5)
    f.update(over)
    return f


def _scores(rec: float = 0.5, abuse: float = 0.05) -> ScoreResult:
    return ScoreResult(rec, abuse, "rules-v1")


def test_late_parcel_gets_reassurance_then_intervention_when_the_customer_asks():
    late = _features(slippage_hours=30.0, delayed_scans=1.0)
    d = decide(POLICY, late, _scores(0.6), resolved=False)
    assert d.action is Action.PROACTIVE_REASSURANCE
    asked = _features(slippage_hours=30.0, delayed_scans=1.0, wismo_7d=1.0)
    # still likely kept: the voucher costs more than it can save, reassurance wins
    d = decide(POLICY, asked, _scores(0.6), resolved=False)
    assert d.action is Action.PROACTIVE_REASSURANCE
    # likely lost: the intervention's larger lift pays for its cost
    d = decide(POLICY, asked, _scores(0.2), resolved=False)
    assert d.action is Action.DELAY_INTERVENTION
    evs = {a: ev for a, ev, _ in d.candidates}
    assert evs["delay_intervention"] > evs["proactive_reassurance"]
    # EV = lift x P(lost) x value at risk - cost, with goodwill capped at 30% of margin (5 < 18)
    assert evs["delay_intervention"] == round(0.2 * 0.8 * 120 * 0.75 - (0.5 + 5.0), 2)
    assert "slippage_24h" in d.reason_codes and "wismo_contact" in d.reason_codes


def test_never_auto_offers_to_likely_abuse_and_routes_to_review():
    ret = _features(return_requested=1.0, return_share=1.0, reason_fit=1.0, delivered=1.0)
    d = decide(POLICY, ret, _scores(0.5, abuse=0.3), resolved=False)
    assert d.action is Action.EXCHANGE_FIRST_OFFER
    d = decide(POLICY, ret, _scores(0.5, abuse=0.7), resolved=False)
    assert d.action is Action.HUMAN_REVIEW
    assert "abuse_block" in d.guardrails
    assert ("exchange_first_offer", 0.0, "blocked: abuse risk") in d.candidates


def test_costly_ambiguous_cases_go_to_human_review():
    ret = _features(
        return_requested=1.0,
        return_share=1.0,
        prefers_refund=1.0,
        order_value=900.0,
        margin=400.0,
        delivered=1.0,
    )
    d = decide(POLICY, ret, _scores(0.5, abuse=0.1), resolved=False)
    assert d.action is Action.HUMAN_REVIEW and "review_routing" in d.guardrails


def test_goodwill_is_capped_at_a_share_of_margin():
    asked = _features(slippage_hours=30.0, wismo_7d=1.0, margin=5.0, order_value=120.0)
    d = decide(POLICY, asked, _scores(0.2), resolved=False)
    notes = {a: n for a, _, n in d.candidates}
    assert notes["delay_intervention"] == "goodwill capped at 1.50"
    assert "goodwill_cap" in d.guardrails


def test_resolved_cases_and_no_signal_get_nothing():
    assert decide(POLICY, _features(slippage_hours=30.0), _scores(), resolved=True) is None
    assert decide(POLICY, _features(), _scores(), resolved=False) is None


def test_holdout_is_deterministic_and_close_to_its_share():
    draws = [holdout_unit(f"O{i:06d}", "default-v1") for i in range(20000)]
    assert draws == [holdout_unit(f"O{i:06d}", "default-v1") for i in range(20000)]
    share = sum(d < 0.1 for d in draws) / len(draws)
    assert 0.09 < share < 0.11
    # another policy version re-draws the control group
    other = [holdout_unit(f"O{i:06d}", "default-v2") for i in range(20000)]
    assert sum((a < 0.1) != (b < 0.1) for a, b in zip(draws, other, strict=True)) > 1000


# ------------------------------------------------------------------ dispatch (stateful guardrails)


def _stage(policy=POLICY, shards: int = 1) -> DispatchStage:
    cfg = StageConfig(
        case_shards=1,
        cust_shards=shards,
        lane_shards=1,
        sources=("p",),
        case_records=False,
        policy=policy,
    )
    return DispatchStage(0, cfg)


def _update(
    stage, t: int, order: str, features, customer: str = "c1", rec: float = 0.5, abuse: float = 0.05
):
    view = CaseView(
        order_id=order,
        customer_id=customer,
        t=t,
        source_id=f"{order}-{t}",
        changes=("scan",),
        features=features,
        status="open",
        outcome=None,
        lane="l",
        campaign="none",
        sku_family="f",
        currency="EUR",
        order_value=features["order_value"],
        refunded_amount=0.0,
        returned=False,
        abuse_flags=(),
    )
    scores = _scores(rec, abuse)
    out: list = []
    stage.apply([(t, "x", (view, features, Scored(scores, {}, scores), []))], t + 1, out)
    return out


def _sent(stage) -> list:
    """Triggers queued for the output stage (then cleared)."""
    box = stage._outbox.pop(("out", OUT_KEY), [])
    return [payload for _, _, (kind, payload) in box if kind == "trigger"]


def test_a_dispatch_stage_pickles_after_a_call():
    """The compiled gate is looked up per call, never kept on the stage: a stage that has decided
    still pickles (benchmarks/memory.py and snapshots.py measure the whole-shard pickle)."""
    stage = _stage(load_policy_with(holdout=0.0))
    _update(stage, 0, "o1", _features(slippage_hours=30.0, delayed_scans=1.0))
    _update(stage, HOUR_US, "o2", _features())
    copy = pickle.loads(pickle.dumps(stage, protocol=pickle.HIGHEST_PROTOCOL))
    assert copy.sent == stage.sent == {"o1": ["proactive_reassurance"]}


def test_once_per_order_and_contact_caps():
    stage = _stage(load_policy_with(holdout=0.0))
    late = _features(slippage_hours=30.0, delayed_scans=1.0)
    _update(stage, 0, "o1", late)
    assert [t.action for t in _sent(stage)] == [Action.PROACTIVE_REASSURANCE]
    _update(stage, HOUR_US, "o1", late)  # same order again: once per order
    _update(stage, 2 * HOUR_US, "o2", late)  # same customer within 24 h: capped
    assert _sent(stage) == []
    _update(stage, 25 * HOUR_US, "o3", late)  # next day: allowed (2nd in 30 days)
    _update(stage, 50 * HOUR_US, "o4", late)  # 3rd in 30 days
    _update(stage, 75 * HOUR_US, "o5", late)  # 4th: over the 30-day cap
    assert [t.order_id for t in _sent(stage)] == ["o3", "o4"]


def load_policy_with(holdout: float | None = None, budget: float | None = None):
    doc = _default_doc()
    for a in doc["actions"].values():
        if holdout is not None and a.get("holdout_share", 0) > 0:
            a["holdout_share"] = holdout
    if budget is not None:
        doc["actions"]["proactive_reassurance"]["budget_per_day"] = budget
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(doc, f)
    return load_policy(f.name)


def test_daily_budget_is_exhausted_in_event_time_and_renews_the_next_day():
    stage = _stage(load_policy_with(holdout=0.0, budget=0.12))  # 0.05 each: two per day
    late = _features(slippage_hours=30.0, delayed_scans=1.0)
    for i in range(3):
        _update(stage, i * HOUR_US, f"o{i}", late, customer=f"c{i}")
    assert len(_sent(stage)) == 2
    _update(stage, DAY_US + HOUR_US, "o9", late, customer="c9")  # a new event-time day
    assert len(_sent(stage)) == 1


def test_holdout_decisions_are_recorded_but_never_published():
    stage = _stage(load_policy_with(holdout=0.5))
    late = _features(slippage_hours=30.0, delayed_scans=1.0)
    orders = [f"O{i:04d}" for i in range(40)]
    for i, o in enumerate(orders):
        _update(stage, i * DAY_US, o, late, customer=f"c{i}")
    published = {t.order_id for t in _sent(stage)}
    expected_held = {o for o in orders if holdout_unit(o, "default-v1") < 0.5}
    assert set(stage.held_out) == expected_held
    assert all(actions == {"proactive_reassurance"} for actions in stage.held_out.values())
    assert published == set(orders) - expected_held
    assert 5 < len(expected_held) < 35


def test_compare_shows_what_a_policy_change_would_do(tmp_path):
    import json as _json

    from typer.testing import CliRunner

    from salvage.cli import app
    from tests.flowkit import sim_log

    doc = _default_doc()
    doc["version"] = "no-exchange-v1"
    doc["actions"]["exchange_first_offer"]["enabled"] = False
    b = _write(tmp_path, doc)
    log = sim_log(tmp_path, orders=400, seed=5)
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "--policy",
            str(DEFAULT_POLICY),
            "--policy",
            str(b),
            "--input",
            str(log),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = _json.loads(result.output[result.output.index("{") :])
    rows = {r["action"]: r for r in out["rows"]}
    assert out["a"]["policy"] == "default-v1" and out["b"]["policy"] == "no-exchange-v1"
    assert rows["exchange_first_offer"]["a"] > 0 and rows["exchange_first_offer"]["b"] == 0
    assert rows["exchange_first_offer"]["cost_a"] == round(
        rows["exchange_first_offer"]["a"] * 4.1, 2
    )  # 0.10 message + 4.00 label
    assert out["only_a"] >= rows["exchange_first_offer"]["a"]
    assert out["total"]["retained_a"] > out["total"]["retained_b"]
    # what the log shows each policy earned: ITT retained-margin estimate with its interval
    est = out["total"]["margin_a"]
    assert est["assigned"] > 0 and est["ci"][0] <= est["estimate"] <= est["ci"][1]
    assert rows["exchange_first_offer"]["margin_b"] is None  # B never assigns it
    bad = CliRunner().invoke(app, ["compare", "--policy", str(b), "--input", str(log)])
    assert bad.exit_code == 2


_R = {"resale_share": 0.0, "handling_cost": 1.0, "days_to_sale": 0}


@pytest.mark.parametrize(
    ("routes", "said"),
    [
        # hygiene families cannot take open box: a B-graded lipstick would have no route
        (
            {
                "open_box": {**_R, "grades": ["A", "B"]},
                "dispose": {**_R, "grades": ["A", "refurbish", "dispose"]},
            },
            "grade 'B' has no route",
        ),
        ({"landfill": {**_R, "grades": ["A"]}}, "unknown route(s) ['landfill']"),
        ({"dispose": {**_R, "grades": ["A", "C"]}}, "unknown grade(s) ['C']"),
    ],
)
def test_a_disposition_policy_that_leaves_a_return_without_a_route_is_refused(
    tmp_path, routes, said
):
    """Found by an audit: such a policy loaded, and the first graded return it could not route
    raised in the middle of the run (no candidate to choose from)."""
    doc = _default_doc()
    doc["disposition"] = {"routes": routes}
    with pytest.raises(PolicyError) as err:
        load_policy(_write(tmp_path, doc))
    assert said in str(err.value) and "disposition" in str(err.value)


def test_a_disposition_policy_is_checked_as_returns_are_routed(tmp_path):
    """Grade A may go to open box for every family (only opened hygiene items of lower grades
    may not), so a policy whose only A route is open box loads, and routes a lipstick there."""
    from salvage.policy.disposition import decide_disposition

    doc = _default_doc()
    doc["disposition"] = {
        "routes": {
            "open_box": {**_R, "grades": ["A", "B"]},
            "dispose": {**_R, "grades": ["B", "refurbish", "dispose"]},
        }
    }
    policy = load_policy(_write(tmp_path, doc))
    assert decide_disposition(policy.disposition, "A", "beauty_makeup", 20.0, 1)["route"] == (
        "open_box"
    )


def test_disposition_routes_by_expected_recovered_value():
    from salvage.policy.disposition import DispositionPolicy, decide_disposition

    p = DispositionPolicy()
    a = decide_disposition(p, "A", "apparel_tops", 80.0, waited_days=1)
    assert a["route"] == "restock"
    restock = next(c for c in a["candidates"] if c["route"] == "restock")
    # 0.95 x 80 x (1 - 0.004)^(1 + 2) - 2.00 handling - 0.05 x 2 days to sale
    assert restock["recovered"] == round(0.95 * 80 * 0.996**3 - 2.0 - 0.10, 2)
    assert decide_disposition(p, "B", "apparel_tops", 80.0, 1)["route"] == "open_box"
    assert decide_disposition(p, "refurbish", "footwear", 120.0, 1)["route"] == "refurbish"
    # cheap items are not worth refurbishing; opened cosmetics cannot be resold
    assert decide_disposition(p, "refurbish", "footwear", 12.0, 1)["route"] == "donate"
    assert decide_disposition(p, "B", "beauty_skincare", 60.0, 1)["route"] == "donate"
    # waiting costs value: the same item left ungraded for 300 days is not worth reselling
    assert decide_disposition(p, "B", "apparel_tops", 12.0, 0)["route"] == "open_box"
    assert decide_disposition(p, "B", "apparel_tops", 12.0, 300)["route"] == "donate"


def test_every_graded_return_gets_a_disposition_in_the_flow(tmp_path):
    import json as _json

    from tests.flowkit import run_file_flow, sim_log

    log = sim_log(tmp_path, orders=400, seed=6)
    run_file_flow([log], tmp_path / "out")
    graded = [_json.loads(x) for x in log.read_text().splitlines() if '"return_graded"' in x]
    disp = [
        _json.loads(x) for x in (tmp_path / "out" / "dispositions.jsonl").read_text().splitlines()
    ]
    assert {d["order_id"] for d in disp} == {g["order_id"] for g in graded}
    for d in disp:
        assert d["route"] in ("restock", "open_box", "refurbish", "donate", "dispose")
        assert d["candidates"][0]["route"] == d["route"]
        assert d["expected_recovered_value"] == max(c["recovered"] for c in d["candidates"])


def test_each_policy_object_decides_by_its_own_rules_even_when_ids_are_reused(tmp_path):
    """Compiled rules once lived in a cache keyed by id(policy); CPython reuses the id of a freed
    policy, so a new policy could decide by the old one's rules. The cache now holds each policy
    it keys (so its id is not reused meanwhile) and checks the entry is that very object. The
    reuse itself cannot be forced (100 load/free rounds never gave it, ~57 s of full collections
    in a test session), so the collision is planted: the other policy's entry under this
    policy's id."""
    from salvage.policy import engine

    doc = _default_doc()
    doc["actions"]["proactive_reassurance"]["when"] = {"delivered": True, "return_requested": True}
    variant = load_policy(_write(tmp_path, doc))
    default = load_policy()
    late = _features(slippage_hours=30.0, delayed_scans=1.0)
    assert decide(default, late, _scores(0.6), resolved=False).action is (
        Action.PROACTIVE_REASSURANCE
    )
    stale = engine._compiled(default)
    engine._COMPILED_OF[id(variant)] = stale  # as if `variant` had `default`'s freed id
    assert decide(variant, late, _scores(0.6), resolved=False) is None
    assert engine._COMPILED_OF[id(variant)][0] is variant
    assert bool(engine.gate_of(variant)(late, 0.6, 0.1)) is False
    engine._COMPILED_OF[id(default)] = engine._compiled(variant)
    assert decide(default, late, _scores(0.6), resolved=False).action is (
        Action.PROACTIVE_REASSURANCE
    )


def test_a_forced_review_is_never_held_out_or_budgeted_away():
    """Likely abuse on an open claim: the review goes out even when human_review has a holdout
    share and a daily budget that would otherwise stop it (once per order still applies)."""
    doc = _default_doc()
    doc["actions"]["human_review"]["holdout_share"] = 0.5
    doc["actions"]["human_review"]["budget_per_day"] = 0.01
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(doc, f)
    stage = _stage(load_policy(f.name))
    claim = _features(return_requested=1.0, return_share=1.0)
    for i in range(5):
        _update(stage, i * DAY_US, f"O{i}", claim, customer=f"c{i}", abuse=0.9)
    sent = _sent(stage)
    assert [t.action for t in sent] == [Action.HUMAN_REVIEW] * 5
    assert not any(t.holdout for t in sent)
    assert not stage.held_out


def test_trigger_ids_do_not_depend_on_the_policy_version():
    """A resume that adopts a new policy replays the updates since its snapshot: the same action
    on the same update must keep its id, so downstream dedupes instead of messaging twice."""
    late = _features(slippage_hours=30.0, delayed_scans=1.0)
    ids = []
    for version in ("default-v1", "ops-v2"):
        policy = load_policy_with(holdout=0.0).model_copy(update={"version": version})
        stage = _stage(policy)
        _update(stage, 0, "o1", late)
        (trigger,) = _sent(stage)
        assert trigger.policy_version == version
        ids.append(trigger.trigger_id)
    assert ids[0] == ids[1]
