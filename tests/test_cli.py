"""The command line, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from salvage.cli import app
from tests.flowkit import sim_log

runner = CliRunner()
COMMANDS = ["schemas", "generate", "run", "broker", "replay", "record", "demo"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command):
    args = [command, "--help"] if command else ["--help"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_schemas_validate_real_events_and_outputs(tmp_path):
    result = runner.invoke(app, ["schemas", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    schemas = {
        p.name.removesuffix(".schema.json"): json.loads(p.read_text())
        for p in (tmp_path / "s").iterdir()
    }
    assert {"interventions", "lane-alerts", "dead-letters", "input-event"} <= set(schemas)
    log = sim_log(tmp_path, orders=150, seed=4)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    by_type: dict[str, dict] = {}
    for doc in lines:
        by_type.setdefault(doc["event_type"], doc)  # one real event of every type
    assert len(by_type) >= 12
    union = jsonschema.Draft202012Validator(schemas["input-event"])
    for doc in by_type.values():
        union.validate(doc)
    bad = {**lines[0], "order_id": 5}
    with pytest.raises(jsonschema.ValidationError):
        union.validate(bad)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", "--input", str(log), "--out-dir", str(out), "--redis-url", "", "--no-summary"]
    )
    assert result.exit_code == 0, result.output
    triggers = [json.loads(x) for x in (out / "interventions.jsonl").read_text().splitlines()]
    assert triggers
    trigger_schema = jsonschema.Draft202012Validator(schemas["interventions"])
    for t in triggers[:50]:
        trigger_schema.validate(t)


def test_run_rejects_a_missing_file_clearly(tmp_path):
    result = runner.invoke(app, ["run", "--input", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "no such event log" in result.output


def test_generate_is_deterministic(tmp_path):
    for name in ("a", "b"):
        result = runner.invoke(
            app,
            [
                "generate",
                "--scenario",
                "steady-state",
                "--orders",
                "200",
                "--seed",
                "5",
                "--out",
                str(tmp_path / f"{name}.jsonl"),
            ],
        )
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    result = runner.invoke(app, ["generate", "--scenario", "nope", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2


def test_bytewax_run_entry_point(tmp_path):
    log = sim_log(tmp_path, orders=150, seed=4)
    env = {
        **os.environ,
        "SALVAGE_INPUT": str(log),
        "SALVAGE_OUT_DIR": str(tmp_path / "o"),
        "SALVAGE_REDIS_URL": "",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.recovery:flow"],
        env=env,
        cwd=Path(__file__).parents[1],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert (tmp_path / "o" / "interventions.jsonl").read_text().count("\n") > 0
