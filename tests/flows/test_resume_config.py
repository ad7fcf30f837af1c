"""A resume adopts the current run's configuration (policy, promotion gate, intent threshold) and
waits for input partitions added since the snapshot (a Kafka topic grown by ops), instead of
running on with the pickled configuration or failing on the first tick of the new partition."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from salvage.features.eventtime import BEGIN
from salvage.flows.messages import Tick
from salvage.flows.recovery import _StageLogic
from salvage.flows.stages import CaseStage, ModelStage, StageConfig
from salvage.scoring.models import ModelConfig


def _cfg(**kw) -> StageConfig:
    return StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=("t#0",), **kw)


def _resume(stage, cfg: StageConfig):
    """What Bytewax does on a resume: the logic is built from the snapshot bytes."""
    return _StageLogic(lambda key: None, pickle.dumps(stage), cfg).stage


def test_a_resumed_case_stage_takes_the_new_policy_threshold_and_partitions():
    before = _cfg(intent_threshold=0.6)
    stage = CaseStage(0, before)
    stage.on_batch([Tick("t#0", 1_000, 1_000)])
    assert stage.reorderer.low == 1_000
    policy = before.policy.model_copy(update={"version": "ops-v2"})
    after = replace(before, sources=("t#0", "t#1"), intent_threshold=0.9, policy=policy)
    resumed = _resume(stage, after)
    assert resumed.cfg.policy.version == "ops-v2"
    # the new partition is an upstream now: its first tick is accepted (it used to be a
    # KeyError on every restart) and the watermark waits for it instead of running ahead
    resumed.on_batch([Tick("t#0", 5_000, 5_000)])
    assert resumed.reorderer.upstream["t#1"] == BEGIN
    resumed.on_batch([Tick("t#1", 2_000, 2_000)])
    assert resumed.reorderer.compute_low() == 2_000


def test_a_resumed_model_stage_takes_the_new_promotion_gate():
    stage = ModelStage(0, _cfg(model=ModelConfig(min_labels=1000)))
    resumed = _resume(stage, _cfg(model=ModelConfig(min_labels=50, promote_margin=0.01)))
    for m in (resumed.models, resumed.models.recoverability, resumed.models.abuse):
        assert (m.cfg.min_labels, m.cfg.promote_margin) == (50, 0.01)


@pytest.mark.parametrize("days", [14, 45])
def test_a_resume_reschedules_deadlines_under_the_new_return_window(days):
    """Timers computed under the old return window would be discarded when they fire (their
    deadline no longer matches) and the case would never close: rebind rebuilds them."""
    from salvage.connectors.parse import RawRecord
    from salvage.features.eventtime import DAY_US
    from salvage.flows.sources import _Parser
    from tests.helpers import event, line, order_placed

    before = _cfg(return_window_us=30 * DAY_US, infer_intents=False)
    stage = CaseStage(0, before)
    parser = _Parser("t#0", 0, 7 * DAY_US, BEGIN)
    items: list = []
    placed = order_placed("o1", "2026-03-02T10:00:00Z")
    at = "2026-03-04T10:00:00Z"
    scan = event("s1", "carrier_scan", "o1", at, scan="delivered", courier="dhl")
    for n, doc in enumerate((placed, scan)):
        parser.handle(RawRecord("t", 0, n, line(doc)), items)
    delivered = items[-1].t  # the scan's effective time
    day = delivered + DAY_US  # the earlier timers (the promise) have fired before the snapshot
    stage.on_batch([*items, Tick("t#0", day, day)])
    assert list(stage.cases) == ["o1"] and stage.cases["o1"].delivered_at == delivered
    resumed = _resume(stage, replace(before, return_window_us=days * DAY_US))
    for d in (days - 2, days + 2):
        t = delivered + d * DAY_US
        resumed.on_batch([Tick("t#0", t, t)])
        assert ("o1" in resumed.cases) == (d < days), d  # closes at the new window, not never


def test_a_resume_turns_intent_inference_on_or_off():
    """The case shards wait for the intent stage only while inference is on."""
    from salvage.flows.stages import INTENT_KEY, IntentStage

    on = CaseStage(0, _cfg(intent_stage=True))
    assert INTENT_KEY in on.reorderer.upstream
    assert INTENT_KEY not in _resume(on, _cfg(intent_stage=False)).reorderer.upstream
    off = CaseStage(0, _cfg(intent_stage=False))
    assert INTENT_KEY not in off.reorderer.upstream
    assert INTENT_KEY in _resume(off, _cfg(intent_stage=True)).reorderer.upstream
    stage = IntentStage(_cfg(intent_threshold=0.6))
    stage.intents.examples = 40  # what it learned is kept; the threshold is this run's
    resumed = _resume(stage, _cfg(intent_threshold=0.7))
    assert resumed.intents.threshold == 0.7 and resumed.intents.examples == 40


def test_a_model_snapshot_from_before_the_verdict_wait_and_flagged_gate_resumes():
    """State pickled before issue 11 lacks the new fields: the resume fills them in."""
    stage = ModelStage(0, _cfg())
    ms = stage.models
    for name in ("awaiting", "await_heap", "late_labels"):
        delattr(ms, name)
    for m in (ms.recoverability, ms.abuse):
        del m.model_flagged, m.rules_flagged
        del m.model_eval.window_positives
        m.model_eval.window.append((0.1, 0.01))  # the old (logloss, brier) shape
    resumed = _resume(stage, _cfg())
    assert resumed.models.awaiting == {} and resumed.models.expire_awaiting(10**12) == []
    m = resumed.models.abuse
    assert m.evaluate(True, 0.9, 0.9, 1) is None and m.model_flagged.n == 1
    assert m.model_eval.summary()["auc"] is None  # one class so far: no value
