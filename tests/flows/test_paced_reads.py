"""Time-bounded Kafka reads (``flows.sources._Pace``, ``SALVAGE_SOURCE_BATCH_MS``): a read takes
at most the messages its worker handles in about the budget, from the measured cost per message;
the reads stay complete and in offset order."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer
from pydantic import ValidationError

from salvage.config import Settings
from salvage.connectors.broker import ensure_topics
from salvage.flows.messages import Event, Tick
from salvage.flows.sources import (
    MIN_PACED_READ,
    KafkaEventSource,
    _Pace,
    kafka_part_id,
)
from tests.helpers import line, order_placed


class CpuClock:
    """A thread CPU clock that advances only when told (the work between two reads)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _rounds(pace: _Pace, clock: CpuClock, reads: list[int], cost: float, n: int) -> int:
    """``n`` worker rounds: one read per partition (``reads``: how many messages each takes),
    then ``cost`` CPU seconds per message read; returns the limit of the next read."""
    for _ in range(n):
        for count in reads:
            pace.limit()
            pace.done(count)
        clock.now += cost * sum(reads)
    return pace.limit()


def test_a_read_takes_what_the_worker_handles_in_the_budget() -> None:
    clock = CpuClock()
    pace = _Pace(0.020, 2000, clock)
    assert pace.limit() == 2000  # no cost known yet: the batch size
    pace.done(500)
    clock.now += 500 * 100e-6  # 100 µs of work per message read
    assert pace.limit() in (199, 200)  # 20 ms / 100 µs
    # rounds of four partitions' reads: the cost is over all of them (a moving ratio: within
    # 10% whatever the phase of the round)
    assert 180 <= _rounds(pace, clock, [100, 100, 0, 50], 100e-6, 200) <= 220
    # the cost doubles: the reads halve
    assert 90 <= _rounds(pace, clock, [50, 50, 10, 0], 200e-6, 200) <= 110


def test_the_read_is_bounded() -> None:
    clock = CpuClock()
    slow = _Pace(0.020, 2000, clock)
    assert _rounds(slow, clock, [100], 1e-3, 3) == MIN_PACED_READ  # 20 per 20 ms: the floor
    fast = _Pace(0.020, 2000, clock)
    assert _rounds(fast, clock, [100], 1e-6, 3) == 2000  # 20,000 per 20 ms: the batch size
    small = _Pace(0.020, 7, clock)  # a batch size below the floor still bounds every read
    assert _rounds(small, clock, [7], 1e-3, 3) == 7


def test_no_budget_no_bound() -> None:
    clock = CpuClock()
    pace = _Pace(0.0, 700, clock)
    pace.limit()
    pace.done(700)
    clock.now += 10.0
    assert pace.limit() == 700


@pytest.mark.parametrize("bad", [-1, 10_001])
def test_the_budget_is_validated(bad: float) -> None:
    with pytest.raises(ValidationError, match="source_batch_ms"):
        Settings(source_batch_ms=bad, redis_url="")
    assert Settings(source_batch_ms=5, redis_url="").dataflow.source_batch_ms == 5.0


@pytest.mark.integration
def test_paced_reads_are_complete_and_in_order(kafka_conf, unique_name) -> None:
    """A budget far below one event's cost: after the first read (no cost known yet) every read
    takes MIN_PACED_READ messages; every event comes out once, in offset order."""
    topic = unique_name("orders-paced")
    ensure_topics(kafka_conf, [topic], 1)
    n = 300
    producer = Producer(kafka_conf)
    for i in range(n):
        at = f"2026-03-02T10:{i // 60:02d}:{i % 60:02d}Z"
        producer.produce(topic, line(order_placed(f"O{i:05d}", at)), partition=0)
    assert producer.flush(10) == 0
    source = KafkaEventSource(
        kafka_conf,
        {"orders": topic},
        {topic: 1},
        tolerance_us=60_000_000,
        max_lateness_us=7 * 86_400_000_000,
        to_end=True,
        batch_size=1000,
        batch_ms=0.000001,
    )
    part = source.build_part("in", kafka_part_id(topic, 0), None)
    orders: list[str] = []
    sizes: list[int] = []
    try:
        deadline = time.monotonic() + 30
        with pytest.raises(StopIteration):
            while time.monotonic() < deadline:
                batch = [i for i in part.next_batch() if not isinstance(i, Tick)]
                if batch:
                    sizes.append(len(batch))
                for item in batch:
                    assert isinstance(item, Event)
                    orders.append(item.payload.order_id)
    finally:
        part.close()
    assert orders == [f"O{i:05d}" for i in range(n)]  # none lost, none twice, in order
    # the first read may take up to the batch size (whatever had arrived); then 32 at most
    assert all(size <= MIN_PACED_READ for size in sizes[1:]), sizes
    assert len(sizes) >= (n - sizes[0]) // MIN_PACED_READ
