"""Counters buffered per batch (flows/metric_batch.py): nothing lost, nothing shown early."""

import threading

import pytest
from prometheus_client import CollectorRegistry, Counter

from salvage.flows import metric_batch


def _counter() -> tuple[Counter, CollectorRegistry]:
    registry = CollectorRegistry()
    return Counter("t_events", "test", ["stream"], registry=registry), registry


def _value(registry: CollectorRegistry, stream: str) -> float | None:
    return registry.get_sample_value("t_events_total", {"stream": stream})


def test_increments_apply_at_flush_one_inc_per_child():
    metric, registry = _counter()
    child = metric_batch.cached(metric)
    assert child("orders") is child("orders")
    for _ in range(1000):
        child("orders").inc()
    child("returns").inc(2.5)
    assert _value(registry, "orders") == 0  # not yet: pending
    assert metric_batch.pending() == 2
    metric_batch.flush()
    assert _value(registry, "orders") == 1000 and _value(registry, "returns") == 2.5
    assert metric_batch.pending() == 0
    metric_batch.flush()  # nothing pending: nothing changes
    assert _value(registry, "orders") == 1000
    with pytest.raises(ValueError):
        child("orders").inc(-1)


def test_each_thread_flushes_its_own_increments():
    metric, registry = _counter()
    child = metric_batch.cached(metric)
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        for _ in range(20_000):
            child("orders").inc()
        assert metric_batch.pending() == 1
        metric_batch.flush()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metric_batch.pending() == 0  # this thread had none
    assert _value(registry, "orders") == 80_000
