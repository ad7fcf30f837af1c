"""End to end over real services: the embedded Kafka broker and Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bytewax.testing import cluster_main

from salvage.config import Settings
from salvage.connectors.broker import ensure_topics
from salvage.flows.recovery import FlowSpec, build_flow
from salvage.runner import consume_topic, publish_log
from salvage.sinks.redis_store import CaseStore, RedisCaseSink
from tests.flowkit import jsonl, run_file_flow, sim_log

pytestmark = pytest.mark.integration
WIDE = {"reorder_tolerance_seconds": 3600.0}


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    return sim_log(tmp_path_factory.mktemp("logs"), orders=400, seed=9)


@pytest.fixture(scope="module")
def late_log(tmp_path_factory) -> Path:
    """11 carrier scans 83-867 s behind the log's clock: at the default 60 s tolerance, judged
    against the whole file they were late by other amounts than against their Kafka partition
    (the trigger of O00000099 was decided at 15:30:57 in file mode, 15:27:21 in Kafka mode)."""
    return sim_log(tmp_path_factory.mktemp("logs"), orders=400, seed=2)


def _topic_settings(bootstrap: str, suffix: str, partitions: int = 3, **extra) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        redis_url="",
        shards=4,
        topic_partitions=partitions,
        **{
            f"topic_{s}": f"{s}-{suffix}"
            for s in ("orders", "deliveries", "support", "returns", "interventions")
        },
        topic_lane_alerts=f"lane-alerts-{suffix}",
        topic_dead_letters=f"dead-letters-{suffix}",
        **extra,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_kafka_mode_matches_file_mode(
    kafka_broker, late_log, tmp_path, unique_name, workers, redis_url, redis_key_prefix
):
    """At the default reorder tolerance, every trigger identical (decided_at included): file mode
    judges lateness per (stream, partition of order_id), as Kafka holds a replayed log. The case
    store too: dispatch writes one document per order and call, and Kafka mode's calls are
    other slices of the stream than file mode's, yet every order ends with the same document."""
    log = late_log
    settings = _topic_settings(kafka_broker.bootstrap, unique_name("t"))
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        settings.topics.partitions,
    )
    counts = publish_log(settings, log)
    assert sum(counts.values()) == sum(1 for x in log.read_bytes().splitlines() if x.strip())
    kafka_cases = RedisCaseSink(redis_url, key_prefix=f"{redis_key_prefix}k:", ttl_seconds=600)
    spec = FlowSpec(
        settings,
        to_end=True,
        case_store=False,
        out_dir=tmp_path / "kafka",
        extra_sinks={"cases": kafka_cases},
    )
    cluster_main(build_flow(spec), [], 0, worker_count_per_proc=workers)

    got = tmp_path / "interventions.jsonl"
    n = consume_topic(settings, settings.topics.interventions, got, group=unique_name("g"))
    file_cases = RedisCaseSink(redis_url, key_prefix=f"{redis_key_prefix}f:", ttl_seconds=600)
    file_out = run_file_flow(
        [log], tmp_path / "file", extra_sinks={"cases": file_cases}, topic_partitions=3
    )
    expected = jsonl(file_out["interventions"])
    assert n == len(expected) > 0
    by_id = {t["trigger_id"]: t for t in jsonl(got.read_bytes())}
    assert by_id == {t["trigger_id"]: t for t in expected}  # exact: no tolerance
    # Kafka mode writes the uplift's inputs into its out dir, the same bytes as file mode
    assert (tmp_path / "kafka" / "assignments.jsonl").read_bytes() == file_out["assignments"]
    assert (tmp_path / "kafka" / "outcomes.jsonl").read_bytes() == file_out["outcomes"]
    # the case store: the same document and version for every order
    orders = {
        json.loads(x)["order_id"] for x in log.read_bytes().splitlines() if b'"order_placed"' in x
    }
    in_kafka = CaseStore(redis_url, key_prefix=f"{redis_key_prefix}k:")
    in_file = CaseStore(redis_url, key_prefix=f"{redis_key_prefix}f:")
    kafka_docs = {o: in_kafka.get(o) for o in sorted(orders)}
    assert all(d is not None for d in kafka_docs.values())
    assert kafka_docs == {o: in_file.get(o) for o in sorted(orders)}


def test_case_store_holds_latest_features_scores_and_decision(
    log, tmp_path, redis_url, redis_key_prefix
):
    settings = Settings(redis_url=redis_url, shards=4, **WIDE)
    sink = RedisCaseSink(redis_url, key_prefix=redis_key_prefix, ttl_seconds=3600)
    out = tmp_path / "out"
    spec = FlowSpec(settings, inputs=[log], out_dir=out, extra_sinks={"cases": sink})
    cluster_main(build_flow(spec), [], 0, worker_count_per_proc=2)
    triggers = jsonl((out / "interventions.jsonl").read_bytes())
    store = CaseStore(redis_url, key_prefix=redis_key_prefix)
    placed = [
        json.loads(x)["order_id"] for x in log.read_bytes().splitlines() if b'"order_placed"' in x
    ]
    assert all(store.get(o) is not None for o in placed)  # every case was written
    for t in triggers[:20]:
        rec = store.get(t["order_id"])
        doc = rec["doc"]
        assert doc["order_id"] == t["order_id"] and doc["customer_id"] == t["customer_id"]
        assert set(doc["scores"]) >= {"recoverability", "abuse", "model_version"}
        assert "slippage_hours" in doc["features"] and "customer_orders" in doc["features"]
        assert t["action"] in doc["triggered"] or doc["status"] == "closed"
        assert store.redis.ttl(store.key(t["order_id"])) > 0
    # a case whose story ended (truth final_at) a return window before the end of the log is
    # closed; the end of the log itself closes nothing
    truth = [json.loads(x) for x in log.with_suffix(".truth").read_text().splitlines()]
    last = max(json.loads(x)["occurred_at"] for x in log.read_bytes().splitlines())
    final = {r["order_id"]: r["final_at"] for r in truth if r.get("type") == "order"}
    statuses = {o: store.get(o)["doc"]["status"] for o in placed}
    assert all(statuses[o] == "closed" for o, at in final.items() if at < last)
    assert any(s == "open" for s in statuses.values()) or all(at < last for at in final.values())
    # idempotent: a second identical run leaves identical documents
    first = {o: store.get(o) for o in placed[:50]}
    cluster_main(
        build_flow(
            FlowSpec(
                settings, inputs=[log], out_dir=tmp_path / "again", extra_sinks={"cases": sink}
            )
        ),
        [],
        0,
    )
    assert {o: store.get(o) for o in placed[:50]} == first
