"""The model stage's batch path (numba engine: one call's updates scored together,
``ModelSet.batch`` / ``ScoreBatch``) gives what the plain-Python reference gives update by update
(``ModelSet.score`` on the python engine): the same scores, events, snapshots and model state,
bit for bit, whatever the labels interleaved with the updates."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from salvage.features.eventtime import DAY_US
from salvage.flows.stages import CaseView, ModelStage, StageConfig
from salvage.scoring import baseline
from salvage.scoring import dense_numba as kernel
from salvage.scoring.baseline import RULE_FEATURES
from salvage.scoring.models import ModelConfig, ModelSet

# the rules' inputs, money and durations on the signed log scale, and a plain one
FEATURES = (*RULE_FEATURES, "order_value", "margin", "customer_tenure_days", "contacts_7d")

_VALUES = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False),
    st.sampled_from([0.0, -0.0, 1.0, 2.0, 3.0, 18.0, 19.0, 0.4, 1e9, -1e9]),
    st.integers(0, 4),
)
# a feature dict: every input, sometimes in another order, lacking one (0.0) or with an extra
_ROW = st.tuples(
    st.fixed_dictionaries({k: _VALUES for k in FEATURES}),
    st.sampled_from(["as-is", "reversed", "drop", "extra"]),
)


def _features(values: dict[str, Any], shape: str) -> dict[str, Any]:
    if shape == "reversed":
        return dict(reversed(list(values.items())))
    if shape == "drop":
        return {k: v for k, v in values.items() if k != "contacts_7d"}
    if shape == "extra":
        return values | {"never_an_input": 7.0}
    return values


_STEP = st.tuples(
    st.integers(0, 5),  # which order
    st.sampled_from(["update", "update", "update", "close", "late"]),
    _ROW,
    st.sampled_from([(), ("scan",), ("delay_signal",), ("return_requested",), ("contact",)]),
    st.sampled_from(["kept", "refund", "exchange", "chargeback", "cancelled"]),
    st.booleans(),  # returned
    st.sampled_from(["review_resolved", "return_graded", "chargeback_filed"]),
)


def _stage(engine: str) -> ModelStage:
    model = ModelConfig(
        min_labels=3, promote_margin=0.0, window=50, verdict_wait_us=3 * DAY_US, engine=engine
    )
    return ModelStage(
        0, StageConfig(case_shards=1, cust_shards=2, lane_shards=1, sources=("p",), model=model)
    )


def _item(i: int, step: tuple) -> tuple[int, str, tuple[CaseView, dict | None]]:
    order, action, (values, shape), changes, outcome, returned, late = step
    t = (i + 1) * DAY_US // 2  # some waits for a verdict run out within the stream
    oid = f"o{order}"
    facts: dict[str, Any] | None = None
    status = "open"
    if action == "close":
        status = "closed"
        facts = {
            "outcome": outcome,
            "return_requested_at": t - 1 if returned else 0,
            "delivered_at": 1,
            "abuse_flags": ["worn"] if returned and values["lost"] else [],
            "return_reason": "not_received" if values["delivered"] else "too_small",
        }
    elif action == "late":
        status = "settled"
        facts = {"late": late, "review_verdict": "abuse_confirmed", "abuse_flags": ["worn"]}
    view = CaseView(
        order_id=oid,
        customer_id=f"c{order % 3}",
        t=t,
        source_id=f"e{i}",
        changes=changes,
        features={},
        status=status,
        outcome=outcome if status == "closed" else None,
        lane="l",
        campaign="none",
        sku_family="home",
        currency="EUR",
        order_value=1.0,
        refunded_amount=0.0,
        returned=returned,
        abuse_flags=(),
        facts=facts,
    )
    features = None if action == "late" else _features(values, shape)
    return t, f"e{i}|{oid}", (view, features)


def _state(ms: ModelSet) -> Any:
    models = [
        (
            np.asarray(m.state, dtype=np.float64).tobytes() if m.state is not None else None,
            m.intercept,
            m.steps,
            m.active,
            m.version,
            m.labels,
            list(m.model_eval.window),
        )
        for m in (ms.recoverability, ms.abuse)
    ]
    pending = {k: [(s.t, s.v.tobytes(), s.kind) for s in v] for k, v in ms.pending.items()}
    awaiting = {k: (d, c, [(s.t, s.v.tobytes(), s.kind) for s in v], f)
                for k, (d, c, v, f) in ms.awaiting.items()}  # fmt: skip
    return (
        models,
        pending,
        awaiting,
        ms.await_heap,
        ms.late_labels,
        ms.scored,
        ms.rules_prior_sum,
        ms.feature_names,
        ms.summary(),
    )


def _run(engine: str, calls: list[list[tuple]]) -> tuple[list, Any]:
    stage = _stage(engine)
    assert stage.models.batched is (engine == "numba")
    sent = []
    for call in calls:
        stage.apply(call, 0, [])
        for (_, dest), batch in stage._outbox.items():
            sent += [(dest, t, tie, p[2], p[3]) for t, tie, p in batch]
        stage._outbox = {}
    return sent, _state(stage.models)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_STEP, min_size=1, max_size=60), sizes=st.lists(st.integers(1, 25)))
def test_the_batch_path_equals_the_reference_update_by_update(steps, sizes):
    items = [_item(i, s) for i, s in enumerate(steps)]
    calls, k = [], 0
    for n in [*sizes, len(items)]:  # the model stage's calls: consecutive slices
        if k < len(items):
            calls.append(items[k : k + n])
            k += n
    python, numba = _run("python", calls), _run("numba", calls)
    assert python[0] == numba[0]  # every Scored (rules, scores, shadow) and model event
    assert python[1] == numba[1]  # snapshots (float32 bytes), model state, evaluation


def test_labels_mid_call_reach_the_next_predictions_and_promote():
    """One call of 400 updates, a label every third one: the models learn and are promoted
    within the call, and every later prediction is the reference's."""
    items = []
    for i in range(400):
        values = {k: float((i * 7 + j) % 5) for j, k in enumerate(FEATURES)}
        values["order_value"] = 10.0 + i
        action = "close" if i % 3 == 2 else "update"
        outcome = "kept" if values["slippage_hours"] < 2 else "refund"
        step = (i % 50, action, (values, "as-is"), ("delay_signal",), outcome, i % 2 == 0, "")
        items.append(_item(i, step))
    python, numba = _run("python", [items]), _run("numba", [items])
    assert python == numba
    models = numba[1][0]
    assert models[0][2] > 100  # it learned within the call (Adam steps)
    driving = {scored.scores.model_version for *_, scored, _ in numba[0] if scored is not None}
    assert driving - {"rules-v1"}  # a model was promoted and drove later scores


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({k: _VALUES for k in RULE_FEATURES}), min_size=1))
def test_the_rule_kernel_is_the_rule_baseline(rows):
    X = np.array([[float(r[k]) for k in RULE_FEATURES] for r in rows])
    rec, ab = kernel.rule_scores(X, np.arange(len(RULE_FEATURES)))
    assert rec.tolist() == [baseline.recoverability(r) for r in rows]
    assert ab.tolist() == [baseline.abuse(r) for r in rows]


