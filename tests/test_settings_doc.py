"""One configuration reference: the README's settings table is generated from the settings classes
and stays equal to them; `salvage config` validates everything at start and redacts secrets."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from salvage.cli import app
from salvage.config import Settings
from salvage.settings_doc import GROUPS, README_END, README_START, settings_rows, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def test_readme_settings_table_equals_the_settings_classes():
    text = README.read_text()
    block = text[text.index(README_START) + len(README_START) : text.index(README_END)]
    assert block.strip() == settings_table(), "run: salvage config --markdown, paste into README"


def test_every_setting_is_described_and_grouped_once():
    rows = settings_rows()
    assert all(text for _, _, text in rows), [env for env, _, text in rows if not text]
    envs = [env for env, _, _ in rows]
    assert len(envs) == len(set(envs)) and len(envs) >= 60
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields), "add the field to a GROUPS entry"


def test_config_prints_the_effective_tree_with_secrets_redacted(monkeypatch):
    monkeypatch.setenv("SALVAGE_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("SALVAGE_REDIS_URL", "redis://:hunter2-url@10.0.0.5:6380/2")
    monkeypatch.setenv("SALVAGE_SHARDS", "16")
    monkeypatch.setenv("SALVAGE_KPI_TOP_N_LANE", "40")
    monkeypatch.setenv("SALVAGE_COST_CHARGEBACK_FEE", "21.5")
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    tree = json.loads(result.output)
    assert set(tree) == {*GROUPS, "kpis", "cost"}
    assert tree["dataflow"]["shards"] == 16
    assert tree["kafka"]["kafka_sasl_password"] == "***"
    assert "10.0.0.5:6380" in tree["redis"]["redis_url"]
    assert tree["kpis"]["top_n_lane"] == 40 and tree["cost"]["chargeback_fee"] == 21.5
    plain = runner.invoke(app, ["config"])
    assert plain.exit_code == 0 and "hunter2" not in plain.output
    assert "  shards: 16" in plain.output


def test_bad_kpi_or_cost_settings_stop_a_command_at_start(monkeypatch, tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text("")
    for var, value in (
        ("SALVAGE_KPI_TOP_N_LANE", "-3"),
        ("SALVAGE_COST_WRITE_OFF_SHARE", '{"A": 1.7}'),
        ("SALVAGE_SHARDS", "0"),
    ):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            result = runner.invoke(app, ["run", "--input", str(log), "--out-dir", str(tmp_path)])
            assert result.exit_code == 2, (var, result.output)
            assert "invalid SALVAGE_* setting" in result.output
            assert not (tmp_path / "interventions.jsonl").exists()  # nothing started


def test_a_flag_is_validated_like_the_environment(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text("")
    result = runner.invoke(
        app, ["run", "--input", str(log), "--out-dir", str(tmp_path), "--shards", "0"]
    )
    assert result.exit_code == 2, result.output
    assert "invalid SALVAGE_* setting" in result.output and "shards" in result.output
