"""Dashboards as code and alert rules: committed JSON is what the code generates, every query uses
metrics the pipeline defines, and the alert rules pass their ``promtool test rules`` tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import salvage.sinks.kafka  # registers the Kafka sink's metrics
import salvage.sinks.kpis
import salvage.sinks.metrics
import salvage.sinks.review_queue  # registers the review queue's backlog gauge
from salvage.dashboards import generate
from salvage.dashboards.builder import DATASOURCE_UID, SCHEMA_VERSION, render, substitute
from salvage.dashboards.definitions import DASHBOARDS

ALERTS = Path(__file__).resolve().parents[2] / "dashboards" / "alerts"
RULES = ALERTS / "salvage.rules.yml"
ALERT_NAMES = {
    "SalvageCourierLaneDelaySpike",
    "SalvageDeadLetterRateHigh",
    "SalvageKafkaConsumerLagHigh",
    "SalvageNoEvents",
    "SalvageModelDemoted",
    "SalvageReturnJourneyBreakage",
    "SalvageReviewBacklogOld",
}
# Metrics an alert may use that this process does not define (see the rule file's comments).
EXTERNAL = {"up", "bytewax_kafka_consumer_lag", "salvage_kafka_consumer_lag"}


# imported for their metrics
assert salvage.sinks.kafka and salvage.sinks.kpis and salvage.sinks.metrics
assert salvage.sinks.review_queue


def test_committed_files_match_the_generator():
    stale = generate.stale()
    assert not stale, f"stale generated files {stale}: run `python -m salvage.dashboards.generate`"


def test_generate_check_mode(tmp_path, monkeypatch):
    assert generate.main(["--check"]) == 0
    written = generate.write(tmp_path)
    assert sorted(map(str, written)) == sorted(map(str, generate.outputs()))
    assert generate.stale(tmp_path) == []
    (tmp_path / "json" / "salvage-pipeline-health.json").write_text("{}\n")
    (tmp_path / "json" / "leftover.json").write_text("{}\n")
    assert sorted(map(str, generate.stale(tmp_path))) == [
        "json/leftover.json",
        "json/salvage-pipeline-health.json",
    ]


def test_four_dashboards_with_template_variables():
    titles = {d.title for d in DASHBOARDS}
    assert titles == {
        "Salvage · Return recovery",
        "Salvage · Courier lanes",
        "Salvage · Decisions and models",
        "Salvage · Pipeline health",
    }
    for d in DASHBOARDS:
        doc = render(d)
        assert doc["schemaVersion"] == SCHEMA_VERSION
        names = [v["name"] for v in doc["templating"]["list"]]
        assert names[0] == "datasource"
        if d.uid != "salvage-pipeline-health":  # no campaign/SKU/lane labels there
            assert names[1:] == ["campaign", "sku_family", "lane"]
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
        for p in doc["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert p["targets"] and all(t["expr"] for t in p["targets"])
        # panels never overlap
        cells = set()
        for p in doc["panels"]:
            g = p["gridPos"]
            area = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not area & cells, p["title"]
            cells |= area


def test_queries_use_variables_the_dashboard_defines():
    for d in DASHBOARDS:
        known = {"__rate_interval", "__range"} | {v.name for v in d.variables}
        for panel, target in d.targets():
            used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", target.expr))
            assert used <= known, (d.uid, panel.title, used - known)
            substitute(target.expr, dict.fromkeys(known, "x"))  # nothing left unresolved


def _defined_samples() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum")}
        else:
            names.add(family.name)
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:salvage|bytewax)_[a-z0-9_]+|up)\b", expr))


def test_every_panel_query_uses_defined_metrics():
    defined = _defined_samples()
    for d in DASHBOARDS:
        for panel, target in d.targets():
            missing = _metric_names(target.expr) - defined
            assert not missing, (d.uid, panel.title, missing)


def test_provisioning_points_at_the_datasource_uid():
    files = generate.outputs()
    ds = files[Path("provisioning/datasources/prometheus.yml")]
    assert f"uid: {DATASOURCE_UID}" in ds and "type: prometheus" in ds
    dash = files[Path("provisioning/dashboards/salvage.yml")]
    assert "type: file" in dash and generate.GRAFANA_DASHBOARD_DIR in dash
    for d in DASHBOARDS:
        doc = json.loads(files[Path("json") / f"{d.uid}.json"])
        assert doc["templating"]["list"][0]["current"]["value"] == DATASOURCE_UID


def test_alert_rules_cover_every_alert_and_known_metrics():
    text = RULES.read_text()
    assert set(re.findall(r"- alert: (\w+)", text)) == ALERT_NAMES
    defined = _defined_samples() | EXTERNAL
    exprs = " ".join(re.findall(r"expr: (.+(?:\n {10,}.+)*)", text))
    assert _metric_names(exprs) - defined == set()


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)"
        )
    return path


def test_promtool_check_rules(promtool):
    proc = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in proc.stdout


@pytest.mark.parametrize(
    "test_file", sorted(p.name for p in (ALERTS / "tests").glob("*.yml")) or ["(none)"]
)
def test_promtool_rule_unit_tests(promtool, test_file):
    assert test_file != "(none)", "no promtool rule tests in dashboards/alerts/tests"
    proc = subprocess.run(
        [promtool, "test", "rules", test_file],
        cwd=ALERTS / "tests",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_promtool_test():
    tested = set()
    for p in (ALERTS / "tests").glob("*.yml"):
        tested |= set(re.findall(r"alertname: (\w+)", p.read_text()))
    assert tested == ALERT_NAMES
