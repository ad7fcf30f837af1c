"""Dispatch skips ``decide`` when :func:`salvage.policy.engine.could_decide` says no rule or
guardrail can hold: the gate is exact (property-tested on random policies and features, and so
is its by-position form, :func:`salvage.policy.engine.row_gate`), and on
every simulator scenario a run with the skip emits exactly what a run without it emits."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salvage.config import Settings
from salvage.connectors.simulator import SCENARIOS, write_log
from salvage.features.customer import JOINED_FEATURES, CustomerContext
from salvage.features.order_case import OrderCase
from salvage.flows.messages import Batch, Event, Route
from salvage.flows.plain import PlainLoop
from salvage.flows.sources import file_part_id
from salvage.flows.stages.dispatch import DispatchStage
from salvage.flows.topology import stage_config
from salvage.policy.config import Policy, holds, known_features, load_policy
from salvage.policy.engine import could_decide, decide, gate_of, gate_source, row_gate
from salvage.scoring.baseline import ScoreResult
from tests.flowkit import feed_log

FEATURES = sorted(set(OrderCase("o").features(0)) | set(CustomerContext("c").features(0)))
RULE_NAMES = sorted(known_features())
# values around every threshold the rules and guardrails below use
VALUES = (0.0, 1.0, 2.0, 0.5, 0.35, 0.65, 6.0, 24.0, 30.0, 400.0, -1.0, 1000.0)


def _comparison() -> st.SearchStrategy:
    number = st.sampled_from((0, 1, 2, 0.5, 6, 24, 400, -1))
    op = st.sampled_from(("<", "<=", ">", ">=", "==", "!="))
    as_text = st.builds(lambda o, n: f"{o} {n}", op, number)
    return st.one_of(st.booleans(), number, as_text)


def _conds() -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(RULE_NAMES), _comparison(), max_size=3)


def _rule() -> st.SearchStrategy:
    sub = _conds()
    anys = st.one_of(st.none(), st.lists(sub, max_size=3))
    return st.builds(lambda c, a: {**c, **({} if a is None else {"any": a})}, _conds(), anys)


@st.composite
def policies(draw) -> Policy:
    base = load_policy().model_dump(mode="json")
    for name, action in base["actions"].items():
        action["when"] = draw(_rule())
        action["enabled"] = name == "human_review" or draw(st.booleans())
    lo = draw(st.sampled_from((0.0, 0.35, 0.5)))
    base["guardrails"] = {
        **base["guardrails"],
        "abuse_block": draw(st.sampled_from((0.3, 0.5, 1.0))),
        "abuse_history_block": draw(st.sampled_from((0, 1, 2))),
        "review_value": draw(st.sampled_from((0.0, 30.0, 400.0))),
        "ambiguity_band": [lo, draw(st.sampled_from((lo, 0.65, 1.0)))],
    }
    return Policy.model_validate(base)


features = st.fixed_dictionaries({name: st.sampled_from(VALUES) for name in FEATURES})
scores = st.builds(
    lambda r, a: ScoreResult(r, a, "rules-v1"),
    st.sampled_from((0.0, 0.2, 0.35, 0.5, 0.65, 0.9, 1.0)),
    st.sampled_from((0.0, 0.02, 0.3, 0.5, 0.7, 1.0)),
)


def _eligible_or_routed(policy: Policy, f: dict, s: ScoreResult) -> bool:
    """What decide() looks at before any EV: some enabled action's rule holds, or the review
    guardrail routes the claim (the reference the gate must equal)."""
    g = policy.guardrails
    x = {**f, "recoverability": s.recoverability, "abuse": s.abuse}
    claim = bool(f["return_requested"] or f["wismo_after_delivered"])
    ambiguous = g.ambiguity_band[0] <= s.recoverability <= g.ambiguity_band[1]
    high = f["order_value"] >= g.review_value
    history = bool(g.abuse_history_block) and f["customer_abuse_flags"] >= g.abuse_history_block
    routed = claim and (s.abuse >= g.abuse_block or history or (high and ambiguous))
    rules = policy.compiled_rules()
    return routed or any(holds(rules[a], x) for a, ap in policy.actions.items() if ap.enabled)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), f=features, s=scores)
def test_no_decision_when_the_gate_says_no(policy: Policy, f: dict, s: ScoreResult) -> None:
    gate = could_decide(policy, f, s)
    assert gate == _eligible_or_routed(policy, f, s), gate_source(policy)
    # the same gate reading a tuple of the values by position (the model stage's)
    by_position = row_gate(policy, JOINED_FEATURES)
    values = tuple(f[name] for name in JOINED_FEATURES)
    assert bool(by_position(values, s.recoverability, s.abuse)) == gate, gate_source(policy)
    if not gate:
        assert decide(policy, f, s, resolved=False) is None


@settings(max_examples=300, deadline=None)
@given(f=features, s=scores)
def test_the_shipped_policy_gate(f: dict, s: ScoreResult) -> None:
    policy = load_policy()
    if not could_decide(policy, f, s):
        assert decide(policy, f, s, resolved=False) is None
    assert could_decide(policy, f, s) == _eligible_or_routed(policy, f, s)


def test_the_gate_rejects_a_quiet_case() -> None:
    f = OrderCase("o1").features(0) | CustomerContext("c1").features(0)
    f |= {"order_value": 80.0, "margin": 50.0, "margin_rate": 0.625}
    assert not could_decide(load_policy(), f, ScoreResult(0.4, 0.02, "rules-v1"))
    # an open claim at the abuse threshold is routed to review: the gate lets it through
    claim = f | {"return_requested": 1.0, "return_share": 1.0, "reason_not_received": 1.0}
    assert could_decide(load_policy(), claim, ScoreResult(0.4, 0.5, "rules-v1"))


# ----------------------------------------------------------------------- every scenario


def _log(tmp: Path, scenario: str) -> Path:
    path = tmp / f"{scenario}.jsonl"
    if scenario == "closed-loop":
        from salvage.connectors.closed_loop import write_log as write_closed_loop

        write_closed_loop(300, 5, path, settings=Settings(redis_url="", metrics_port=0))
    else:
        write_log(scenario, 300, 5, path)
    return path


def _run(
    log: Path, gate: bool, records: bool = True, points: bool = True
) -> tuple[list[tuple[str, Any]], dict[str, int]]:
    """Everything a plain-loop run emits (outputs and taps, serialised, in order) and how many
    dispatch updates the gate let through / rejected / decided; ``points``: the case stage sends
    only decision points (StageConfig.decision_points)."""
    s = Settings(redis_url="", shards=2, metrics_port=0)
    part = file_part_id(0, log)
    cfg = stage_config(s, (part,), case_records=records, score_log=True)
    cfg = replace(cfg, decide_gate=gate, decision_points=points)
    seen: list[tuple[str, Any]] = []
    counts = {"updates": 0, "rejected": 0, "decided": 0}

    def dump(payload: Any) -> str:
        if hasattr(payload, "model_dump_json"):
            return payload.model_dump_json()
        return json.dumps(payload, sort_keys=True, default=repr)

    def on_tap(route: Route, payload: Any) -> None:
        seen.append((str(route), dump(payload)))

    def inspect(name: str, key: str, items: list) -> None:
        if name != "dispatch":
            return
        for item in items:
            for _t, _tie, payload in (
                item.items if type(item) is Batch else ([item] if type(item) is Event else [])
            ):
                view, f, scored, _events = payload
                if scored is None or view.status == "closed" or view.outcome is not None:
                    continue
                counts["updates"] += 1
                ok = could_decide(cfg.policy, f, scored.scores)
                d = decide(cfg.policy, f, scored.scores, resolved=False)
                counts["rejected"] += not ok
                counts["decided"] += d is not None
                assert ok or d is None, (view.order_id, f, scored.scores)

    loop = PlainLoop(cfg, lambda k, p: seen.append((k, dump(p))), on_tap, inspect)
    feed_log(loop, log, s)
    return seen, counts


@pytest.mark.parametrize("scenario", [*SCENARIOS, "closed-loop"])
def test_every_scenario_decides_the_same_with_the_skip(tmp_path: Path, scenario: str) -> None:
    log = _log(tmp_path, scenario)
    with_skip, counts = _run(log, gate=True)
    without, _ = _run(log, gate=False)
    assert counts["decided"] > 0 and counts["rejected"] > counts["updates"] // 2, counts
    triggers = [p for k, p in with_skip if k == "trigger"]
    assert triggers, "no triggers: the comparison would prove nothing"
    assert [p for k, p in without if k == "trigger"] == triggers  # byte-identical triggers
    assert without == with_skip  # and every other output, case record and KPI fact


@pytest.mark.parametrize("scenario", ["steady-state", "silent-carrier-incident", "closed-loop"])
def test_updates_dispatch_ignores_are_not_sent(
    tmp_path: Path, scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without case records, the model stage keeps back the updates dispatch would do nothing
    with (DispatchStage.ignores): most of the case stage's updates, and the outputs are those of
    a run that sends every update and decides on each (no gate)."""
    log = _log(tmp_path, scenario)
    kept = {True: 0, False: 0}
    open_kept = 0  # kept back with no outcome yet: what _run counts as a dispatch update
    ignores = DispatchStage.ignores

    def counted(*args: Any) -> bool:
        nonlocal open_kept
        answer = ignores(*args)
        kept[answer] += 1
        open_kept += answer and args[2].outcome is None
        return answer

    monkeypatch.setattr(DispatchStage, "ignores", staticmethod(counted))
    # (the case stage sends every update: its own filter, decision points, is tested in
    # tests/flows/test_decision_points.py)
    with_skip, counts = _run(log, gate=True, records=False, points=False)
    assert kept[True] > kept[False] > 0, kept  # most updates stay back
    kept[True] = kept[False] = 0
    without, all_counts = _run(log, gate=False, records=False, points=False)
    assert kept[True] == 0  # without the gate every update goes to dispatch
    # dispatch saw exactly the updates kept back less
    assert all_counts["updates"] == counts["updates"] + open_kept, (all_counts, counts)
    triggers = [p for k, p in with_skip if k == "trigger"]
    assert triggers and [p for k, p in without if k == "trigger"] == triggers
    # every output of the ordered output stage, in order; the taps (KPI facts, score records)
    # are each shard's own, in no order across shards: the same ones
    taps = {str(r) for r in (Route.KPI, Route.SCORE, Route.CASE_RECORD, Route.DEAD_LETTER)}
    assert [x for x in without if x[0] not in taps] == [x for x in with_skip if x[0] not in taps]
    assert sorted(without) == sorted(with_skip)


