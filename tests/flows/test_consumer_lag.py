"""``salvage_kafka_consumer_lag{topic,partition}`` against the real embedded broker: the gauge is
the number of messages still unread in the partition, while reading, at the end, and after a resume
from a snapshot offset."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from salvage.connectors.broker import ensure_topics
from salvage.flows.messages import Tick
from salvage.flows.sources import KafkaEventSource, kafka_part_id
from tests.helpers import line, order_placed

pytestmark = pytest.mark.integration

N = 50


def _lag(topic: str, partition: int = 0) -> float | None:
    return REGISTRY.get_sample_value(
        "salvage_kafka_consumer_lag", {"topic": topic, "partition": str(partition)}
    )


def _publish(conf: dict, topic: str, start: int, count: int) -> None:
    producer = Producer(conf)
    for i in range(start, start + count):
        at = f"2026-03-02T10:{i // 60:02d}:{i % 60:02d}Z"
        producer.produce(topic, line(order_placed(f"O{i:05d}", at)), partition=0)
    assert producer.flush(10) == 0


def _source(
    conf: dict, topic: str, interval: float = 0.0, batch: int = 7, to_end: bool = True
) -> KafkaEventSource:
    return KafkaEventSource(
        conf,
        {"orders": topic},
        {topic: 1},
        tolerance_us=60_000_000,
        max_lateness_us=7 * 86_400_000_000,
        to_end=to_end,
        batch_size=batch,
        lag_interval_s=interval,
    )


def _read(part, want: int, timeout: float = 20.0) -> int:
    """Call next_batch until at least ``want`` messages came out (events + dead letters)."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < want:
        assert time.monotonic() < deadline, f"read {got} of {want}"
        got += sum(1 for item in part.next_batch() if not isinstance(item, Tick))
    return got


def test_lag_is_the_unread_count_then_zero_at_the_end_and_after_a_resume(kafka_conf, unique_name):
    topic = unique_name("orders-lag")
    ensure_topics(kafka_conf, [topic], 1)
    _publish(kafka_conf, topic, 0, N)
    assert _lag(topic) is None  # no partition reads it yet: no series

    part = _source(kafka_conf, topic).build_part("in", kafka_part_id(topic, 0), None)
    try:
        read = _read(part, 1)
        assert 0 < read < N  # batches of 7
        assert _lag(topic) == N - read
        read += _read(part, 15)
        assert _lag(topic) == N - read
        with pytest.raises(StopIteration):
            while True:
                read += sum(1 for item in part.next_batch() if not isinstance(item, Tick))
        assert read == N
        assert _lag(topic) == 0
        snapshot = part.snapshot()
    finally:
        part.close()

    # 30 more messages; a partition resumed from the snapshot offset sees exactly those as lag
    _publish(kafka_conf, topic, N, 30)
    part = _source(kafka_conf, topic).build_part("in", kafka_part_id(topic, 0), snapshot)
    try:
        read = _read(part, 1)
        assert _lag(topic) == 30 - read
    finally:
        part.close()


def test_lag_is_refreshed_at_most_once_per_interval(kafka_conf, unique_name):
    topic = unique_name("orders-lag-interval")
    ensure_topics(kafka_conf, [topic], 1)
    _publish(kafka_conf, topic, 0, N)
    part = _source(kafka_conf, topic, interval=3600).build_part("in", kafka_part_id(topic, 0), None)
    try:
        # the first value is reported as soon as the broker's high watermark is known (possibly
        # before any message has been handed out: the source does not block waiting for data)
        read, deadline = 0, time.monotonic() + 20
        while _lag(topic) is None:
            assert time.monotonic() < deadline, "no lag reported"
            read += sum(1 for item in part.next_batch() if not isinstance(item, Tick))
        first = _lag(topic)
        assert first == N - read
        read += _read(part, 10)
        assert _lag(topic) == first  # then not again within the interval, though 10+ were read
        with pytest.raises(StopIteration):
            while True:
                part.next_batch()
        assert _lag(topic) == 0  # the end is always reported
    finally:
        part.close()


def test_live_lag_settles_at_zero_once_caught_up(kafka_conf, unique_name):
    """Live (no end): the last batches can land within one refresh interval; the empty polls
    after them still refresh the gauge, so a caught-up partition does not keep a stale lag."""
    topic = unique_name("orders-lag-live")
    ensure_topics(kafka_conf, [topic], 1)
    _publish(kafka_conf, topic, 0, N)
    part = _source(kafka_conf, topic, interval=0.3, to_end=False).build_part(
        "in", kafka_part_id(topic, 0), None
    )
    try:
        assert _read(part, N) == N
        deadline = time.monotonic() + 3
        while _lag(topic) != 0 and time.monotonic() < deadline:
            part.next_batch()  # empty polls
            time.sleep(0.01)
        assert _lag(topic) == 0
    finally:
        part.close()
