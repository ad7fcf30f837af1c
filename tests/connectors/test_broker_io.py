"""Embedded broker, topic administration, Kafka producer and sink, against a real Tansu broker."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from prometheus_client import REGISTRY

from salvage.connectors.broker import (
    BrokerStartError,
    EmbeddedBroker,
    TopicNotFoundError,
    ensure_topics,
    free_port,
    topic_partitions,
)
from salvage.sinks import kafka as kafka_sink
from salvage.sinks.kafka import KafkaDeliveryError, KafkaOutputSink, TopicProducer, kafka_item

integration = pytest.mark.integration


# ---------------------------------------------------------------------- helpers


def _consume(consumer: Consumer, count: int, timeout: float = 20.0) -> list[Message]:
    """Poll until ``count`` messages arrived (never trust the high watermark: see broker.py)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.2):
            err = msg.error()
            assert err is None or err.code() == KafkaError._PARTITION_EOF, err
            if err is None:
                got.append(msg)
    assert len(got) == count, f"read {len(got)} of {count} messages in {timeout}s"
    return got


def _read_assigned(conf: dict[str, str], topic: str, count: int) -> list[Message]:
    partitions = topic_partitions(conf, topic)
    consumer = Consumer({**conf, "group.id": "unused-assign", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        return _consume(consumer, count)
    finally:
        consumer.close()


def _delivered_metric(topic: str) -> float:
    value = REGISTRY.get_sample_value("salvage_kafka_messages_delivered_total", {"topic": topic})
    return value or 0.0


def _failed_metric(topic: str) -> float:
    value = REGISTRY.get_sample_value("salvage_kafka_delivery_failures_total", {"topic": topic})
    return value or 0.0


def _messages(n: int, keys: int = 17) -> list[tuple[str, bytes]]:
    return [(f"order-{i % keys}", f'{{"seq": {i}}}'.encode()) for i in range(n)]


@pytest.fixture
def doomed_broker(unique_name: Callable[[str], str]) -> Iterator[tuple[EmbeddedBroker, str]]:
    """A private broker with one topic, for tests that stop it."""
    broker = EmbeddedBroker(silent=True).start()
    topic = unique_name("doomed")
    ensure_topics(broker.client_config(), [topic], partitions=1)
    try:
        yield broker, topic
    finally:
        broker.stop()


# ---------------------------------------------------------------------- broker


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@integration
def test_embedded_broker_lifecycle() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(RuntimeError, match="not started"):
        _ = broker.bootstrap
    with broker:
        assert broker.running
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        log_path = broker.log_path
        assert log_path is not None and log_path.exists()
        assert ensure_topics(broker.client_config(), ["t"], partitions=1) == {"t": 1}
    assert not broker.running
    assert not log_path.exists()  # temp dir cleaned up
    broker.stop()  # idempotent


@integration
def test_embedded_broker_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerStartError, match="already in use"):
            EmbeddedBroker(port=port, startup_timeout=2).start()


@integration
def test_ensure_topics_is_idempotent(
    kafka_conf: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    a, b = unique_name("a"), unique_name("b")
    assert ensure_topics(kafka_conf, [a, b], partitions=3) == {a: 3, b: 3}
    # Existing topics keep their partition count; new ones get the requested one.
    c = unique_name("c")
    assert ensure_topics(kafka_conf, [a, b, c, a], partitions=2) == {a: 3, b: 3, c: 2}
    assert topic_partitions(kafka_conf, a) == 3
    assert topic_partitions(kafka_conf, c) == 2
    with pytest.raises(TopicNotFoundError):
        topic_partitions(kafka_conf, unique_name("missing"))
    with pytest.raises(ValueError):
        ensure_topics(kafka_conf, [a], partitions=0)


# ---------------------------------------------------------------------- producer


@integration
def test_topic_producer_round_trip_consumer_group(
    kafka_conf: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("orders")
    ensure_topics(kafka_conf, [topic], partitions=3)
    sent = _messages(300)
    with TopicProducer(kafka_conf) as producer:
        for key, value in sent:
            producer.produce(topic, key, value)
        producer.flush(10)
        assert producer.delivered == len(sent)
        assert producer.failed == 0
    assert _delivered_metric(topic) == len(sent)

    consumer = Consumer(
        {
            **kafka_conf,
            "group.id": unique_name("group"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        got = _consume(consumer, len(sent))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert sorted((m.key(), m.value()) for m in got) == sorted((k.encode(), v) for k, v in sent)
    # One key, one partition, in produce order.
    partitions_of: dict[bytes, set[int]] = {}
    for m in got:
        partitions_of.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions_of.values())
    for key in partitions_of:
        seqs = [m.value() for m in sorted(got, key=lambda m: m.offset()) if m.key() == key]
        assert seqs == [v for k, v in sent if k.encode() == key]
    assert len({m.partition() for m in got}) > 1


@integration
def test_topic_producer_round_trip_assign(
    kafka_conf: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("deliveries")
    ensure_topics(kafka_conf, [topic], partitions=2)
    sent = _messages(1000, keys=50)
    producer = TopicProducer(kafka_conf)
    for key, value in sent:
        producer.produce(topic, key, value)
    producer.flush()
    producer.close()
    producer.close()  # idempotent
    got = _read_assigned(kafka_conf, topic, len(sent))
    assert sorted(m.value() for m in got) == sorted(v for _, v in sent)
    # Offsets are dense from 0 in every partition.
    for p in {m.partition() for m in got}:
        offsets = sorted(m.offset() for m in got if m.partition() == p)
        assert offsets == list(range(len(offsets)))


@integration
def test_end_of_partition_is_found_by_fetch_not_list_offsets(
    kafka_conf: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    """Tansu's ListOffsets "latest" is base offset of the last batch + 1 (Kafka: last offset + 1).

    So a source must not stop reading at that value (only a lower bound of what is there), but the
    high watermark in Fetch responses is right: ``_PARTITION_EOF`` fires at the true end.
    """
    topic = unique_name("hw")
    ensure_topics(kafka_conf, [topic], partitions=1)
    with TopicProducer(kafka_conf) as producer:
        for key, value in _messages(50):
            producer.produce(topic, key, value)
    tp = TopicPartition(topic, 0)
    consumer = Consumer({**kafka_conf, "group.id": "unused-hw", "enable.partition.eof": True})
    try:
        low, high = consumer.get_watermark_offsets(tp, timeout=5)
        assert low == 0
        assert 1 <= high <= 50  # Kafka: 50; Tansu: 1 (one batch at base offset 0)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        offsets: list[int] = []
        eof_at = None
        deadline = time.monotonic() + 10
        while eof_at is None and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                offsets.append(msg.offset())
            elif err.code() == KafkaError._PARTITION_EOF:
                eof_at = msg.offset()
            else:
                raise AssertionError(err)
        assert offsets == list(range(50))
        assert eof_at == 50
        assert consumer.get_watermark_offsets(tp, cached=True) == (0, 50)
    finally:
        consumer.close()


# ---------------------------------------------------------------------- bytewax sink


@integration
def test_kafka_output_sink_through_bytewax(
    kafka_conf: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("interventions")
    ensure_topics(kafka_conf, [topic], partitions=2)
    sent = _messages(250)
    flow = Dataflow("kafka_sink_test")
    items = op.input("inp", flow, TestingSource(sent, batch_size=40))
    op.output(
        "out", op.map("item", items, lambda kv: kafka_item(*kv)), KafkaOutputSink(kafka_conf, topic)
    )
    run_main(flow)

    got = _read_assigned(kafka_conf, topic, len(sent))
    assert sorted((m.key(), m.value()) for m in got) == sorted((k.encode(), v) for k, v in sent)
    assert _delivered_metric(topic) == len(sent)


# ---------------------------------------------------------------------- failures


@integration
def test_stopped_broker_raises_delivery_error(doomed_broker: tuple[EmbeddedBroker, str]) -> None:
    broker, topic = doomed_broker
    # 2 s: the idempotent producer alone needs ~0.5-1 s to get its producer id.
    producer = TopicProducer(broker.client_config(), message_timeout_ms=2000)
    producer.produce(topic, "k", b"before")
    producer.flush()
    assert producer.delivered == 1
    broker.stop()

    for i in range(5):
        producer.produce(topic, "k", b"after-%d" % i)
    started = time.monotonic()
    with pytest.raises(KafkaDeliveryError) as info:
        producer.flush()
    assert time.monotonic() - started < 10
    err = info.value
    assert err.failed == 5
    assert err.delivered == 1
    assert err.topics == [topic]
    assert err.first_error is not None and "TIMED_OUT" in err.first_error
    assert producer.failed == 5
    assert _failed_metric(topic) == 5


@integration
def test_oversized_message_raises_immediately(
    kafka_conf: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("big")
    ensure_topics(kafka_conf, [topic], partitions=1)
    producer = TopicProducer(kafka_conf, extra_conf={"message.max.bytes": 10_000})
    with pytest.raises(KafkaDeliveryError, match="MSG_SIZE_TOO_LARGE"):
        producer.produce(topic, "k", b"x" * 20_000)
    assert _failed_metric(topic) == 1
    producer.close()


@integration
def test_kafka_output_sink_failure_stops_the_flow(
    doomed_broker: tuple[EmbeddedBroker, str],
) -> None:
    broker, topic = doomed_broker
    conf = broker.client_config()
    broker.stop()
    flow = Dataflow("kafka_sink_failure")
    items = op.input("inp", flow, TestingSource(_messages(3)))
    sink = KafkaOutputSink(conf, topic, message_timeout_ms=800)
    op.output("out", op.map("item", items, lambda kv: kafka_item(*kv)), sink)
    with pytest.raises(Exception) as info:
        run_main(flow)
    chain: list[BaseException] = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, KafkaDeliveryError) for e in chain), chain


@integration
def test_sink_partition_acknowledges_at_the_epoch_close(
    doomed_broker: tuple[EmbeddedBroker, str],
) -> None:
    """A batch is queued, not waited for; the epoch's close (``snapshot``) waits for every
    acknowledgement, and raises when the broker is gone: the epoch's snapshot then never
    commits, so its inputs are read again on restart (at-least-once)."""
    broker, topic = doomed_broker
    sink = KafkaOutputSink(broker.client_config(), topic, message_timeout_ms=2000)
    part = sink.build_part("out", "0", None)
    part.write_batch([("k", b"first")])
    assert len(part._producer) == 1  # queued, not acknowledged: write_batch did not wait
    part.snapshot()
    assert len(part._producer) == 0 and part._producer.delivered == 1

    broker.stop()
    part.write_batch([("k", b"lost-%d" % i) for i in range(3)])  # returns: nothing reported yet
    with pytest.raises(KafkaDeliveryError) as info:
        part.snapshot()
    assert info.value.failed == 3 and info.value.topics == [topic]
    part._producer._release()


@integration
def test_sink_partition_raises_reported_failures_on_the_next_batch(
    doomed_broker: tuple[EmbeddedBroker, str],
) -> None:
    """A delivery failure reported between two batches fails the next ``write_batch`` at once,
    without waiting for the epoch's close."""
    broker, topic = doomed_broker
    sink = KafkaOutputSink(broker.client_config(), topic, message_timeout_ms=2500)
    part = sink.build_part("out", "0", None)
    part.write_batch([("k", b"first")])
    part.snapshot()
    broker.stop()
    part.write_batch([("k", b"lost")])
    deadline = time.monotonic() + 15
    while part._producer.failed == 0 and time.monotonic() < deadline:
        part._producer.poll(0.1)  # the report of the lost message (after its 2.5 s timeout)
    with pytest.raises(KafkaDeliveryError, match="delivery reports carried errors"):
        part.write_batch([("k", b"next")])
    part._producer._release()


@integration
def test_sink_partition_bounds_what_waits_unacknowledged(
    kafka_conf: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("bounded")
    ensure_topics(kafka_conf, [topic], partitions=1)
    part = KafkaOutputSink(kafka_conf, topic, max_unacked=10).build_part("out", "0", None)
    part.write_batch([("k", b"%d" % i) for i in range(5)])
    assert len(part._producer) == 5
    part.write_batch([("k", b"%d" % i) for i in range(5, 16)])  # 16 > 10: waits for them
    assert len(part._producer) == 0 and part._producer.delivered == 16
    part.close()


@integration
def test_a_closed_producer_lets_go_of_its_librdkafka_handle(kafka_conf: dict[str, str]) -> None:
    """``close`` drops every reference to the librdkafka handle, so its threads and connections
    end with it, not whenever the cyclic GC runs (the bound ``produce`` used to keep it)."""
    producer = TopicProducer(kafka_conf)
    handle = producer._producer
    producer.close()
    assert sys.getrefcount(handle) == 2  # ``handle`` and getrefcount's argument: nobody else
    with pytest.raises(RuntimeError, match="closed"):
        producer.produce("any", b"k", b"v")


@integration
def test_a_warm_sink_builds_its_producers_with_the_flow_and_releases_the_unclaimed(
    kafka_conf: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    """``warm``: each partition's producer is built with the sink, before Bytewax builds the
    partition at its first item (a new idempotent producer's first delivery waits ~0.5 s for its
    producer id); a partition takes its own once; what no partition takes goes with the sink."""
    topic = unique_name("warm")
    ensure_topics(kafka_conf, [topic], partitions=1)
    sink = KafkaOutputSink(kafka_conf, topic, parts=2, warm=True)
    assert sink._warm is not None
    built = dict(sink._warm._producers)
    assert set(built) == {"0", "1"} and all(p._producer is not None for p in built.values())
    part = sink.build_part("out", "0", None)
    assert part._producer is built["0"]
    again = sink.build_part("out", "0", None)  # taken once: a rebuilt partition gets a new one
    assert again._producer is not built["0"]
    again.close()
    part.write_batch([("k", b"warm")])
    part.snapshot()
    assert part._producer.delivered == 1
    assert [m.value() for m in _read_assigned(kafka_conf, topic, 1)] == [b"warm"]
    part.close()
    unclaimed = built["1"]
    handle = unclaimed._producer
    del sink  # part "1" never got an item here (another process's, say): released now
    assert unclaimed._producer is None and sys.getrefcount(handle) == 2


@integration
def test_warm_producers_nobody_takes_are_released_after_a_while(
    kafka_conf: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm producer left unclaimed (its partition belongs to another process of the cluster)
    does not hold a connection for the whole run: it is released after ``WARM_UNCLAIMED_S``."""
    monkeypatch.setattr(kafka_sink, "WARM_UNCLAIMED_S", 0.2)
    sink = KafkaOutputSink(kafka_conf, "unused-topic", warm=True)
    assert sink._warm is not None
    producer = sink._warm._producers["0"]
    deadline = time.monotonic() + 10
    while producer._producer is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert producer._producer is None
    fresh = sink.build_part("out", "0", None)
    assert fresh._producer is not producer  # built afresh, at its first item, as without warm
    fresh.close()
