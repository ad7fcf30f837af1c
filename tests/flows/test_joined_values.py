"""Case updates travel as value tuples, not dicts: the case stage sends ``OrderCase.values``, the
context stage joins ``CustomerContext.values`` to it (``JOINED_FEATURES`` order) and the model
stage scores the tuples and gates them with the policy's row gate (equal to the dict gate on
random policies: ``tests/policy/test_decide_gate.py``). Each of these gives exactly what the dict
it replaces gives: the same scores, snapshots, model state, gate answers and the same feature
dicts (keys in the same order) for dispatch."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salvage.features.customer import JOINED_FEATURES
from salvage.features.eventtime import DAY_US
from salvage.flows.messages import CaseView
from salvage.flows.stages import ModelStage, StageConfig
from salvage.policy.config import known_features, load_policy
from salvage.policy.engine import row_gate
from salvage.scoring.models import ModelConfig
from tests.scoring.test_batch import _item as batch_item
from tests.scoring.test_batch import _state

_VALUES = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 2.0, 3.0, 6.0, 24.0, 30.0, 0.5, 400.0, -1.0, 1e9]),
    st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False),
)
_ROW = st.fixed_dictionaries({k: _VALUES for k in JOINED_FEATURES})


def test_the_joined_names_are_distinct_and_cover_what_a_policy_reads() -> None:
    # a case and a customer feature of one name would shadow each other in merged()'s dict
    assert len(set(JOINED_FEATURES)) == len(JOINED_FEATURES)
    # every feature a policy may read is there (so the row gate always compiles)
    assert known_features() <= {*JOINED_FEATURES, "recoverability", "abuse"}


def test_the_row_gate_reads_by_position() -> None:
    """Not by a name that happens to be first: moving a value to another slot moves the
    answer."""
    policy = load_policy()
    quiet = dict.fromkeys(JOINED_FEATURES, 0.0) | {"order_value": 80.0, "margin": 50.0}
    late = quiet | {"slippage_hours": 30.0}
    gate = row_gate(policy, JOINED_FEATURES)
    as_row = lambda f: tuple(f[k] for k in JOINED_FEATURES)  # noqa: E731
    assert not gate(as_row(quiet), 0.4, 0.02)
    assert gate(as_row(late), 0.4, 0.02)
    reordered = tuple(reversed(JOINED_FEATURES))
    other = row_gate(policy, reordered)
    assert other(tuple(late[k] for k in reordered), 0.4, 0.02)
    assert not other(as_row(late), 0.4, 0.02)  # the same values read in the other order


# ----------------------------------------------------------------------- the model stage

_STEP = st.tuples(
    st.integers(0, 5),  # which order
    st.sampled_from(["update", "update", "update", "close", "late"]),
    _ROW,
    st.sampled_from([(), ("scan",), ("delay_signal",), ("return_requested",), ("placed",)]),
    st.sampled_from(["kept", "refund", "exchange", "chargeback"]),
    st.booleans(),  # returned
    st.booleans(),  # as a dict (a view made elsewhere) rather than a tuple
)


def _item(i: int, step: tuple, as_tuple: bool) -> tuple[int, str, tuple[CaseView, Any]]:
    """test_batch's update ``i`` with its values as a JOINED_FEATURES tuple (``as_tuple``,
    unless the step says dict) or as the dict CustomerContext.merged makes (same order)."""
    order, action, values, changes, outcome, returned, as_dict = step
    step = (order, action, (values, "as-is"), changes, outcome, returned, "review_resolved")
    t, tie, (view, f) = batch_item(i, step)
    row: Any = None
    if f is not None:
        row = tuple(values[k] for k in JOINED_FEATURES)
        if as_dict or not as_tuple:
            row = dict(zip(JOINED_FEATURES, row, strict=True))
    return t, tie, (view, row)


def _run(engine: str, calls: list[list[tuple]]) -> tuple[list, Any]:
    model = ModelConfig(
        min_labels=3, promote_margin=0.0, window=50, verdict_wait_us=3 * DAY_US, engine=engine
    )
    cfg = StageConfig(
        case_shards=1, cust_shards=2, lane_shards=1, sources=("p",), model=model,
        case_records=False,
    )  # fmt: skip
    stage = ModelStage(0, cfg)
    sent = []
    for call in calls:
        stage.apply(call, 0, [])
        for (_, dest), batch in stage._outbox.items():
            for t, tie, (view, f, scored, events) in batch:
                keys = None if f is None else list(f)  # the dict's key order counts too
                sent.append((dest, t, tie, view.order_id, keys, f, scored, events))
        stage._outbox = {}
    return sent, _state(stage.models)


@pytest.mark.parametrize("engine", ["numba", "python"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=1, max_size=50), sizes=st.lists(st.integers(1, 20)))
def test_value_tuples_score_and_gate_as_their_dicts(engine: str, steps, sizes) -> None:
    def calls(as_tuple: bool) -> list[list[tuple]]:
        items = [_item(i, s, as_tuple) for i, s in enumerate(steps)]
        out, k = [], 0
        for n in [*sizes, len(items)]:
            if k < len(items):
                out.append(items[k : k + n])
                k += n
        return out

    as_dicts, as_tuples = _run(engine, calls(False)), _run(engine, calls(True))
    assert as_tuples[0] == as_dicts[0]  # what dispatch gets, feature dicts' key order included
    assert as_tuples[1] == as_dicts[1]  # snapshots, model state, evaluation


def test_the_model_stage_sends_dispatch_dicts_and_drops_what_the_gate_rejects() -> None:
    """A quiet update is not sent; a late one is, with its values as a dict in JOINED order."""
    quiet = dict.fromkeys(JOINED_FEATURES, 0.0) | {"order_value": 80.0, "margin": 50.0}
    late = quiet | {"slippage_hours": 30.0}
    steps = [(0, "update", quiet, ("scan",), "kept", False, False)]
    steps.append((1, "update", late, ("scan",), "kept", False, False))
    sent, _ = _run("numba", [[_item(i, s, True) for i, s in enumerate(steps)]])
    assert [(s[3], s[4]) for s in sent] == [("o1", list(JOINED_FEATURES))]
    assert sent[0][5] == late
