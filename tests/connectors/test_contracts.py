"""Every output stream is declared once (salvage.connectors.outputs.OUTPUTS) and has a contract: a
pydantic
model, a JSON Schema from `salvage schemas`, a topic setting and a file name; a real run's output
validates against the schemas, line by line."""

from __future__ import annotations

import json

import jsonschema
from typer.testing import CliRunner

from salvage.cli import app
from salvage.config import Settings
from salvage.connectors.outputs import OUTPUTS, Disposition, ModelEvent
from tests.flowkit import run_file_flow, sim_log


def test_each_stream_is_declared_once_with_its_own_names():
    for attr in ("name", "item", "file_name", "sink", "step", "tag", "topic_setting"):
        values = [getattr(s, attr) for s in OUTPUTS]
        assert len(set(values)) == len(values), attr
    # the default topic of each stream is its name; Settings lists exactly these output topics
    assert Settings(redis_url="").topics.outputs() == [s.name for s in OUTPUTS]
    assert {"model-events", "dispositions"} <= {s.name for s in OUTPUTS}


def test_model_events_and_dispositions_are_checked_against_their_contracts():
    stream = {s.item: s for s in OUTPUTS}
    event = {
        "t": 1_773_000_000_000_000, "at": "2026-03-08T20:00:00Z", "shard": 0,
        "model": "abuse", "change": "promoted", "version": "abuse-lr-v1", "reason": "beats rules",
        "labels": 1200, "model_auc": 0.91, "rules_auc": None,
        "model_auc_flagged": 0.8, "rules_auc_flagged": None,
    }  # fmt: skip
    line = json.loads(stream["model_event"].serialise(event))
    assert line["rules_auc"] is None and line["model_auc"] == 0.91
    assert ModelEvent.model_validate(line).change == "promoted"
    # what the models really emit fits the contract
    from salvage.scoring.models import ModelConfig, OnlineModel

    real = OnlineModel("abuse", ModelConfig())._event(5, "demoted", "test")
    stream["model_event"].serialise({**real, "at": "2026-03-08T20:00:00Z", "shard": 0})
    for broken in ({**event, "change": "retired"}, {**event, "labels": -1}, {**event, "x": 1}):
        try:
            stream["model_event"].serialise(broken)
        except ValueError:
            continue
        raise AssertionError(f"accepted {broken}")
    disposition = {
        "disposition_id": "d1", "order_id": "o1", "decided_at": "2026-03-08T20:00:00Z",
        "policy_version": "v1", "route": "restock", "expected_recovered_value": 31.5,
        "grade": "A", "sku_family": "apparel_tops", "item_value": 40.0, "waited_days": 1.5,
        "candidates": [
            {"route": "restock", "recovered": 31.5, "resale": 36.0, "handling": 2.5, "days": 9.5}
        ],
    }  # fmt: skip
    assert Disposition.model_validate_json(stream["disposition"].serialise(disposition))


def test_a_real_run_writes_every_stream_within_its_schema(tmp_path):
    result = CliRunner().invoke(app, ["schemas", "--out", str(tmp_path / "schemas")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    log = tmp_path / "salted.jsonl"  # a real log and two records that must become dead letters
    log.write_bytes(sim_log(tmp_path).read_bytes() + b'{"event_type": "order_placed"}\n\xff\n')
    run_file_flow([log], out)
    seen = {}
    for stream in OUTPUTS:
        schema = json.loads((tmp_path / "schemas" / f"{stream.name}.schema.json").read_text())
        validator = jsonschema.Draft202012Validator(schema)
        lines = (out / stream.file_name).read_text().splitlines()
        for line in lines:
            doc = json.loads(line)
            validator.validate(doc)
            assert stream.model.model_validate(doc)  # the pydantic contract agrees
        seen[stream.name] = len(lines)
    for name in ("interventions", "dead-letters", "dispositions", "return-status"):
        assert seen[name] > 0, seen  # (model events: a unit check above; lanes: their tests)
    assert seen["dead-letters"] == 2