@pytest.mark.parametrize("scenario", ["steady-state", "launch-week-backlog", "closed-loop"])
def test_dispatch_does_nothing_with_what_it_ignores(
    tmp_path: Path, scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DispatchStage.ignores`` restates when ``_update`` has nothing to do: checked on the
    update itself. In a run that sends dispatch every update, each one the shipped policy's gate
    would keep back leaves dispatch's state as it was and emits nothing."""
    checked = 0
    update = DispatchStage._update

    def state(stage: DispatchStage) -> bytes:
        parts = (stage.contacted, stage.sent, stage.first_score, stage.held_out)
        more = (stage.last_decision, stage.assigned, stage.spent, stage._records, stage._outbox)
        return pickle.dumps((*parts, *more))

    def watched(stage: DispatchStage, t: int, view, features, scored, out: list, gate) -> None:
        nonlocal checked
        s = scored.scores
        shipped = gate_of(stage.cfg.policy)  # (this run decides without it: gate is None)
        ignored = DispatchStage.ignores(
            stage.cfg, shipped, view, features, s.recoverability, s.abuse
        )
        before, emitted = state(stage), len(out)
        update(stage, t, view, features, scored, out, gate)
        if ignored:
            checked += 1
            assert state(stage) == before and len(out) == emitted, (view.order_id, view.changes)

    monkeypatch.setattr(DispatchStage, "_update", watched)
    _run(_log(tmp_path, scenario), gate=False, records=False, points=False)
    assert checked > 100, checked


def test_a_policy_that_has_gated_still_pickles() -> None:
    """Stage snapshots pickle the stage with its policy: the gate must not make it unpicklable."""
    policy = load_policy()
    f = OrderCase("o1").features(0) | CustomerContext("c1").features(0)
    late = f | {"slippage_hours": 30.0}
    assert could_decide(policy, late, ScoreResult(0.4, 0.02, "rules-v1"))
    copy = pickle.loads(pickle.dumps(policy, protocol=pickle.HIGHEST_PROTOCOL))
    assert could_decide(copy, late, ScoreResult(0.4, 0.02, "rules-v1"))
    assert not could_decide(copy, f, ScoreResult(0.4, 0.02, "rules-v1"))