def test_round_is_idempotent_on_the_rule_scores():
    """ScoreBatch hands the (rounded) rule scores on as the driving scores unrounded again."""
    for i in range(100_000):
        p = round(1 / (1 + math.exp(-(i - 50_000) / 5000)), 6)
        assert round(p, 6) == p


def test_plain_updates_keep_the_latest_snapshot_as_the_reference_does():
    """Most updates are plain (no return, no risk signal) on a case whose newest snapshot is a
    "latest": the batch path rewrites that one in place (``ModelSet._overwrite_latest``); the
    snapshots, times and values included, are the reference's, through risk and return
    snapshots and a close."""
    steps = []
    for i in range(40):
        order = i % 3
        values = {k: float((i * 3 + j) % 7) for j, k in enumerate(FEATURES)}
        changes = ("delay_signal",) if i in (7, 8, 20) else ("scan",) if i % 2 else ()
        returned = order == 1 and i > 25
        action = "close" if i == 33 else "update"
        steps.append((order, action, (values, "as-is"), changes, "kept", returned, ""))
    items = [_item(i, s) for i, s in enumerate(steps)]
    python, numba = (
        _run("python", [items[:17], items[17:]]),
        _run("numba", [items[:17], items[17:]]),
    )
    pending = numba[1][1]
    assert {s[2] for snaps in pending.values() for s in snaps} == {"latest", "risk", "return"}
    assert python == numba
