"""Kafka output: an acknowledged-or-loud producer and the Bytewax sink built on it.

:class:`TopicProducer` wraps a ``confluent_kafka.Producer`` (idempotent, ``acks=all``, lz4) and
keeps score of delivery reports: :meth:`TopicProducer.flush` returns only when every message
produced so far is acknowledged by the broker, and raises :class:`KafkaDeliveryError` if any was
not (after librdkafka's own retries, bounded by ``message.timeout.ms``). Nothing is dropped
silently.

:class:`KafkaOutputSink` is a Bytewax ``FixedPartitionedSink`` of ``(key, value)`` items.
``write_batch`` queues the batch with librdkafka and serves the delivery reports that are ready
(raising on any failure reported so far), without waiting for the broker: librdkafka sends within
``linger.ms``, so a message is on the broker about one round trip later whether or not anybody waits
for it. The wait for every acknowledgement is at the end of each epoch: Bytewax calls the
partition's ``snapshot`` at the epoch's close, *before* the epoch's recovery snapshot (and the
input offsets in it) is committed, and ``snapshot`` flushes. So output stays at-least-once across a
crash and restart (an epoch whose snapshot was not committed is produced again; downstream consumers
dedupe on the deterministic ids in the payload), while the worker no longer stops for one broker
round trip per batch and per output stream (README "Latency"). A bound on what may wait
unacknowledged (``max_unacked``) flushes early in a long epoch.

Keys are hashed with ``murmur2_random`` (the Java client's partitioner), so a key lands on the same
partition as when a Java/Kafka Streams producer writes it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, NoReturn, Self

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter

__all__ = [
    "DELIVERED",
    "DELIVERY_FAILURES",
    "KafkaDeliveryError",
    "KafkaItem",
    "KafkaOutputSink",
    "KafkaSinkItem",
    "TopicProducer",
    "kafka_item",
    "producer_config",
]

log = logging.getLogger(__name__)

DELIVERED = Counter(
    "salvage_kafka_messages_delivered",
    "Messages acknowledged by the Kafka broker.",
    ["topic"],
)
DELIVERY_FAILURES = Counter(
    "salvage_kafka_delivery_failures",
    "Messages Kafka did not acknowledge (delivery report error, or not produced at all).",
    ["topic"],
)

KafkaItem = tuple[str, bytes]
"""A Kafka message: ``(key, value)``."""

KafkaSinkItem = tuple[str, KafkaItem]
"""What :class:`KafkaOutputSink` consumes: ``(key, (key, value))``; Bytewax routes a
partitioned sink's items on the first key and hands the partition only the second element
(:func:`kafka_item` builds one)."""


def kafka_item(key: str, value: bytes) -> KafkaSinkItem:
    """The :class:`KafkaOutputSink` item of the message ``(key, value)``."""
    return key, (key, value)


DEFAULT_MESSAGE_TIMEOUT_MS = 30_000
_FLUSH_MARGIN_S = 5.0
_POLL_EVERY = 1000


class KafkaDeliveryError(RuntimeError):
    """Messages were not acknowledged by Kafka. The pipeline must stop rather than drop them."""

    def __init__(
        self,
        reason: str,
        *,
        failed: int,
        outstanding: int,
        delivered: int,
        first_error: str | None,
        topics: list[str] | None = None,
    ) -> None:
        self.reason = reason
        self.failed = failed
        self.outstanding = outstanding
        self.delivered = delivered
        self.first_error = first_error
        self.topics = topics or []
        where = f" to {', '.join(self.topics)}" if self.topics else ""
        super().__init__(
            f"Kafka delivery failed{where}: {reason} — failed={failed}, "
            f"outstanding={outstanding}, delivered={delivered}, first error: {first_error}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        kwargs = {
            "failed": self.failed,
            "outstanding": self.outstanding,
            "delivered": self.delivered,
            "first_error": self.first_error,
            "topics": self.topics,
        }
        return (_rebuild_delivery_error, (self.reason, kwargs))


def _rebuild_delivery_error(reason: str, kwargs: dict[str, Any]) -> KafkaDeliveryError:
    return KafkaDeliveryError(reason, **kwargs)


def producer_config(
    client_conf: Mapping[str, str],
    *,
    message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
    linger_ms: int = 5,
    compression: str = "lz4",
    extra: Mapping[str, str | int | bool] | None = None,
) -> dict[str, str | int | bool]:
    """librdkafka producer settings: idempotent, ``acks=all``, bounded delivery time.

    ``compression`` is ``lz4`` by default (:class:`TopicProducer` falls back to ``none`` if the
    librdkafka build lacks the codec). ``extra`` overrides anything (e.g. ``batch.size``).
    """
    conf: dict[str, str | int | bool] = dict(client_conf)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "message.timeout.ms": message_timeout_ms,
            "partitioner": "murmur2_random",
        }
    )
    conf["compression.type"] = compression
    if extra:
        conf.update(extra)
    return conf


class TopicProducer:
    """A Kafka producer that knows whether everything it produced was acknowledged.

    Use :meth:`produce` any number of times, then :meth:`flush`: it returns once all are
    acknowledged and raises :class:`KafkaDeliveryError` otherwise. Delivery reports are served on
    the calling thread (inside ``produce``/``poll``/``flush``); not for concurrent use.

    A new producer's first delivery takes ~0.5-1 s: librdkafka acquires the idempotent producer
    id on a 500 ms timer. Keep ``message_timeout_ms`` well above that.

    :param client_conf: Connection settings (``Settings.kafka.as_librdkafka_dict()``).
    :param message_timeout_ms: librdkafka's bound on delivery time incl. retries.
    :param flush_timeout: Default for :meth:`flush`; defaults to the message timeout plus 5 s so
        librdkafka reports every message before the flush gives up.
    """

    def __init__(
        self,
        client_conf: Mapping[str, str],
        *,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
        linger_ms: int = 5,
        compression: str = "lz4",
        flush_timeout: float | None = None,
        extra_conf: Mapping[str, str | int | bool] | None = None,
    ) -> None:
        conf = producer_config(
            client_conf,
            message_timeout_ms=message_timeout_ms,
            linger_ms=linger_ms,
            compression=compression,
            extra=extra_conf,
        )
        self._message_timeout_s = message_timeout_ms / 1000
        self.flush_timeout = (
            flush_timeout
            if flush_timeout is not None
            else self._message_timeout_s + _FLUSH_MARGIN_S
        )
        self._producer = self._new_producer(conf)
        self._produce = self._producer.produce
        # Per topic: a delivery callback that knows its topic, and acks not yet pushed to the
        # Prometheus counter (pushed on poll/flush: one locked increment per batch, not per ack).
        self._callbacks: dict[str, Callable[[KafkaError | None, Message], None]] = {}
        self._unpushed: dict[str, list[int]] = {}
        self._delivered_pushed = 0
        self.failed = 0
        """Messages not acknowledged over this producer's life."""
        self._pending_failed = 0
        self._first_error: str | None = None
        self._fatal: KafkaError | None = None
        self._failed_topics: set[str] = set()
        self._produced_since_poll = 0
        self._closed = False

    def _new_producer(self, conf: dict[str, str | int | bool]) -> Producer:
        full: dict[str, object] = {**conf, "error_cb": self._on_error}
        try:
            return Producer(full)
        except KafkaException as exc:
            codec = conf.get("compression.type", "none")
            if codec == "none" or "compression" not in str(exc):
                raise
            log.warning(
                "librdkafka cannot use %s compression (%s); producing uncompressed", codec, exc
            )
            full["compression.type"] = "none"
            return Producer(full)

    # ------------------------------------------------------------------ callbacks
    def _callback_for(self, topic: str) -> Callable[[KafkaError | None, Message], None]:
        acked = self._unpushed[topic] = [0]
        record_failure = self._record_failure

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                acked[0] += 1
            else:
                record_failure(topic, f"{err.name()}: {err.str()}")

        self._callbacks[topic] = on_delivery
        return on_delivery

    def _push_metrics(self) -> None:
        for topic, acked in self._unpushed.items():
            if acked[0]:
                n, acked[0] = acked[0], 0
                self._delivered_pushed += n
                DELIVERED.labels(topic).inc(n)

    @property
    def delivered(self) -> int:
        """Messages acknowledged over this producer's life (reports served so far)."""
        return self._delivered_pushed + sum(acked[0] for acked in self._unpushed.values())

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal Kafka producer error: %s", err)
            self._fatal = err
        else:
            # Transient (broker down, transport errors): librdkafka keeps retrying until the
            # message timeout, and the delivery reports tell the final story.
            log.debug("Kafka producer error (librdkafka retries): %s", err)

    def _record_failure(self, topic: str, error: str, count: int = 1) -> None:
        self.failed += count
        self._pending_failed += count
        self._failed_topics.add(topic)
        DELIVERY_FAILURES.labels(topic).inc(count)
        if self._first_error is None:
            self._first_error = error

    # ------------------------------------------------------------------ API
    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        *,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one message. Blocks (serving delivery reports) while librdkafka's queue is full.

        :raises KafkaDeliveryError: the message could not even be queued (too large, unknown
            configuration, fatal idempotence error, queue full past the message timeout).
        """
        if self._fatal is not None:
            self._raise("fatal producer error", [topic])
        on_delivery = self._callbacks.get(topic) or self._callback_for(topic)
        try:
            self._produce(
                topic,
                value,
                key,
                on_delivery=on_delivery,
                headers=headers,
                timestamp=timestamp_ms or 0,
            )
        except BufferError:
            self._produce_when_room(topic, key, value, headers, timestamp_ms or 0)
        except KafkaException as exc:
            self._record_failure(topic, str(exc.args[0]))
            self._raise("message rejected by the producer", [topic], cause=exc)
        self._produced_since_poll += 1
        if self._produced_since_poll >= _POLL_EVERY:
            self._produced_since_poll = 0
            self._producer.poll(0)
            self._push_metrics()

    def produce_many(
        self, topic: str, items: Iterable[tuple[str | bytes | None, bytes | None]]
    ) -> int:
        """:meth:`produce` each ``(key, value)``; returns how many were queued."""
        produce = self.produce
        n = 0
        for key, value in items:
            produce(topic, key, value)
            n += 1
        return n

    def _produce_when_room(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None,
        timestamp_ms: int,
    ) -> None:
        # Local queue full: serve delivery reports until there is room again.
        deadline = time.monotonic() + self._message_timeout_s + _FLUSH_MARGIN_S
        while True:
            self._producer.poll(0.05)
            try:
                self._produce(
                    topic,
                    value,
                    key,
                    on_delivery=self._callbacks[topic],
                    headers=headers,
                    timestamp=timestamp_ms,
                )
                return
            except BufferError:
                if time.monotonic() > deadline:
                    self._record_failure(topic, "local queue full past the message timeout")
                    self._raise("producer queue stayed full", [topic])
            except KafkaException as exc:
                self._record_failure(topic, str(exc.args[0]))
                self._raise("message rejected by the producer", [topic], cause=exc)

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports; returns how many were served."""
        served = int(self._producer.poll(timeout))
        self._push_metrics()
        return served

    def raise_reported(self) -> None:
        """Serve the delivery reports that are ready, without waiting, and raise if any report so
        far (since the last flush or raise) carried an error, or the producer hit a fatal error.

        :raises KafkaDeliveryError: as :meth:`flush` would, for the failures reported so far.
        """
        self.poll(0)
        self._raise_failures()

    def __len__(self) -> int:
        """Messages queued or in flight (not yet reported)."""
        return len(self._producer)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message produced so far is acknowledged.

        :raises KafkaDeliveryError: some delivery report carried an error (since the previous
            flush), or messages are still outstanding when ``timeout`` expires.
        """
        timeout = self.flush_timeout if timeout is None else timeout
        outstanding = int(self._producer.flush(timeout))
        self._produced_since_poll = 0
        self._push_metrics()
        self._raise_failures(outstanding)
        if outstanding:
            self._raise(f"flush timed out after {timeout:.1f}s", outstanding=outstanding)

    def _raise_failures(self, outstanding: int | None = None) -> None:
        """Raise for a fatal producer error or for failures reported since the last raise."""
        if self._fatal is not None:
            self._raise("fatal producer error", outstanding=outstanding)
        if self._pending_failed:
            self._raise("delivery reports carried errors", outstanding=outstanding)

    def _raise(
        self,
        reason: str,
        topics: list[str] | None = None,
        *,
        outstanding: int | None = None,
        cause: BaseException | None = None,
    ) -> NoReturn:
        failed, first = self._pending_failed, self._first_error
        if self._fatal is not None and first is None:
            first = f"{self._fatal.name()}: {self._fatal.str()}"
        names = sorted(set(topics or []) | self._failed_topics)
        # Reported once: a caller that survives this starts a clean slate.
        self._pending_failed, self._first_error = 0, None
        self._failed_topics.clear()
        err = KafkaDeliveryError(
            reason,
            failed=failed,
            outstanding=len(self._producer) if outstanding is None else outstanding,
            delivered=self.delivered,
            first_error=first,
            topics=names,
        )
        raise err from cause

    def close(self, timeout: float | None = None) -> None:
        """Flush (raising on failures) and release the producer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout)
        finally:
            self._release()

    def _release(self) -> None:
        """Drop the librdkafka handle now (its callbacks reference us: a cycle GC frees late),
        so its connections close with it instead of lingering after the dataflow ends. Every
        reference to it goes: the bound ``produce`` held the handle too."""
        self._callbacks = {}
        self._producer = None  # type: ignore[assignment]
        self._produce = _closed_produce

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # Already failing: do not mask the original error, but do not hang either.
            self._closed = True
            remaining = int(self._producer.flush(min(self.flush_timeout, 5.0)))
            self._push_metrics()
            if remaining:
                log.error("%d Kafka messages left unacknowledged on error exit", remaining)


