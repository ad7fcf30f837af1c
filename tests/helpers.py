"""Test helpers: small, valid events built in code."""

from __future__ import annotations

import json
import time
from typing import Any

BASE_TIME = "2026-03-02T10:00:00Z"


def event(event_id: str, event_type: str, order_id: str, occurred_at: str, **fields: Any) -> dict:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "order_id": order_id,
        "occurred_at": occurred_at,
        "schema_version": 1,
        **fields,
    }


def order_placed(
    order_id: str,
    at: str,
    customer: str = "c1",
    promised: str = "2026-03-04T18:00:00Z",
    price: float = 80.0,
    cost: float = 30.0,
    qty: int = 1,
    **kw: Any,
) -> dict:
    return event(
        f"{order_id}-placed",
        "order_placed",
        order_id,
        at,
        customer_id=customer,
        channel="web",
        campaign=kw.pop("campaign", None),
        lines=kw.pop(
            "lines",
            [
                {
                    "sku": "sku-1",
                    "sku_family": "apparel_tops",
                    "qty": qty,
                    "unit_price": price,
                    "unit_cost": cost,
                    "size": "M",
                }
            ],
        ),
        currency="EUR",
        promised_delivery_at=promised,
        courier=kw.pop("courier", "dhl"),
        origin_region="DE",
        destination_region=kw.pop("destination", "FR"),
        **kw,
    )


def line(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def kafka_settings(bootstrap: str, suffix: str, **overrides: Any):
    """Settings for a Kafka-mode test: its own input and output topics (``<stream>-<suffix>``),
    3 partitions, 4 shards, no case store."""
    from salvage.config import Settings

    topics = ("orders", "deliveries", "support", "returns", "interventions")
    fields: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "redis_url": "",
        "shards": 4,
        "topic_partitions": 3,
        **{f"topic_{s}": f"{s}-{suffix}" for s in topics},
        "topic_lane_alerts": f"lane-alerts-{suffix}",
        "topic_dead_letters": f"dead-letters-{suffix}",
    }
    return Settings(**(fields | overrides))


def topic_reader(settings, topic: str):
    """A consumer assigned to every partition of ``topic`` from the start (no group offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    conf = {
        **settings.kafka.as_librdkafka_dict(),
        "group.id": "unused",
        "enable.auto.commit": False,
    }
    consumer = Consumer(conf)
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    return consumer


def read_to_end(settings, topic: str, timeout_s: float = 30.0, quiet_s: float = 1.0) -> list[dict]:
    """Every message of ``topic`` (JSON-decoded): read at least up to its end offsets, asked afresh
    when called, then until ``quiet_s`` passes without a message.

    The end offsets come first: a fresh consumer's first fetch can take longer than any quiet
    timeout on a loaded machine. The quiet spell after them: the embedded broker's end offset is
    the last batch's base offset + 1, not past its last message."""
    from confluent_kafka import TopicPartition

    consumer = topic_reader(settings, topic)
    try:
        parts = [tp.partition for tp in consumer.assignment()]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in parts
        }
        pos = dict.fromkeys(parts, 0)
        out: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while any(pos[p] < ends[p] for p in parts):
            assert time.monotonic() < deadline, f"{topic}: read {pos} of {ends} in {timeout_s} s"
            for m in consumer.consume(1000, 0.5):
                if m.error() is None:
                    pos[m.partition()] = m.offset() + 1
                    out.append(json.loads(m.value()))
        while msgs := consumer.consume(1000, quiet_s):
            out += [json.loads(m.value()) for m in msgs if m.error() is None]
        return out
    finally:
        consumer.close()


def metric_total(name: str, **labels: str) -> float:
    """The sum of a metric's samples in the default registry (those with ``labels``, if given)."""
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for m in REGISTRY.collect()
        for s in m.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def start_follow(salvage_cli: Any, bootstrap: str, settings: Any, log: Any, out_dir: Any) -> Any:
    """Create ``settings``' topics (3 partitions), publish the event log ``log`` to them and start
    ``salvage run --follow`` on them (4 shards, no Redis, no summary, outputs in ``out_dir``) with
    the ``salvage_cli`` fixture; returns its process."""
    from salvage.connectors.broker import ensure_topics
    from salvage.runner import publish_log

    ensure_topics(
        settings.kafka.as_librdkafka_dict(),
        list(settings.topics.inputs().values()) + settings.topics.outputs(),
        3,
    )
    publish_log(settings, log)
    env = {
        "SALVAGE_KAFKA_BOOTSTRAP": bootstrap,
        "SALVAGE_TOPIC_PARTITIONS": "3",
        **{f"SALVAGE_TOPIC_{s.upper()}": t for s, t in settings.topics.inputs().items()},
        "SALVAGE_TOPIC_STATUS_UPDATES": settings.topics.status_updates,
        "SALVAGE_TOPIC_DEAD_LETTERS": settings.topics.dead_letters,
        "SALVAGE_TOPIC_INTERVENTIONS": settings.topics.interventions,
    }
    return salvage_cli(
        "run", "--follow", "--shards", "4", "--redis-url", "", "--no-summary",
        "--out-dir", str(out_dir), env=env,
    )  # fmt: skip


def drain_when(proc: Any, settings: Any, topic: str, enough: Any, timeout_s: float = 90) -> list:
    """Read ``topic`` (JSON values) until ``enough(messages)``, then SIGTERM ``proc`` (a
    ``salvage_cli`` process: it drains, so what it wrote is complete) and wait for its exit 0;
    returns the messages read."""
    import signal
    import time

    reader = topic_reader(settings, topic)
    got: list[dict] = []
    try:
        deadline = time.monotonic() + timeout_s
        while not enough(got):
            assert time.monotonic() < deadline, got
            assert proc.poll() is None, proc.err_path.read_text()
            got += [json.loads(m.value()) for m in reader.consume(100, 0.2) if not m.error()]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.err_path.read_text()
    finally:
        reader.close()
    return got


def dead_letters_at_drain(proc: Any, settings: Any, timeout_s: float = 90) -> list[dict]:
    """The dead letters of a ``salvage run --follow`` process (see :func:`start_follow`): drain
    it (SIGTERM) once the first one is out (a test's log ends with an event that must become
    one), then read the rest of the topic."""
    topic = settings.topics.dead_letters
    dead = drain_when(proc, settings, topic, bool, timeout_s)
    return dead + read_to_end(settings, topic, quiet_s=0.5)[len(dead) :]


def dead_letter_ids(dead: list[dict]) -> list[tuple[str, str]]:
    """(kind, event id of the raw record) of each dead letter."""
    import base64

    return [(d["kind"], json.loads(base64.b64decode(d["raw_b64"]))["event_id"]) for d in dead]


def prom_total(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (those with ``labels``) in a Prometheus exposition (the
    ``metrics.prom`` a run writes at its drain)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
