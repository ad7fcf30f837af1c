"""One configuration reference: the README's settings table is generated from the settings classes
and stays equal to them; `salvage config` validates everything at start and redacts secrets."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from salvage.cli import app
from salvage.config import FLAT, Settings
from salvage.settings_doc import GROUPS, README_END, README_START, settings_rows, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner()


def test_readme_settings_table_equals_the_settings_classes():
    text = README.read_text()
    block = text[text.index(README_START) + len(README_START) : text.index(README_END)]
    assert block.strip() == settings_table(), "run: salvage config --markdown, paste into README"


def test_every_setting_is_described_and_grouped_once():
    rows = settings_rows()
    assert all(text for *_, text in rows), [env for env, *_, text in rows if not text]
    envs = [env for env, *_ in rows]
    assert len(envs) == len(set(envs)) and len(envs) >= 60
    assert list(GROUPS) == list(Settings.model_fields)  # the tree is made of groups only
    paths = [path.strip("`") for _, path, *_ in rows]
    assert sorted(paths) == sorted(f"{g}.{f}" for g, names in GROUPS.items() for f in names)
    assert len(FLAT) == len(rows)


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
    assert list(tree) == list(GROUPS) and {"kpis", "cost", "kafka", "redis"} <= set(tree)
    assert tree["dataflow"]["shards"] == 16
    assert tree["kafka"]["sasl_password"] == "***"
    assert tree["redis"]["url"] == "redis://:***@10.0.0.5:6380/2"
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


def test_every_documented_variable_still_reaches_its_place_in_the_tree(monkeypatch):
    """The flat names of the README keep working; the nested form too, and wins."""
    values = {
        "SALVAGE_KAFKA_BOOTSTRAP": ("kafka", "bootstrap", "broker-9:9092", "broker-9:9092"),
        "SALVAGE_SHARDS": ("dataflow", "shards", "12", 12),
        "SALVAGE_IDLE_PARTITION_SECONDS": ("dataflow", "idle_partition_seconds", "2.5", 2.5),
        "SALVAGE_TOPIC_ORDERS": ("topics", "orders", "orders-x", "orders-x"),
        "SALVAGE_MODEL_SHARDS": ("models", "shards", "3", 3),
        "SALVAGE_INFER_INTENTS": ("models", "infer_intents", "false", False),
        "SALVAGE_LANE_WINDOWS_HOURS": ("lanes", "windows_hours", "[6, 12]", (6.0, 12.0)),
        "SALVAGE_CASE_TTL_SECONDS": ("redis", "case_ttl_seconds", "3600", 3600),
        "SALVAGE_METRICS_PORT": ("metrics", "port", "0", 0),
        "SALVAGE_KPI_PRESET_LANE": ("kpis", "preset_lane", '["DE-FR"]', ["DE-FR"]),
        "SALVAGE_COST_WRITE_OFF_SHARE": ("cost", "write_off_share", '{"A": 0.1}', {"A": 0.1}),
    }
    for var, (group, field, raw, _) in values.items():
        assert FLAT[var.removeprefix("SALVAGE_").lower()] == (group, field)
        monkeypatch.setenv(var, raw)
    s = Settings()
    for group, field, _, expected in values.values():
        assert getattr(getattr(s, group), field) == expected, (group, field)
    assert s.shards == 12  # read-only flat name, for older callers
    monkeypatch.setenv("SALVAGE_DATAFLOW__SHARDS", "5")
    monkeypatch.setenv("SALVAGE_KAFKA__GROUP_ID", "nested-group")
    s = Settings()
    assert s.dataflow.shards == 5 and s.kafka.group_id == "nested-group"
    assert s.dataflow.idle_partition_seconds == 2.5  # the group's other flat variables stay
    # keyword arguments: flat names or groups, over the environment
    kw = Settings(shards=7, kafka={"group_id": "kw"})
    assert kw.dataflow.shards == 7 and kw.kafka.group_id == "kw"
    assert kw.kafka.bootstrap == "broker-9:9092"
    assert kw.updated(shards=9, redis_url="").dataflow.shards == 9


def test_one_librdkafka_dict_for_every_client(monkeypatch):
    monkeypatch.setenv("SALVAGE_KAFKA_BOOTSTRAP", "b1:9093,b2:9093")
    monkeypatch.setenv("SALVAGE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    kafka = Settings().kafka
    assert kafka.as_librdkafka_dict({"group.id": "g"}) == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "log.connection.close": "false",
        "security.protocol": "SASL_SSL",
        "group.id": "g",
    }
    assert "sasl.password" not in kafka.as_librdkafka_dict()


def test_config_redacts_every_secret_in_the_plain_and_json_tree(monkeypatch):
    monkeypatch.setenv("SALVAGE_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("SALVAGE_KAFKA_SASL_PASSWORD", "s3cret-kafka")
    monkeypatch.setenv("SALVAGE_REDIS_PASSWORD", "s3cret-redis")
    monkeypatch.setenv("SALVAGE_REDIS_URL", "rediss://svc:s3cret-url@cache:6380/1")
    for args in (["config"], ["config", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output
        assert "svc" in result.output and "cache:6380" in result.output
    tree = json.loads(runner.invoke(app, ["config", "--json"]).output)
    assert tree["redis"]["password"] == "***" and tree["kafka"]["sasl_password"] == "***"
    assert tree["redis"]["url"] == "rediss://svc:***@cache:6380/1"


def test_a_bad_value_is_reported_by_its_variable(monkeypatch):
    monkeypatch.setenv("SALVAGE_IDLE_PARTITION_SECONDS", "-1")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "SALVAGE_IDLE_PARTITION_SECONDS" in result.output
    assert "dataflow.idle_partition_seconds" in result.output