def _closed_produce(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise RuntimeError("this Kafka producer is closed")


WARM_UNCLAIMED_S = 30.0
"""How long a warm producer waits for its sink partition (:class:`KafkaOutputSink`)."""


class _Warm:
    """Producers built ahead of their sink partitions, taken at most once each; what is not
    taken within :data:`WARM_UNCLAIMED_S`, or when the sink goes, is released."""

    def __init__(self, producers: dict[str, TopicProducer]) -> None:
        self._lock = threading.Lock()
        self._producers = producers
        timer = threading.Timer(WARM_UNCLAIMED_S, self.release)
        timer.daemon = True
        timer.start()

    def take(self, part: str) -> TopicProducer | None:
        with self._lock:
            return self._producers.pop(part, None)

    def release(self) -> None:
        """Release the producers no partition took (a part another process owns, or a stream
        that got no message yet: its first message then builds a producer, as without warming)."""
        with self._lock:
            unclaimed, self._producers = list(self._producers.values()), {}
        for producer in unclaimed:
            producer._release()


class _KafkaOutputPartition(StatefulSinkPartition[KafkaItem, None]):
    """One sink partition: its own producer; acknowledged at each epoch's close (``snapshot``)."""

    def __init__(self, producer: TopicProducer, topic: str, max_unacked: int) -> None:
        self._producer = producer
        self._topic = topic
        self._max_unacked = max_unacked

    def write_batch(self, items: list[KafkaItem]) -> None:
        producer = self._producer
        producer.produce_many(self._topic, items)
        producer.raise_reported()  # serve ready reports; a failure so far fails the flow now
        if len(producer) > self._max_unacked:
            producer.flush()

    def snapshot(self) -> None:
        """The epoch closes: wait until all it produced is acknowledged (raises otherwise)."""
        self._producer.flush()
        return None

    def close(self) -> None:
        self._producer.close()


class KafkaOutputSink(FixedPartitionedSink[KafkaItem, None]):
    """Write messages to one Kafka topic; acknowledged by the end of each epoch. Items are
    :data:`KafkaSinkItem` (``kafka_item(key, value)``).

    Items are spread over ``parts`` sink partitions by a stable hash of the key (Bytewax's
    default ``part_fn``, adler32: one key keeps one producer, and its order); Bytewax gives each
    partition to one worker of the cluster. One by default: the triggers come from the single
    output stage anyway, and a producer per stream and cluster keeps the broker connections few.

    :param client_conf: Connection settings (``Settings.kafka.as_librdkafka_dict()``).
    :param topic: Destination topic.
    :param message_timeout_ms: Bound on one message's delivery incl. retries; a message that cannot
        be delivered within it fails the dataflow with :class:`KafkaDeliveryError` (at the latest
        at the end of its epoch; at once if its report is already in when the next batch comes).
    :param max_unacked: Messages that may wait unacknowledged before a batch waits for them (a
        bound for long epochs; the epoch's close always waits).
    :param parts: Sink partitions (producers) per topic across the cluster.
    :param producer_conf: Extra librdkafka settings (override the defaults).
    :param warm: Build each partition's producer now, when the flow is built, instead of at
        its first message. Bytewax builds a sink partition when the first item reaches it, and
        a new idempotent producer's first delivery waits ~0.5 s for its producer id (librdkafka
        asks for it on a 500 ms timer until it has a connection): built early, the first
        message goes out as fast as the others. A producer no partition takes within
        :data:`WARM_UNCLAIMED_S` (a part another process owns, a stream that got nothing yet),
        or by the time the sink goes, is released.
    """

    def __init__(
        self,
        client_conf: Mapping[str, str],
        topic: str,
        *,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
        linger_ms: int = 5,
        flush_timeout: float | None = None,
        max_unacked: int = 50_000,
        parts: int = 1,
        producer_conf: Mapping[str, str | int | bool] | None = None,
        warm: bool = False,
    ) -> None:
        if parts < 1:
            raise ValueError(f"parts must be >= 1, got {parts}")
        self._client_conf = dict(client_conf)
        self._topic = topic
        self._message_timeout_ms = message_timeout_ms
        self._linger_ms = linger_ms
        self._flush_timeout = flush_timeout
        self._max_unacked = max_unacked
        self._parts = [str(i) for i in range(parts)]
        self._producer_conf = dict(producer_conf or {})
        self._warm: _Warm | None = None  # producers built now, taken by build_part
        if warm:
            self._warm = _Warm(
                {p: self._topic_producer(f"salvage-{topic}-{p}") for p in self._parts}
            )
            weakref.finalize(self, self._warm.release)

    def _topic_producer(self, client_id: str) -> TopicProducer:
        extra: dict[str, str | int | bool] = {"client.id": client_id}
        extra.update(self._producer_conf)
        return TopicProducer(
            self._client_conf,
            message_timeout_ms=self._message_timeout_ms,
            linger_ms=self._linger_ms,
            flush_timeout=self._flush_timeout,
            extra_conf=extra,
        )

    def list_parts(self) -> list[str]:
        return self._parts

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _KafkaOutputPartition:
        producer = self._warm.take(for_part) if self._warm is not None else None
        if producer is None:
            producer = self._topic_producer(f"salvage-{step_id}-{for_part}")
        return _KafkaOutputPartition(producer, self._topic, self._max_unacked)
