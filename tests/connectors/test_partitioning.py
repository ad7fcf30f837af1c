"""File mode lays a log out as Kafka does: the partitioner matches the real producer's."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition

from salvage.connectors.broker import ensure_topics
from salvage.connectors.partitioning import murmur2, partition_of
from salvage.sinks.kafka import TopicProducer


def test_murmur2_matches_kafkas_test_vectors():
    # from the Java client's UtilsTest (signed ints there)
    vectors = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536}
    vectors[b"a-little-bit-longer-string"] = -1486304829
    vectors[b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"] = -58897971
    vectors[b"abc"] = 479470107
    for data, signed in vectors.items():
        assert murmur2(data) == signed & 0xFFFFFFFF


@pytest.mark.integration
def test_partition_of_is_where_the_producer_puts_each_order(kafka_conf, unique_name):
    topic = unique_name("part")
    ensure_topics(kafka_conf, [topic], partitions=7)
    keys = [f"O{i:08d}" for i in range(120)] + ["x", "ab", "order-é".encode().decode()]
    with TopicProducer(kafka_conf) as producer:
        for key in keys:
            producer.produce(topic, key.encode(), b"{}")
    consumer = Consumer({**kafka_conf, "group.id": "unused", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(7)])
    seen: dict[str, int] = {}
    try:
        for _ in range(200):
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    seen[msg.key().decode()] = msg.partition()
            if len(seen) == len(keys):
                break
    finally:
        consumer.close()
    assert seen == {k: partition_of(k, 7) for k in keys}
