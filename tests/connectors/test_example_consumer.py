"""The example downstream consumer (examples/trigger_consumer.py) against the embedded broker:
consumer group, at-least-once commits, dedupe on trigger_id, expires_at honoured, bad messages
skipped, and a restart of the group resumes after what it handled."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from salvage.connectors.broker import ensure_topics
from salvage.connectors.outputs import Trigger

pytestmark = pytest.mark.integration

SPEC = importlib.util.spec_from_file_location(
    "trigger_consumer", Path(__file__).resolve().parents[2] / "examples" / "trigger_consumer.py"
)
assert SPEC is not None and SPEC.loader is not None
example = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = example  # dataclasses resolve annotations through it
SPEC.loader.exec_module(example)

NOW = datetime(2026, 3, 10, tzinfo=UTC)


def _trigger(n: int, expires: str, holdout: bool = False) -> bytes:
    return (
        Trigger.model_validate(
            {
                "trigger_id": f"t{n}",
                "order_id": f"O{n}",
                "customer_id": f"C{n}",
                "action": "proactive_reassurance",
                "priority": "normal",
                "reason_codes": ["delay_signal"],
                "scores": {"recoverability": 0.7, "abuse": 0.05},
                "expected_value": 3.2,
                "currency": "EUR",
                "policy_version": "default-v1",
                "model_version": "rules-v1",
                "holdout": holdout,
                "decided_at": "2026-03-09T12:00:00Z",
                "expires_at": expires,
                "source_event_id": f"e{n}",
            }
        )
        .model_dump_json()
        .encode()
    )


def test_the_example_consumer_dedupes_expires_and_resumes(kafka_conf, unique_name):
    topic, group = unique_name("interventions"), unique_name("messaging")
    ensure_topics(kafka_conf, [topic], 2)
    later = "2026-03-16T12:00:00Z"
    messages = [
        _trigger(1, later),
        _trigger(2, later),
        _trigger(1, later),  # a replayed pipeline repeats the id
        _trigger(3, "2026-03-09T18:00:00Z"),  # expired before NOW
        _trigger(4, later, holdout=True),
        b"{not json",
        _trigger(5, later),
    ]
    producer = Producer(kafka_conf)
    for value in messages:
        producer.produce(topic, value, key=b"same-key")  # one partition: a defined order
    assert producer.flush(10) == 0
    sent: list[dict] = []
    stats = example.consume(
        kafka_conf, topic, group, now=lambda: NOW, send=sent.append, idle_exit_s=2.0
    )
    assert stats.sent == ["t1", "t2", "t5"] == [t["trigger_id"] for t in sent]
    assert (stats.duplicates, stats.expired, stats.holdouts, stats.invalid) == (1, 1, 1, 1)

    # the group committed what it handled: a restart gets only what is new
    producer.produce(topic, _trigger(6, later), key=b"same-key")
    assert producer.flush(10) == 0
    again = example.consume(
        kafka_conf, topic, group, now=lambda: NOW, send=sent.append, idle_exit_s=2.0
    )
    assert again.sent == ["t6"] and again.duplicates == 0


def test_the_example_consumer_has_help(capsys):
    with pytest.raises(SystemExit) as info:
        example.main(["--help"])
    assert info.value.code == 0
    assert "dedupe on ``trigger_id``" in capsys.readouterr().out
