"""Prometheus counters incremented per batch, not per event.

A prometheus-client child's ``inc`` takes a lock and costs ~0.5 µs; a stage incrementing a
counter for every event pays that per event. :func:`cached` hands out stand-ins for
``metric.labels(value)`` whose ``inc`` adds to a per-thread pending count (~0.1 µs); the stage
calls :func:`flush` at the end of each batch, which applies each child's sum in one ``inc``.
Pending counts are per thread (Bytewax runs a process's workers as threads), so a worker only
ever flushes its own increments. Counters only: a gauge's ``set`` cannot be summed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class _Pending(threading.local):
    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}


_pending = _Pending()


class BufferedCounter:
    """Stands for one labelled counter child; increments wait for :func:`flush`."""

    __slots__ = ("child",)

    def __init__(self, child: Any) -> None:
        self.child = child

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        counts = _pending.counts
        counts[self.child] = counts.get(self.child, 0) + amount


def cached(metric: Any) -> Callable[[str], BufferedCounter]:
    """Memoised ``metric.labels(value)`` (the lookup costs more than the increment), buffered."""
    children: dict[str, BufferedCounter] = {}

    def child(value: str) -> BufferedCounter:
        c = children.get(value)
        if c is None:
            c = children[value] = BufferedCounter(metric.labels(value))
        return c

    return child


def flush() -> None:
    """Apply this thread's pending increments: one ``inc`` per counter child."""
    counts = _pending.counts
    if counts:
        _pending.counts = {}
        for child, amount in counts.items():
            child.inc(amount)


def pending() -> int:
    """How many counter children have increments waiting in this thread (tests)."""
    return len(_pending.counts)
