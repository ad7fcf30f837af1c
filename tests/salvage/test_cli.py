"""The command line, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from salvage.cli import app
from tests.flowkit import sim_log

runner = CliRunner()
COMMANDS = [
    "schemas",
    "generate",
    "run",
    "broker",
    "replay",
    "record",
    "demo",
    "explain",
    "review",
    "report",
    "uplift",
    "dashboards",
]


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


def test_generate_help_names_every_scenario():
    """The --scenario help is written out (the simulator is imported only when generating, so
    `salvage` starts without it): it must name every scenario the simulator has."""
    from salvage.connectors.simulator import SCENARIOS

    result = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    text = result.output.split("--scenario", 1)[1].split("--orders", 1)[0]
    listed = set(re.findall(r"[a-z]+(?:-[a-z]+)+", text))
    assert {*SCENARIOS, "closed-loop"} <= listed, sorted({*SCENARIOS, "closed-loop"} - listed)


def test_generate_starts_the_log_where_asked(tmp_path):
    args = ["generate", "--orders", "50", "--seed", "5", "--out", str(tmp_path / "d.jsonl")]
    result = runner.invoke(app, [*args, "--start", "2026-11-01"])
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert first["occurred_at"].startswith("2026-11-01")
    result = runner.invoke(app, [*args, "--start", "November"])
    assert result.exit_code == 2 and "not a date" in result.output


def test_bytewax_run_entry_point(tmp_path):
    log = sim_log(tmp_path, orders=150, seed=4)
    env = {
        **os.environ,
        "SALVAGE_INPUT": str(log),
        "SALVAGE_OUT_DIR": str(tmp_path / "o"),
        "SALVAGE_REDIS_URL": "",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "salvage.flows.recovery:flow"],
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert (tmp_path / "o" / "interventions.jsonl").read_text().count("\n") > 0


def test_run_with_an_invalid_policy_stops_with_the_field_path(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("version: v1\nactions: {}\n")
    log = sim_log(tmp_path, orders=150, seed=4)
    result = runner.invoke(
        app,
        [
            "run",
            "--input",
            str(log),
            "--out-dir",
            str(tmp_path / "o"),
            "--redis-url",
            "",
            "--policy",
            str(bad),
        ],
    )
    assert result.exit_code == 2
    assert "actions: Value error, actions missing:" in " ".join(result.output.split())


@pytest.mark.integration
def test_explain_prints_a_real_case_and_review_cli_round_trip(tmp_path, redis_url, monkeypatch):
    import redis as redis_lib

    from salvage.sinks.redis_store import CaseStore
    from salvage.sinks.review_queue import STREAM

    log = sim_log(tmp_path, orders=600, seed=3)
    redis_url = redis_url.rsplit("/", 1)[0] + "/13"  # a DB of its own: order ids recur across runs
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    client.delete(STREAM, f"{STREAM}:seen")
    result = runner.invoke(
        app,
        [
            "run",
            "--input",
            str(log),
            "--out-dir",
            str(tmp_path / "o"),
            "--redis-url",
            redis_url,
            "--no-summary",
        ],
    )
    assert result.exit_code == 0, result.output
    triggers = [
        json.loads(x) for x in (tmp_path / "o" / "interventions.jsonl").read_text().splitlines()
    ]
    trig = next(t for t in triggers if t["action"] == "exchange_first_offer")
    result = runner.invoke(app, ["explain", trig["order_id"], "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    out = result.output
    assert trig["order_id"] in out and "Candidate actions" in out and "recoverability" in out
    assert "exchange_first_offer" in out and "return_requested" in out
    assert CaseStore(redis_url).get(trig["order_id"])["doc"]["triggered"]
    result = runner.invoke(app, ["explain", "no-such-order", "--redis-url", redis_url])
    assert result.exit_code == 1

    monkeypatch.delenv("SALVAGE_KAFKA_BOOTSTRAP", raising=False)
    result = runner.invoke(app, ["review", "list", "--redis-url", redis_url])
    assert result.exit_code == 0 and "depth" in result.output
    result = runner.invoke(
        app, ["review", "claim", "--reviewer", "agent-3", "--redis-url", redis_url]
    )
    assert result.exit_code == 0, result.output
    entry = result.output.split()[0]
    resolve = ["review", "resolve", entry, "--verdict", "deny", "--reviewer", "agent-3"]
    result = runner.invoke(app, [*resolve, "--redis-url", redis_url])
    assert result.exit_code == 2  # no broker: refuses rather than resolve without publishing
    assert "--print-only" in result.stderr
    result = runner.invoke(app, [*resolve, "--redis-url", redis_url, "--print-only"])
    assert result.exit_code == 0, result.output
    event = json.loads(next(x for x in result.output.splitlines() if x.startswith("{")))
    assert event["event_type"] == "review_resolved" and event["verdict"] == "deny"
    client.flushdb()


@pytest.mark.integration
def test_resolve_keeps_the_verdict_until_kafka_has_it(
    redis_url, kafka_broker, kafka_conf, unique_name, monkeypatch
):
    """A publish that fails leaves the review claimed; the retry publishes it and resolves it."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from salvage.connectors.broker import ensure_topics, free_port
    from salvage.sinks.review_queue import STREAM, ReviewQueue

    redis_url = redis_url.rsplit("/", 1)[0] + "/12"  # the CLI uses the default stream name
    queue = ReviewQueue(redis_url)
    queue.redis.delete(STREAM, f"{STREAM}:seen")
    queue.ensure_group()
    topic = unique_name("returns")
    ensure_topics(kafka_conf, [topic], 1)
    monkeypatch.setenv("SALVAGE_TOPIC_RETURNS", topic)
    try:
        queue.enqueue_many([{"trigger_id": "trig-1", "order_id": "O-77"}])
        result = runner.invoke(
            app, ["review", "claim", "--reviewer", "a1", "--redis-url", redis_url]
        )
        assert result.exit_code == 0, result.output
        entry = result.stdout.split()[0]
        resolve = ["review", "resolve", entry, "--verdict", "abuse_confirmed", "--reviewer", "a1"]
        resolve += ["--redis-url", redis_url]

        dead = f"127.0.0.1:{free_port()}"
        result = runner.invoke(app, [*resolve, "--kafka-bootstrap", dead, "--publish-timeout", "1"])
        assert result.exit_code == 2, result.output
        assert "Kafka delivery failed" in result.stderr and "stays claimed" in result.stderr
        pending = queue.redis.xpending_range(STREAM, "reviewers", "-", "+", 10)
        assert [p["message_id"] for p in pending] == [entry]  # still claimed, verdict not lost

        result = runner.invoke(app, [*resolve, "--kafka-bootstrap", kafka_broker.bootstrap])
        assert result.exit_code == 0, result.output
        assert queue.depth().depth == 0
        consumer = Consumer(
            {**kafka_conf, "group.id": unique_name("g"), "enable.auto.commit": False}
        )
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = None
        try:
            deadline = time.monotonic() + 20
            while got is None and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                got = msg if msg is not None and msg.error() is None else None
        finally:
            consumer.close()
        assert got is not None and got.key() == b"O-77"
        event = json.loads(got.value())
        assert event["event_type"] == "review_resolved" and event["verdict"] == "abuse_confirmed"
        assert event["review_id"] == "trig-1"

        result = runner.invoke(app, [*resolve, "--kafka-bootstrap", kafka_broker.bootstrap])
        assert result.exit_code == 2 and "already done" in result.stderr  # nothing re-published
    finally:
        queue.redis.delete(STREAM, f"{STREAM}:seen")
        queue.redis.close()


def test_the_run_summary_survives_a_one_class_auc(tmp_path):
    """A model whose rolling window holds one class reports its AUC as NaN (no value, never 0):
    the summary printed at the end of `salvage run` must not crash on it (it did: int(NaN), exit
    1 with a traceback after the outputs were written, on the first weeks of a new brand)."""
    from salvage.sinks import metrics

    log = sim_log(tmp_path, "steady-state", orders=40)
    metrics.MODEL_AUC.labels("abuse", "model", "0").set(float("nan"))
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", "--input", str(log), "--out-dir", str(out), "--redis-url", ""]
    )
    assert result.exit_code == 0, result.output
    assert "Outputs:" in result.output and (out / "interventions.jsonl").exists()
