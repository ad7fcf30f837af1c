"""Crash recovery: ``salvage run --recovery-dir`` killed with SIGKILL mid-stream and restarted with
the same arguments ends exactly like an uninterrupted run; SIGTERM drains and exits cleanly.

Real processes (the ``salvage`` CLI in a subprocess), real Redis servers, the embedded broker.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from salvage.config import Settings
from salvage.connectors.broker import ensure_topics, free_port
from salvage.connectors.simulator import write_log
from salvage.flows.recovery import FlowSpec
from salvage.runner import (
    Recovery,
    RecoveryMismatch,
    consume_topic,
    prepare_recovery,
    publish_log,
)
from tests.conftest import RedisServer
from tests.flowkit import OUTPUT_FILES, jsonl, run_file_flow

pytestmark = pytest.mark.integration

TOL = "3600"  # reorder tolerance: wider than the simulator's late scans, as in test_flow
ORDERS = 1000  # ~10k events: a run lasts long enough (~2 s) to be killed mid-stream


@pytest.fixture(scope="module")
def big_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "events.jsonl"
    write_log("launch-week-backlog", ORDERS, 5, path)
    return path


@pytest.fixture(scope="module")
def reference_redis() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed")
    server = RedisServer(binary, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def uninterrupted(big_log, tmp_path_factory, reference_redis) -> dict[str, bytes]:
    """The uninterrupted run (in this process), with its case store in ``reference_redis``."""
    return run_file_flow(
        [big_log],
        tmp_path_factory.mktemp("base"),
        reorder_tolerance_seconds=float(TOL),
        redis_url=reference_redis.url,
    )


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _wait_for_lines(proc: subprocess.Popen, path: Path, n: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _lines(path)
        if got >= n:
            return got
        assert proc.poll() is None, f"exited early ({proc.returncode}) with {got} lines"
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {n} lines in {timeout}s")


def _topic_size(settings: Settings, topic: str) -> int:
    """Messages on a topic, from the brokers' high watermarks (no consumer group: instant)."""
    conf = {**settings.kafka.as_librdkafka_dict(), "group.id": "salvage-probe"}
    consumer = Consumer(conf)
    try:
        md = consumer.list_topics(topic, timeout=10)
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in md.topics[topic].partitions
        )
    finally:
        consumer.close()


def _store_dump(url: str) -> dict[str, object]:
    """Everything Salvage keeps in Redis: case hashes, and the review queue (a stream whose entry
    ids are wall-clock stamps, so compared by content, in order, plus its dedupe set)."""
    client = redis.Redis.from_url(url)
    try:
        dump: dict[str, object] = {}
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            if kind == "hash":
                dump[key.decode()] = client.hgetall(key)
            elif kind == "stream":
                dump[key.decode()] = [fields for _id, fields in client.xrange(key)]
            elif kind == "set":
                dump[key.decode()] = client.smembers(key)
            else:
                dump[key.decode()] = (kind, client.dump(key))
        return dump
    finally:
        client.close()


def _file_args(log: Path, out: Path, rdb: Path, redis_url: str) -> list[str]:
    return [
        "run",
        "--input",
        str(log),
        "--out-dir",
        str(out),
        "--no-summary",
        "--shards",
        "4",
        "--redis-url",
        redis_url,
        "--recovery-dir",
        str(rdb),
        "--snapshot-interval",
        "0.2",
    ]


ENV = {"SALVAGE_REORDER_TOLERANCE_SECONDS": TOL}


