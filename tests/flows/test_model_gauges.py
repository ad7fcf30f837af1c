"""The model gauges (salvage_model_labels, _auc, _active ...) are exported at most once a second
of wall time while labels come, and always at the end of the input: after a file run they hold
the models' final figures, whatever the run's speed."""

from __future__ import annotations

from pathlib import Path

from salvage.config import Settings
from salvage.connectors.simulator import write_log
from salvage.flows.plain import PlainLoop
from salvage.flows.sources import file_part_id
from salvage.flows.stages import model as model_stage
from salvage.flows.topology import stage_config
from salvage.sinks import metrics
from tests.flowkit import feed_log


def test_the_gauges_hold_the_final_figures_at_the_end_of_the_input(
    tmp_path: Path, monkeypatch
) -> None:
    # a throttle longer than the run: only the end of the input can export the last labels
    monkeypatch.setattr(model_stage, "METRICS_EVERY_S", 3600.0)
    log = tmp_path / "log.jsonl"
    write_log("steady-state", 300, 5, log)
    s = Settings(redis_url="", shards=1, metrics_port=0)
    cfg = stage_config(s, (file_part_id(0, log),), case_records=False)
    loop = PlainLoop(cfg, lambda k, p: None)
    feed_log(loop, log, s)
    (stage,) = loop.stages["models"].values()
    summary = stage.models.summary()
    for name in ("recoverability", "abuse"):
        labels = summary[name]["labels"]
        gauge = metrics.MODEL_LABELS.labels(name, str(stage.shard))._value.get()
        assert gauge == labels, (name, gauge, labels)
    assert summary["recoverability"]["labels"] > 100  # the end closed the cases: labels came
    logloss = summary["recoverability"]["model"]["logloss"]
    gauge = metrics.MODEL_LOGLOSS.labels("recoverability", "model", str(stage.shard))._value.get()
    assert gauge == logloss