def test_kill9_mid_stream_then_restart_is_byte_identical_with_identical_case_store(
    big_log, uninterrupted, reference_redis, tmp_path, salvage_cli, redis_server_factory
):
    expected = jsonl(uninterrupted["interventions"])
    redis_b = redis_server_factory()
    out = tmp_path / "out"
    args = _file_args(big_log, out, tmp_path / "db", redis_b.url)
    first = salvage_cli(*args, env=ENV)
    at_kill = _wait_for_lines(first, out / "interventions.jsonl", len(expected) // 3)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL
    assert at_kill < len(expected), "the kill must land mid-stream"

    second = salvage_cli(*args, env=ENV)
    assert second.wait(timeout=120) == 0, second.err_path.read_text()
    assert "resuming from" in second.err_path.read_text()
    for name in OUTPUT_FILES:
        assert (out / f"{name}.jsonl").read_bytes() == uninterrupted[name], name
    # the case store ends identical (versions and documents), whatever was rewritten on resume
    got, want = _store_dump(redis_b.url), _store_dump(reference_redis.url)
    assert sum(k.startswith("salvage:case:") for k in want) >= 0.9 * ORDERS
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key
    n_review = sum(1 for t in expected if t["action"] == "human_review")
    assert n_review > 0  # the scenario exercises the review queue
    assert len(want["salvage:reviews"]) == n_review  # each human_review trigger exactly once


def test_sigterm_drains_exits_zero_and_resumes(big_log, uninterrupted, tmp_path, salvage_cli):
    out = tmp_path / "out"
    args = _file_args(big_log, out, tmp_path / "db", "")
    expected = uninterrupted["interventions"].count(b"\n")
    first = salvage_cli(*args, env=ENV)
    _wait_for_lines(first, out / "interventions.jsonl", expected // 4)
    first.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert first.wait(timeout=30) == 0, first.err_path.read_text()
    drain_s = time.monotonic() - t0
    err = first.err_path.read_text()
    assert "SIGTERM: draining" in err and "drained on signal" in err
    assert "Traceback" not in err
    assert drain_s < 10
    partial = (out / "interventions.jsonl").read_bytes()
    assert 0 < partial.count(b"\n") < expected
    assert uninterrupted["interventions"].startswith(partial)  # a clean prefix, no torn line

    second = salvage_cli(*args, env=ENV)
    assert second.wait(timeout=120) == 0, second.err_path.read_text()
    for name in OUTPUT_FILES:
        assert (out / f"{name}.jsonl").read_bytes() == uninterrupted[name], name


def test_kill9_in_kafka_mode_loses_nothing_and_repeats_only_same_ids(
    kafka_broker, tmp_path, unique_name, salvage_cli
):
    log = tmp_path / "events.jsonl"
    # long enough that the kill lands mid-stream: the sink does not wait for the broker per
    # batch, so 600 orders were all out (~3 s) before the watcher saw a quarter of them
    write_log("launch-week-backlog", 2000, 8, log)
    suffix = unique_name("rk")
    topics = {f"SALVAGE_TOPIC_{s.upper()}": f"{s}-{suffix}" for s in Settings().topics.inputs()}
    topics |= {
        "SALVAGE_TOPIC_INTERVENTIONS": f"interventions-{suffix}",
        "SALVAGE_TOPIC_LANE_ALERTS": f"lane-alerts-{suffix}",
        "SALVAGE_TOPIC_DEAD_LETTERS": f"dead-letters-{suffix}",
        "SALVAGE_TOPIC_PARTITIONS": "2",
    }
    settings = Settings(
        kafka_bootstrap=kafka_broker.bootstrap,
        **{k.removeprefix("SALVAGE_").lower(): v for k, v in topics.items()},
    )
    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        2,
    )
    publish_log(settings, log)
    expected = jsonl(
        run_file_flow([log], tmp_path / "file", reorder_tolerance_seconds=float(TOL))[
            "interventions"
        ]
    )
    env = {**ENV, **topics, "SALVAGE_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}
    args = ["run", "--to-end", "--shards", "4", "--redis-url", ""]
    args += ["--recovery-dir", str(tmp_path / "db"), "--snapshot-interval", "0.2"]
    first = salvage_cli(*args, env=env)
    # mid-stream: some triggers are on the topic, not all of them
    deadline = time.monotonic() + 60
    while _topic_size(settings, settings.topics.interventions) < len(expected) // 4:
        assert first.poll() is None, first.err_path.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert _topic_size(settings, settings.topics.interventions) < len(expected)
    second = salvage_cli(*args, env=env)
    assert second.wait(timeout=120) == 0, second.err_path.read_text()
    got = tmp_path / "interventions.jsonl"
    n = consume_topic(settings, settings.topics.interventions, got, group=unique_name("g"))
    triggers = jsonl(got.read_bytes())
    by_id: dict[str, dict] = {}
    for t in triggers:
        assert by_id.setdefault(t["trigger_id"], t) == t  # a repeat is the very same trigger
    assert by_id == {t["trigger_id"]: t for t in expected}  # none missing, none extra
    assert n >= len(expected)


def test_a_recovery_dir_refuses_different_arguments(tmp_path):
    log = tmp_path / "a.jsonl"
    log.write_text("")
    rec = Recovery(tmp_path / "db", partitions=2)
    spec: Callable[..., FlowSpec] = lambda **kw: FlowSpec(  # noqa: E731
        Settings(redis_url="", **kw), inputs=[log], out_dir=tmp_path / "o"
    )
    assert prepare_recovery(rec, spec(shards=4)) is False  # created and initialised
    assert sorted(p.name for p in (tmp_path / "db").glob("part-*")) == [
        "part-0.sqlite3",
        "part-1.sqlite3",
    ]
    assert prepare_recovery(rec, spec(shards=4)) is True  # resumes
    with pytest.raises(RecoveryMismatch, match="shards"):
        prepare_recovery(rec, spec(shards=5))
    # the model replicas in effect: customers map to them by count
    assert prepare_recovery(rec, spec(shards=4, model_shards=1)) is True  # the default's count
    with pytest.raises(RecoveryMismatch, match="model_shards"):
        prepare_recovery(rec, spec(shards=4, model_shards=2))
    manifest = json.loads((tmp_path / "db" / "salvage-run.json").read_text())
    assert manifest["mode"] == "file" and manifest["shards"] == 4
    assert manifest["model_shards"] == 1
    # state written by an older Salvage (no or another state_version): a clear refusal
    old = {k: v for k, v in manifest.items() if k != "state_version"}
    (tmp_path / "db" / "salvage-run.json").write_text(json.dumps(old))
    with pytest.raises(RecoveryMismatch, match="another Salvage version"):
        prepare_recovery(rec, spec(shards=4))
